"""course_lib.pooling and the tuned course_lib.machinery.fast_pool: against the lecture, each other,
PyTorch and numerical gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from course_lib.conv import LECTURE_PADDING_EXAMPLE
from course_lib.gradcheck import check_gradient
from course_lib.machinery.fast_pool import max_pool2d_backward_fast
from course_lib.pooling import (max_pool2d, max_pool2d_backward, max_pool2d_backward_naive, max_pool2d_naive,
                                next_layer_params, pool_output_shape)

LECTURE_MAP = LECTURE_PADDING_EXAMPLE  # the lecture's 7x7 activation map ("Padding example" slide)
BACKWARDS = [max_pool2d_backward_naive, max_pool2d_backward, max_pool2d_backward_fast]


def backwards_for(x: np.ndarray) -> list:
    """Every backward pass; the naive loops only on inputs small enough to loop over quickly."""
    return BACKWARDS if x.size <= 20_000 else BACKWARDS[1:]


def torch_pool(x, k, s, p, dout=None):
    xt = torch.tensor(x, requires_grad=True)
    out = F.max_pool2d(xt, k, s, p)
    if dout is None:
        return out.detach().numpy()
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), xt.grad.numpy()


def test_lecture_map_by_hand():
    x = LECTURE_MAP[None, None]
    # 2x2 windows, stride 2, 7 -> 3 (the last row and column are dropped)
    expected = np.array([[7, 4, 5], [7, 5, 5], [8, 2, 6]], dtype=np.float64)
    np.testing.assert_array_equal(max_pool2d(x, 2)[0, 0], expected)
    # 3x3 windows, stride 2: overlapping windows, (7 - 3)/2 + 1 = 3
    expected3 = np.array([[7, 5, 5], [8, 5, 7], [8, 6, 6]], dtype=np.float64)
    np.testing.assert_array_equal(max_pool2d(x, 3, 2)[0, 0], expected3)


def test_depth_is_preserved_and_space_subsampled(rng):
    x = rng.standard_normal((2, 6, 28, 28))
    assert max_pool2d(x, 2).shape == (2, 6, 14, 14)
    assert max_pool2d(x, 3, 2, 1).shape == (2, 6, 14, 14)


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 4), H=st.integers(1, 12), W=st.integers(1, 12),
       K=st.integers(1, 4), S=st.one_of(st.none(), st.integers(1, 4)), P=st.integers(0, 2),
       ties=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_forward_and_backward_equal_torch(N, C, H, W, K, S, P, ties, seed):
    if 2 * P > K or K > H + 2 * P or K > W + 2 * P:
        return  # PyTorch refuses these too (tested separately below)
    rng = np.random.default_rng(seed)
    # integer-valued inputs in a small range make many ties: the tie rule must match torch's
    x = (rng.integers(0, 3, (N, C, H, W)) if ties else rng.standard_normal((N, C, H, W))).astype(np.float64)
    out_ref = torch_pool(x, K, S, P)
    dout = rng.standard_normal(out_ref.shape)
    _, dx_ref = torch_pool(x, K, S, P, dout)
    np.testing.assert_array_equal(max_pool2d(x, K, S, P), out_ref)
    np.testing.assert_array_equal(max_pool2d_naive(x, K, S, P), out_ref)
    fast = max_pool2d_backward_fast(dout, x, K, S, P)
    for backward in BACKWARDS:
        dx = backward(dout, x, K, S, P)
        np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-12, err_msg=backward.__name__)
        np.testing.assert_allclose(dx, fast, rtol=0, atol=1e-12, err_msg=backward.__name__)
        if (S or K) >= K:                                           # no overlap, no sums: equal bit for bit
            np.testing.assert_array_equal(dx, fast, err_msg=backward.__name__)


def test_backward_by_hand_on_the_lecture_map():
    """2x2 windows, stride 2, on the lecture's 7x7 map; dout = 1..9. Each window's winner (ties: the first
    in row-major order) gets its window's number; losers and the last row and column (in no window) get 0."""
    x = LECTURE_MAP[None, None]
    dout = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    expected = np.zeros((7, 7))
    for (i, j), g in zip([(1, 1), (0, 2), (0, 4), (2, 0), (3, 2), (2, 5), (4, 1), (4, 3), (5, 4)], range(1, 10)):
        expected[i, j] = g                 # e.g. window (0, 1) holds [[4, 4], [4, 0]]: its first 4, at (0, 2)
    for backward in BACKWARDS:
        np.testing.assert_array_equal(backward(dout, x, 2)[0, 0], expected, err_msg=backward.__name__)


@pytest.mark.parametrize("shape,k,s,p", [((64, 16, 28, 28), 2, 2, 0), ((2, 64, 30, 30), 3, 2, 1),
                                         ((2, 3, 9, 7), (3, 2), (2, 1), (1, 0))])
def test_float32_and_rectangular_equal_torch(rng, shape, k, s, p):
    x = rng.standard_normal(shape).astype(np.float32)
    out, argmax = max_pool2d(x, k, s, p, return_indices=True)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    ref, dx_ref = torch_pool(x, k, s, p, dout)
    np.testing.assert_array_equal(out, ref)
    assert out.dtype == np.float32
    for backward in backwards_for(x):
        dx = backward(dout, x, k, s, p, argmax=argmax)
        np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-5, err_msg=backward.__name__)  # sums in another order
        np.testing.assert_array_equal(dx, backward(dout, x, k, s, p), err_msg=backward.__name__)


@pytest.mark.parametrize("shape,k,s,p", [((64, 16, 28, 28), 2, 2, 0),    # windows tile the input exactly
                                         ((3, 4, 29, 31), 2, 2, 0),      # last row and column in no window
                                         ((2, 3, 11, 10), 2, 3, 1),      # gaps between windows, padding
                                         ((2, 2, 9, 12), (3, 2), (3, 4), (1, 1))])
def test_non_overlapping_backward_is_exactly_torchs(rng, shape, k, s, p):
    """No window shares an input, so no sums: every element equals autograd's bit for bit,
    and every pixel in no window (or under a loser) is exactly 0."""
    x = rng.standard_normal(shape).astype(np.float32)
    out, argmax = max_pool2d(x, k, s, p, return_indices=True)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    _, dx_ref = torch_pool(x, k, s, p, dout)
    for backward in backwards_for(x):
        dx = backward(dout, x, k, s, p, argmax=argmax)
        np.testing.assert_array_equal(dx, dx_ref, err_msg=backward.__name__)
        assert dx.flags.c_contiguous and dx.dtype == np.float32
        assert np.count_nonzero(dx) == np.count_nonzero(dout)      # one winner per window, the rest 0


@pytest.mark.parametrize("k, s", [(2, 2), (3, 2)])
def test_non_finite_gradients_reach_only_the_winners(k, s):
    """An inf or NaN in dout goes to its window's winner; every loser still gets exactly +0."""
    x = np.arange(2 * 1 * 6 * 6, dtype=np.float64).reshape(2, 1, 6, 6)   # winners: bottom-right of each window
    out = max_pool2d(x, k, s)
    dout = -np.ones(out.shape)
    dout.flat[0], dout.flat[1] = np.inf, np.nan
    _, dx_ref = torch_pool(x, k, s, 0, dout)
    for backward in BACKWARDS:
        dx = backward(dout, x, k, s)
        np.testing.assert_array_equal(dx, dx_ref, err_msg=backward.__name__)    # NaN == NaN here
        assert not np.signbit(dx[dx == 0]).any(), f"{backward.__name__}: a loser got -0.0"


@pytest.mark.parametrize("dtype", [np.float16, np.longdouble, np.dtype(">f4")])
def test_backward_for_other_float_dtypes(rng, dtype):
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    dout = rng.standard_normal((2, 3, 3, 3)).astype(dtype)
    _, dx_ref = torch_pool(x.astype(np.float64), 2, None, 0, dout.astype(np.float64))
    for backward in BACKWARDS:
        dx = backward(dout, x, 2)
        assert dx.dtype == np.dtype(dtype), backward.__name__
        np.testing.assert_array_equal(dx.astype(np.float64), dx_ref, err_msg=backward.__name__)


@pytest.mark.parametrize("backward", BACKWARDS)
def test_tie_rule_first_in_row_major_order(backward):
    x = np.ones((1, 1, 2, 2))
    dx = backward(np.array([[[[5.0]]]]), x, 2)
    np.testing.assert_array_equal(dx[0, 0], [[5.0, 0.0], [0.0, 0.0]])
    x = np.array([[[[0.0, 1.0], [1.0, 0.0]]]])
    dx = backward(np.array([[[[5.0]]]]), x, 2)
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 5.0], [0.0, 0.0]])


@pytest.mark.parametrize("k, s, p", [(2, 1, 1), (2, 2, 1), (3, 2, 1), (3, 1, 1)])
def test_windows_of_minus_infinity_give_the_gradient_to_their_first_input(k, s, p):
    # every input -inf: no element beats the padding, and PyTorch's winner is the first input, not padding
    x = np.full((1, 1, 4, 5), -np.inf)
    x[0, 0, 0, 1] = 1.0
    shape = max_pool2d(x, k, s, p).shape
    dout = np.arange(1.0, 1 + np.prod(shape)).reshape(shape)    # a different gradient per window
    _, expected = torch_pool(x, k, s, p, dout)
    for backward in BACKWARDS:
        dx = backward(dout, x, k, s, p)
        np.testing.assert_array_equal(dx, expected, err_msg=backward.__name__)
        assert dx.sum() == dout.sum()                                # none lost to the padding


@pytest.mark.parametrize("backward", BACKWARDS)
def test_overlapping_windows_accumulate(backward):
    # 1x3 input, kernel 2 stride 1: the middle maximum wins both windows
    x = np.array([[[[0.0, 9.0, 1.0]]]])
    dx = backward(np.array([[[[2.0, 3.0]]]]), x, (1, 2), 1)
    np.testing.assert_array_equal(dx[0, 0, 0], [0.0, 5.0, 0.0])


@pytest.mark.parametrize("backward", BACKWARDS)
def test_numerical_gradient(rng, backward):
    x = rng.standard_normal((2, 2, 6, 6))  # distinct values: the max is differentiable
    dout = rng.standard_normal(max_pool2d(x, 3, 2, 1).shape)
    check_gradient(lambda v: float(np.sum(max_pool2d(v, 3, 2, 1) * dout)), x,
                   backward(dout, x, 3, 2, 1), name=f"{backward.__name__} dx")


def test_padding_is_minus_infinity():
    x = -np.ones((1, 1, 2, 2))           # all negative: zero padding would win, -inf never does
    np.testing.assert_array_equal(max_pool2d(x, 2, 1, 1), -np.ones((1, 1, 3, 3)))


def test_does_not_modify_input(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    before = x.copy()
    max_pool2d(x, 2)
    for backward in BACKWARDS:
        backward(np.ones((1, 2, 2, 2)), x, 2)
    np.testing.assert_array_equal(x, before)


def test_teaching_errors(rng):
    x = rng.standard_normal((1, 1, 4, 4))
    with pytest.raises(ValueError, match="more than half the kernel"):
        max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="pooling window size F = 5 is larger than the padded input W "
                                         ".*use a smaller pooling window$"):
        max_pool2d(x, 5)                                          # the width is checked first
    with pytest.raises(ValueError, match="pooling window height F = 5 is larger than the padded input H "
                                         ".*use a smaller pooling window$"):
        max_pool2d(x, (5, 1))
    with pytest.raises(ValueError, match="single image use x\\[None\\]"):
        max_pool2d(x[0], 2)
    with pytest.raises(TypeError, match="numpy array"):
        max_pool2d(torch.zeros(1, 1, 4, 4), 2)
    with pytest.raises(ValueError, match="stride"):
        max_pool2d(x, 2, stride=0)
    for backward in BACKWARDS:
        with pytest.raises(ValueError, match=r"dout has shape \(1, 1, 3, 3\)"):
            backward(np.zeros((1, 1, 3, 3)), x, 2)
    assert pool_output_shape((1, 1, 7, 7), 2) == ((2, 2), (2, 2), (0, 0), (3, 3))


# --------------------------------------------------------------------------
# The functions behind lesson 03's figures and widget (course_lib.viz.pooling)
# --------------------------------------------------------------------------

def test_viz_report_and_widget():
    import matplotlib
    matplotlib.use("Agg")
    from course_lib.viz import pooling as viz
    text = viz.pooling_report(LECTURE_MAP, 2, 2, C=6, next_units=84)
    assert "(7 - 2)//2 + 1 = 3" in text, text
    assert "    7   4   5" in text and "54 of 294 activations (18%)" in text, text
    assert "stack C = 6 such maps (a 7 x 7 x 6 volume)" in text, text      # where the depth 6 comes from
    assert f"{54 * 84:,} weights instead of {294 * 84:,}" in text
    assert viz.pooling_report(LECTURE_MAP, 3, 2).count("\n  ") == 3        # 3 rows pooled
    assert viz.pooling_report(LECTURE_MAP, 8, 1).startswith("ValueError: pooling window size F = 8")
    box = viz.pooling_explorer(LECTURE_MAP, 2, 2)
    box.sliders["kernel_size"].value = 3
    assert "pool 3x3, stride 2" in box.report.value and "    7   5   5" in box.report.value


def test_viz_winners_match_torch_indices(rng):
    from course_lib.viz import pooling as viz
    x = rng.integers(0, 4, (7, 7)).astype(np.float64)           # many ties
    _, idx = F.max_pool2d(torch.tensor(x)[None, None], 3, 2, return_indices=True)
    expected = np.zeros(49, dtype=bool)
    expected[idx.numpy().ravel()] = True
    np.testing.assert_array_equal(viz.winners_2d(x, 3, 2), expected.reshape(7, 7))


def test_next_layer_params_by_hand():
    rows = next_layer_params(28, 6, [1, 2, 4], next_units=84)
    assert [r["weights"] for r in rows] == [6 * 28 * 28 * 84, 6 * 14 * 14 * 84, 6 * 7 * 7 * 84]
    assert rows[1]["output"] == (6, 14, 14) and [r["pool"] for r in rows] == [1, 2, 4]
    assert next_layer_params(28, 6, [3])[0]["output"] == (6, 9, 9)      # floor: (28 - 3)//3 + 1 = 9
    with pytest.raises(ValueError, match="C must be a positive int"):
        next_layer_params(28, 0, [2])


def test_viz_figures(rng):
    import matplotlib.pyplot as plt
    from course_lib.viz import pooling as viz
    rows = next_layer_params(28, 6, [1, 2, 4], next_units=84)
    figs = [viz.plot_pooling_regions(LECTURE_MAP, 3, 2),
            viz.plot_next_layer_params(rows, 28, 6),
            viz.plot_gradient_routing(LECTURE_MAP, np.ones((3, 3)), 3, 2)]
    for fig in figs:
        for ax in fig.axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), ax
        plt.close(fig)


# --------------------------------------------------------------------------
# Behaviour pinned down by mutation testing: rectangular windows, per-axis rules
# --------------------------------------------------------------------------

@pytest.mark.parametrize("k, s, p", [((2, 3), None, 0), ((3, 2), None, (1, 0)), ((2, 3), (1, 2), (1, 1)),
                                     ((3, 1), (2, 3), 0)])
def test_rectangular_windows_naive_and_fast_equal_torch(rng, k, s, p):
    """Kernel, stride and padding with different heights and widths (stride defaults to the kernel)."""
    x = rng.standard_normal((2, 3, 8, 9))
    ref = torch_pool(x, k, s if s is not None else k, p)       # torch's default stride is the kernel too
    np.testing.assert_array_equal(max_pool2d(x, k, s, p), ref)
    np.testing.assert_array_equal(max_pool2d_naive(x, k, s, p), ref)
    dout = rng.standard_normal(ref.shape)
    _, dx_ref = torch_pool(x, k, s if s is not None else k, p, dout)
    for backward in BACKWARDS:
        np.testing.assert_allclose(backward(dout, x, k, s, p), dx_ref, rtol=0, atol=1e-12, err_msg=backward.__name__)


def test_the_half_kernel_padding_rule_is_checked_per_axis(rng):
    x = rng.standard_normal((1, 2, 5, 6))
    for k, p in (((1, 3), (0, 1)), ((3, 1), (1, 0))):          # allowed: each padding is half its own kernel side
        np.testing.assert_array_equal(max_pool2d(x, k, 1, p), torch_pool(x, k, 1, p))
    for k, p in (((3, 1), (0, 1)), ((1, 3), (1, 0))):          # refused, by PyTorch too
        with pytest.raises(ValueError, match="more than half the kernel"):
            max_pool2d(x, k, 1, p)
        with pytest.raises(RuntimeError, match="at most half"):
            F.max_pool2d(torch.tensor(x), k, 1, p)


@pytest.mark.parametrize("k, s, p", [((2, 3), (1, 2), (1, 1)), ((3, 4), (3, 1), (1, 2))])
def test_rectangular_windows_of_minus_infinity_give_the_gradient_to_their_first_input(k, s, p):
    x = np.full((1, 2, 5, 7), -np.inf)
    x[0, 0, 3, 4], x[0, 1, 0, 6] = 1.0, 2.0
    shape = max_pool2d(x, k, s, p).shape
    dout = np.arange(1.0, 1 + np.prod(shape)).reshape(shape)
    _, expected = torch_pool(x, k, s, p, dout)
    for backward in BACKWARDS:
        dx = backward(dout, x, k, s, p)
        np.testing.assert_array_equal(dx, expected, err_msg=backward.__name__)
        assert dx.sum() == dout.sum()


@pytest.mark.parametrize("s", [(2, 1), (1, 2)])
def test_windows_that_overlap_along_one_axis_only_accumulate(rng, s):
    x = rng.integers(0, 3, (2, 3, 6, 7)).astype(np.float64)   # many ties: shared winners
    out = max_pool2d(x, 2, s)
    dout = rng.standard_normal(out.shape)
    ref, dx_ref = torch_pool(x, 2, s, 0, dout)
    np.testing.assert_array_equal(out, ref)
    for backward in BACKWARDS:
        np.testing.assert_allclose(backward(dout, x, 2, s), dx_ref, rtol=0, atol=1e-12, err_msg=backward.__name__)


def test_large_windows_index_past_int8():
    """A 12x12 window has 144 elements: the winner's index 143 needs an int16."""
    x = np.random.default_rng(3).standard_normal((1, 2, 12, 12))
    x[0, 0, 11, 11] = x[0, 1, 10, 3] = 100.0
    out, argmax = max_pool2d(x, 12, return_indices=True)
    _, idx = F.max_pool2d(torch.tensor(x), 12, return_indices=True)   # one window: flat index = u*KW + v
    np.testing.assert_array_equal(argmax, idx.numpy())
    assert argmax.ravel().tolist() == [143, 123] and argmax.dtype == np.int16
    dout = np.array([2.0, 3.0]).reshape(1, 2, 1, 1)
    _, dx_ref = torch_pool(x, 12, 12, 0, dout)
    for backward in BACKWARDS:
        np.testing.assert_array_equal(backward(dout, x, 12, argmax=argmax), dx_ref, err_msg=backward.__name__)


def test_argmax_of_the_wrong_shape_is_refused(rng):
    x = rng.standard_normal((1, 1, 4, 4))
    for backward in BACKWARDS:
        with pytest.raises(ValueError, match=r"argmax has shape \(1, 1, 1, 1\); it must match dout \(1, 1, 2, 2\)"):
            backward(np.ones((1, 1, 2, 2)), x, 2, argmax=np.zeros((1, 1, 1, 1), np.int8))


def test_an_integer_input_is_refused_in_pooling_terms():
    with pytest.raises(TypeError, match="x has dtype int64; max pooling needs floating point"):
        max_pool2d(np.zeros((1, 1, 4, 4), dtype=np.int64), 2)
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    for backward in BACKWARDS:
        with pytest.raises(TypeError, match="dout has dtype int32; max pooling needs floating point"):
            backward(np.zeros((1, 1, 2, 2), dtype=np.int32), x, 2)
