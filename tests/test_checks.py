"""course_lib.checks: the input checks every lecture module shares, and the messages they teach with."""

from __future__ import annotations

import math

import numpy as np
import pytest

from course_lib.checks import check_conv, check_int, check_nonnegative, check_positive


def test_check_int_bounds_and_reason():
    assert check_int(np.int64(3), "rank", 0) == 3 and type(check_int(np.int64(3), "rank", 0)) is int
    assert check_int(4, "shards", 1, 4) == 4                                  # both bounds included
    with pytest.raises(ValueError, match=r"^rank = -1 must be >= 0$"):
        check_int(-1, "rank", 0)
    with pytest.raises(ValueError, match=r"^shards = 5 must be <= 4 \(world_size = 4\)$"):
        check_int(5, "shards", 1, 4, why="world_size = 4")
    for bad in (True, 2.0, "2", None):
        with pytest.raises(TypeError, match="rank must be an int"):
            check_int(bad, "rank", 0)


def test_check_positive_counts_and_real_numbers():
    assert check_positive(3, "K", integer=True) == 3
    assert check_positive(2, "timeout") == 2.0 and check_positive(math.inf, "bandwidth") == math.inf
    with pytest.raises(ValueError, match=r"^K must be a positive int, got 0$"):
        check_positive(0, "K", integer=True)
    with pytest.raises(ValueError, match=r"^base_lr must be positive \(base_lr > 0\), got -0.1$"):
        check_positive(-0.1, "base_lr")
    with pytest.raises(ValueError, match="compute_s > 0"):
        check_positive(math.nan, "compute_s")                                 # NaN is not > 0
    with pytest.raises(TypeError, match=r"K must be an int, got 3.0 \(float\)"):
        check_positive(3.0, "K", integer=True)
    with pytest.raises(TypeError, match=r"timeout must be a number, got True \(bool\)"):
        check_positive(True, "timeout")


def test_check_nonnegative_allows_zero_not_nan_or_inf():
    assert check_nonnegative(0, "service_time") == 0.0 and check_nonnegative(0.01, "service_time") == 0.01
    with pytest.raises(ValueError, match=r"^delay must be a finite number >= 0, got -1.0 \(seconds\)$"):
        check_nonnegative(-1.0, "delay", why="seconds")
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="delay must be a finite number >= 0"):
            check_nonnegative(bad, "delay")
    with pytest.raises(TypeError, match=r"delay must be a number, got '5 ms' \(str\)"):
        check_nonnegative("5 ms", "delay")


def test_check_conv_names_what_does_not_match():
    x, w = np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3))
    assert check_conv(x, w)[2] is None
    with pytest.raises(ValueError, match=r"channel mismatch: x has C = 3 channels"):
        check_conv(x, np.zeros((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="b has 3 entries but there are K = 4 filters"):
        check_conv(x, w, np.zeros(3))
    with pytest.raises(TypeError, match="w has dtype int64"):
        check_conv(x, w.astype(np.int64))
