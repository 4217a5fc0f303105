"""course_lib.experiments.seeds: the median and range over seeds that every training claim uses."""

from __future__ import annotations

import numpy as np
import pytest

from course_lib.experiments.seeds import fmt, paired, summarize


def test_summarize_by_hand():
    s = summarize([[0.3, 2.0], [0.1, 1.0], [0.2, 4.0]])            # 3 seeds x 2 settings
    np.testing.assert_array_equal(s["median"], [0.2, 2.0])
    np.testing.assert_array_equal(s["min"], [0.1, 1.0])
    np.testing.assert_array_equal(s["max"], [0.3, 4.0])
    assert s["all"].shape == (3, 2)
    assert fmt(summarize([0.12, 0.1, 0.2])) == "0.120 [0.100, 0.200]"
    assert fmt(summarize([0.04, 0.031, 0.035]), scale=100, digits=1) == "3.5 [3.1, 4.0]"
    with pytest.raises(ValueError, match="one result per seed"):
        summarize([])


def test_paired_differences_cancel_the_seeds_luck():
    a, b = np.array([0.10, 0.20, 0.30]), np.array([0.09, 0.21, 0.28])   # each seed shifts both arms
    d = paired(a, b)
    assert d["median"] == pytest.approx(0.01) and d["max"] - d["min"] < 0.1 < np.ptp(a)
    with pytest.raises(ValueError, match="one result per seed each"):
        paired(a, b[:2])
