"""course_lib.conv and the tuned course_lib.machinery.fast_conv: against the lecture's examples,
against each other, against PyTorch, and against numerical gradients."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from course_lib.conv import (LECTURE_PADDING_EXAMPLE, ParamCount, col2im, conv2d_backward_im2col,
                             conv2d_backward_naive, conv2d_im2col, conv2d_naive, conv_geometry, conv_output_size,
                             conv_param_count, im2col, pad2d, receptive_field_1d, receptive_field_sizes)
from course_lib.gradcheck import check_gradient
from course_lib.machinery import fast_conv, threads
from course_lib.machinery.fast_conv import Workspace, conv2d, conv2d_backward, unfold_batched

FORWARDS = [conv2d_naive, conv2d_im2col, conv2d]
BACKWARDS = [conv2d_backward_naive, conv2d_backward_im2col, conv2d_backward]

LECTURE_7x7 = LECTURE_PADDING_EXAMPLE  # the slide's 7x7 input


# ---------------------------------------------------------------- sizes, by hand

@pytest.mark.parametrize("W, F_, P, S, expected", [
    (7, 3, 0, 1, 5), (7, 3, 1, 1, 7), (7, 3, 0, 2, 3), (32, 5, 0, 1, 28),   # LeNet C1
    (227, 11, 0, 4, 55),                                                     # AlexNet conv1
    (9, 3, 1, 2, 5), (7, 7, 0, 1, 1), (7, 5, 2, 1, 7)])
def test_conv_output_size_by_hand(W, F_, P, S, expected):
    assert conv_output_size(W, F_, P, S) == expected


def test_conv_output_size_non_integer_shows_the_arithmetic():
    with pytest.raises(ValueError) as err:
        conv_output_size(7, 3, 0, 3)
    message = str(err.value)
    assert "(7 - 3 + 2*0)/3 + 1" in message and "2.33" in message and "not an integer" in message
    assert conv_output_size(7, 3, 0, 3, floor=True) == 2  # PyTorch's rule
    assert conv_output_size(56, 3, 1, 2, floor=True) == 28  # a ResNet stride-2 layer: 28.5 -> 28


def test_conv_output_size_filter_larger_than_padded_input():
    with pytest.raises(ValueError, match=r"F = 9 is larger than the padded input W \+ 2P = 5 \+ 2\*1 = 7"):
        conv_output_size(5, 9, 1, 1)


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(W=7, F=3, P=-1, S=1), ValueError, "padding P = -1"),
    (dict(W=7, F=3, P=0, S=0), ValueError, "stride S = 0"),
    (dict(W=7.0, F=3, P=0, S=1), TypeError, "W must be an int"),
    (dict(W=7, F=True, P=0, S=1), TypeError, "F must be an int"),
])
def test_conv_output_size_rejects_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        conv_output_size(**kwargs)


def test_errors_name_the_axis_that_is_wrong():
    x_tall_enough_wide_enough = np.ones((1, 1, 3, 10))              # height 3, width 10
    with pytest.raises(ValueError, match=r"filter height F = 5 is larger than the padded input H \+ 2P = 3 \+ 2\*0"):
        conv2d(x_tall_enough_wide_enough, np.ones((1, 1, 5, 3)))
    with pytest.raises(ValueError, match=r"filter size F = 11 is larger than the padded input W \+ 2P = 10 \+ 2\*0"):
        conv2d(x_tall_enough_wide_enough, np.ones((1, 1, 3, 11)))
    with pytest.raises(ValueError,
                       match=r"output height \(H - F \+ 2P\)/S \+ 1 = \(7 - 3 \+ 2\*0\)/3 \+ 1 = 2.33.*row\(s\)"):
        conv_output_size(7, 3, 0, 3, axis="height")
    with pytest.raises(ValueError, match="input height H = 0 must be >= 1"):
        conv2d(np.ones((1, 1, 0, 10)), np.ones((1, 1, 1, 1)))
    with pytest.raises(ValueError, match="axis must be 'width' or 'height'"):
        conv_output_size(7, 3, axis="depth")


def test_conv_param_count_lecture_and_lenet():
    assert conv_param_count(5, 1, 6) == ParamCount(150, 6)              # LeNet C1: 156 parameters
    assert conv_param_count(5, 6, 16).total == 2416                      # LeNet C3 (fully connected C3)
    assert conv_param_count(3, 64, 128) == ParamCount(3 * 3 * 64 * 128, 128)
    with pytest.raises(ValueError, match="K must be a positive int"):
        conv_param_count(3, 3, 0)
    with pytest.raises(TypeError, match="D1 must be an int"):
        conv_param_count(3, 3.0, 8)
    with pytest.raises(TypeError, match=r"x must be a numpy array of shape \(N, C, H, W\)"):
        pad2d([[1.0, 2.0]], 1)
    with pytest.raises(ValueError, match=r"x must have 4 dimensions .* \(for a single image use x\[None\]\)"):
        pad2d(np.ones((1, 3, 3)), 1)


# ---------------------------------------------------------------- the receptive field (lesson 1)

@pytest.mark.parametrize("kernels,strides,expected", [
    ([3, 3, 3], [1, 1, 1], [3, 5, 7]),          # three 3x3 layers see 7x7
    ([5, 2, 5], [1, 2, 1], [5, 6, 14]),         # LeNet-5: C1, S2, C3
    ([7, 3], [2, 2], [7, 11]),                  # ResNet's stem: conv1 then the 3x3 pool
])
def test_receptive_field_sizes_by_hand(kernels, strides, expected):
    assert receptive_field_sizes(kernels, strides) == expected


def _torch_receptive_field(kernels, strides) -> int:
    """Width of the input region that one output pixel's gradient touches."""
    size = 1
    for k, s in zip(reversed(kernels), reversed(strides)):
        size = (size - 1) * s + k                    # smallest input giving one output
    x = torch.zeros(1, 1, 1, size + 6, requires_grad=True)
    h = x
    for k, s in zip(kernels, strides):
        h = F.conv2d(h, torch.ones(1, 1, 1, k), stride=(1, s))
    h[0, 0, 0, h.shape[-1] // 2].backward()
    touched = np.flatnonzero(x.grad[0, 0, 0].numpy())
    return int(touched[-1] - touched[0] + 1)


@settings(max_examples=30, deadline=None)
@given(layers=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 3)), min_size=1, max_size=4))
def test_receptive_field_sizes_match_torch_autograd(layers):
    kernels, strides = [k for k, _ in layers], [s for _, s in layers]
    assert receptive_field_sizes(kernels, strides)[-1] == _torch_receptive_field(kernels, strides)


@settings(max_examples=30, deadline=None)
@given(F_=st.integers(1, 4), S=st.integers(1, 3), n_layers=st.integers(1, 3), extra=st.integers(0, 6))
def test_receptive_field_cone_spans_the_formula_size(F_, S, n_layers, extra):
    size = receptive_field_sizes([F_] * n_layers, [S] * n_layers)[-1]
    cone = receptive_field_1d(size + extra, F_, S, n_layers)
    assert len(cone) == n_layers + 1 and len(cone[-1]) == 1
    assert cone[0][-1] - cone[0][0] + 1 == size, cone[0]
    if S <= F_:  # windows overlap or touch: no input pixel inside the span is skipped
        assert cone[0] == list(range(cone[0][0], cone[0][0] + size)), cone[0]


def test_receptive_field_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="2 kernel sizes but 1 strides"):
        receptive_field_sizes([3, 3], [1])
    with pytest.raises(ValueError, match="stride S = 0 must be >= 1"):
        receptive_field_sizes([3, 3], [1, 0])


def test_padding_example_from_the_lecture():
    x = LECTURE_7x7[None, None]                                   # (1, 1, 7, 7)
    xp = pad2d(x, 2)
    assert xp.shape == (1, 1, 11, 11)                              # "increases ... by 2P"
    np.testing.assert_array_equal(xp[0, 0, 2:9, 2:9], LECTURE_7x7)
    assert xp[0, 0, :2].sum() == 0 and xp[0, 0, -2:].sum() == 0
    assert xp[0, 0, :, :2].sum() == 0 and xp[0, 0, :, -2:].sum() == 0
    assert pad2d(x, (0, 1)).shape == (1, 1, 7, 9)
    # "By adding (F - 1)/2 pixels all around, one can maintain the size": F=5, P=2, S=1.
    w = np.ones((1, 1, 5, 5))
    assert conv2d(x, w, padding=2).shape == (1, 1, 7, 7)


def test_conv_by_hand_on_the_lecture_input():
    x = LECTURE_7x7[None, None]
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 1, 1] = 1.0                                        # identity filter
    for f in FORWARDS:
        np.testing.assert_array_equal(f(x, w, padding=1)[0, 0], LECTURE_7x7)
    box = np.ones((1, 1, 3, 3))
    out = conv2d(x, box, np.array([0.5]), stride=2)            # (7 - 3)/2 + 1 = 3
    assert out.shape == (1, 1, 3, 3)
    assert out[0, 0, 0, 0] == LECTURE_7x7[:3, :3].sum() + 0.5  # 6+3+4+4+7+4+7+0+2 + 0.5
    assert out[0, 0, 2, 2] == LECTURE_7x7[4:, 4:].sum() + 0.5


def test_inputs_are_not_modified(rng):
    x, w, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    copies = [a.copy() for a in (x, w, b)]
    for f in FORWARDS:
        f(x, w, b, stride=2, padding=1)
    for backward in BACKWARDS:
        backward(rng.standard_normal((2, 4, 3, 3)), x, w, stride=2, padding=1)
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)


def test_dtype_follows_the_input(rng):
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b64 = rng.standard_normal(3)                                  # a float64 bias does not promote
    for f in FORWARDS:
        assert f(x, w).dtype == np.float32 and f(x, w, b64).dtype == np.float32, f.__name__
    for backward in BACKWARDS:
        assert all(g.dtype == np.float32 for g in backward(np.ones((1, 3, 3, 3), np.float32), x, w)), backward.__name__


def test_gradients_take_their_variables_dtype(rng):
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3))                          # float64 weights, float32 images
    for backward in BACKWARDS:
        dx, dw, _ = backward(np.ones((2, 3, 3, 3)), x, w)
        assert (dx.dtype, dw.dtype) == (np.float32, np.float64), backward.__name__
        dx, dw, _ = backward(np.ones((2, 3, 3, 3), np.float32), x.astype(np.float64), w.astype(np.float32))
        assert (dx.dtype, dw.dtype) == (np.float64, np.float32), backward.__name__


def test_an_empty_batch_gives_empty_results_like_torch(rng):
    x, w, b = np.zeros((0, 3, 9, 8)), rng.standard_normal((5, 3, 3, 2)), rng.standard_normal(5)
    expected = F.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), padding=1).shape   # (0, 5, 9, 9)
    for f in FORWARDS:
        assert f(x, w, b, padding=1).shape == expected, f.__name__
    for backward in BACKWARDS:
        dx, dw, db = backward(np.zeros(expected), x, w, padding=1)
        assert dx.shape == x.shape and not dw.any() and not db.any() and dw.shape == w.shape, backward.__name__
    assert im2col(x, (3, 2), 1, 1).shape == (0, 18, 81)


def test_results_are_c_contiguous(rng):
    x, w = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 2))
    out = conv2d(x, w, rng.standard_normal(4), stride=2, padding=1)
    assert out.flags.c_contiguous
    for backward in BACKWARDS:
        assert all(g.flags.c_contiguous for g in backward(np.ones(out.shape), x, w, stride=2, padding=1))


# ---------------------------------------------------------------- errors that teach

@pytest.mark.parametrize("f", FORWARDS + [lambda x, w, backward=backward, **k:
                                            backward(np.ones((1, 1, 1, 1)), x, w, **k) for backward in BACKWARDS])
@pytest.mark.parametrize("x, w, kwargs, error, pattern", [
    (np.ones((3, 5, 5)), np.ones((1, 3, 3, 3)), {}, ValueError, r"x must have 4 dimensions.*x\[None\]"),
    (np.ones((1, 3, 5, 5)), np.ones((1, 2, 3, 3)), {}, ValueError, "channel mismatch: x has C = 3"),
    (np.ones((1, 1, 5, 5)), np.ones((1, 1, 7, 7)), {}, ValueError, "larger than the padded input"),
    (np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)), dict(stride=0), ValueError, "stride = 0 must be >= 1"),
    (np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)), dict(padding=-1), ValueError, "padding = -1 must be >= 0"),
    (np.ones((1, 1, 5, 5), dtype=np.int64), np.ones((1, 1, 3, 3)), {}, TypeError, "dtype int64.*astype"),
    (np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)), dict(stride=(1, 2, 3)), TypeError, "pair of ints"),
    ([[[[1.0]]]], np.ones((1, 1, 1, 1)), {}, TypeError, "must be a numpy array"),
])
def test_bad_input_gets_a_teaching_error(f, x, w, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        f(x, w, **kwargs)


def test_bias_and_dout_shapes_are_checked():
    x, w = np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3))
    with pytest.raises(ValueError, match="b has 2 entries but there are K = 3 filters"):
        conv2d(x, w, np.ones(2))
    for backward in BACKWARDS:
        with pytest.raises(ValueError, match=r"dout has shape \(1, 3, 2, 2\).*\(1, 3, 3, 3\)"):
            backward(np.ones((1, 3, 2, 2)), x, w)
    with pytest.raises(ValueError, match="cols has shape"):
        col2im(np.ones((1, 9, 5)), (5, 5), 3)


# ---------------------------------------------------------------- property tests against PyTorch

@st.composite
def conv_cases(draw):
    """Random shapes: rectangular inputs, non-square kernels, strides 1-3, padding 0-2 (int or pair)."""
    N, C, K = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = draw(st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2))))
    PH, PW = (padding, padding) if isinstance(padding, int) else padding
    H = draw(st.integers(max(1, KH - 2 * PH), 10))
    W = draw(st.integers(max(1, KW - 2 * PW), 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C, KH, KW))
    b = rng.standard_normal(K)
    return x, w, b, stride, padding


def _torch_conv(x, w, b, stride, padding, dout=None):
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    out = F.conv2d(xt, wt, bt, stride=stride, padding=padding)
    if dout is None:
        return out.detach().numpy()
    out.backward(torch.tensor(dout))
    return xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_forward_equals_torch(case):
    x, w, b, stride, padding = case
    expected = _torch_conv(x, w, b, stride, padding)
    for f in FORWARDS:
        got = f(x, w, b, stride=stride, padding=padding)
        assert got.shape == expected.shape, f"{f.__name__}: shape {got.shape} vs torch {expected.shape}"
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10, err_msg=f.__name__)


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_backward_equals_torch_autograd(case):
    x, w, b, stride, padding = case
    dout = np.random.default_rng(1).standard_normal(_torch_conv(x, w, b, stride, padding).shape)
    expected = _torch_conv(x, w, b, stride, padding, dout)
    for backward in BACKWARDS:
        for name, got, exp in zip(("dx", "dw", "db"), backward(dout, x, w, stride, padding), expected):
            np.testing.assert_allclose(got, exp, rtol=1e-10, atol=1e-10, err_msg=f"{backward.__name__} {name}")


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_im2col_col2im_equal_unfold_fold(case):
    x, w, _, stride, padding = case
    KH, KW = w.shape[2:]
    cols = im2col(x, (KH, KW), stride, padding)
    expected = F.unfold(torch.tensor(x), (KH, KW), stride=stride, padding=padding).numpy()
    np.testing.assert_array_equal(cols, expected)
    assert cols.flags.writeable and not np.shares_memory(cols, x)   # a new array, as F.unfold's
    back = col2im(cols, x.shape[2:], (KH, KW), stride, padding)
    expected_back = F.fold(torch.tensor(cols), x.shape[2:], (KH, KW), stride=stride, padding=padding).numpy()
    np.testing.assert_allclose(back, expected_back, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel, stride", [(1, 1), ((1, 4), (1, 4)), (4, 1)])
def test_im2col_is_a_new_writable_array_even_when_no_copy_is_needed(rng, kernel, stride):
    x = rng.standard_normal((2, 3, 4, 4))       # 1x1 kernels and a single window: reshape alone would be a view
    cols = im2col(x, kernel, stride)
    assert cols.flags.writeable and not np.shares_memory(cols, x)
    np.testing.assert_array_equal(cols, F.unfold(torch.tensor(x), kernel, stride=stride).numpy())


def test_float32_forward_matches_torch_at_float32_precision(rng):
    x = rng.standard_normal((8, 6, 14, 14)).astype(np.float32)   # LeNet C3's input
    w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    expected = F.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b)).numpy()
    np.testing.assert_allclose(conv2d(x, w, b), expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- numerical gradients

@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1), ((1, 2), (2, 0))])
def test_backward_passes_the_numerical_gradient_check(rng, stride, padding, backward):
    x, w, b = rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((3, 2, 3, 2)), rng.standard_normal(3)
    dout = rng.standard_normal(conv2d(x, w, b, stride, padding).shape)
    dx, dw, db = backward(dout, x, w, stride, padding)
    loss = lambda x_, w_, b_: float(np.sum(conv2d(x_, w_, b_, stride, padding) * dout))
    check_gradient(lambda v: loss(v, w, b), x, dx, "dx")
    check_gradient(lambda v: loss(x, v, b), w, dw, "dw")
    check_gradient(lambda v: loss(x, w, v), b, db, "db")


def test_backward_by_hand_on_the_lecture_input():
    """3x3 corner of the lecture's map, a 2x2 filter, dout = 1 everywhere: every number checkable by hand.

    dw[u, v] is the sum of the 2x2 block of x at offset (u, v); dx[p, q] adds up the filter weights that
    touched pixel (p, q) (the centre pixel is in all four windows); db counts the four outputs."""
    x = LECTURE_7x7[None, None, :3, :3]                          # [[6, 3, 4], [4, 7, 4], [7, 0, 2]]
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    dout = np.ones((1, 1, 2, 2))
    for backward in BACKWARDS:
        dx, dw, db = backward(dout, x, w)
        np.testing.assert_array_equal(dw[0, 0], [[6 + 3 + 4 + 7, 3 + 4 + 7 + 4], [4 + 7 + 7 + 0, 7 + 4 + 0 + 2]])
        np.testing.assert_array_equal(dx[0, 0], [[1, 1 + 2, 2], [1 + 3, 1 + 2 + 3 + 4, 2 + 4], [3, 3 + 4, 4]])
        np.testing.assert_array_equal(db, [4.0])


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_naive_and_im2col_backward_equal_the_fast_one(case):
    x, w, b, stride, padding = case
    dout = np.random.default_rng(3).standard_normal(conv2d(x, w, b, stride, padding).shape)
    fast = conv2d_backward(dout, x, w, stride, padding)
    for backward in (conv2d_backward_naive, conv2d_backward_im2col):
        for name, got, expected in zip(("dx", "dw", "db"), backward(dout, x, w, stride, padding), fast):
            assert got.shape == expected.shape and got.dtype == expected.dtype, (backward.__name__, name)
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10, err_msg=f"{backward.__name__} {name}")


def test_gradient_check_catches_a_wrong_gradient(rng):
    x, w = rng.standard_normal((1, 1, 4, 4)), rng.standard_normal((1, 1, 2, 2))
    dout = np.ones((1, 1, 3, 3))
    _, dw, _ = conv2d_backward(dout, x, w)
    with pytest.raises(AssertionError,
                       match=r"dw: relative error .* worst element \(0, 0, \d, \d\): expected \(numerical\)"):
        check_gradient(lambda v: float(conv2d(x, v).sum()), w, dw * 1.01, "dw")   # the index as plain ints


# ---------------------------------------------------------------- the fast path's layout, threads and workspace

@contextlib.contextmanager
def _forced_threads(n: int):
    """Split every pass, however small, over n threads (the tests' arrays are far below 1 MiB)."""
    saved_env, saved_min = os.environ.get("COURSE_LIB_THREADS"), threads.MIN_BYTES_PER_THREAD
    os.environ["COURSE_LIB_THREADS"], threads.MIN_BYTES_PER_THREAD = str(n), 1
    try:
        yield
    finally:
        threads.MIN_BYTES_PER_THREAD = saved_min
        if saved_env is None:
            del os.environ["COURSE_LIB_THREADS"]
        else:
            os.environ["COURSE_LIB_THREADS"] = saved_env


@settings(max_examples=25, deadline=None)
@given(conv_cases())
def test_batched_unfold_is_f_unfold_with_the_batch_in_the_columns(case):
    x, w, _, stride, padding = case
    C, (KH, KW) = x.shape[1], w.shape[2:]
    (SH, SW), (PH, PW), (H_out, W_out) = conv_geometry(x, KH, KW, stride, padding)
    for n_threads, workspace in ((1, None), (3, None), (3, Workspace())):
        with _forced_threads(n_threads):
            cols = unfold_batched(x, KH, KW, SH, SW, PH, PW, H_out, W_out, workspace)
        unfold = F.unfold(torch.tensor(x), (KH, KW), stride=stride, padding=padding).numpy()  # (N, C*KH*KW, L)
        np.testing.assert_array_equal(cols, unfold.transpose(1, 0, 2).reshape(C * KH * KW, -1))


@settings(max_examples=25, deadline=None)
@given(conv_cases())
def test_splitting_over_threads_changes_no_bit(case):
    x, w, b, stride, padding = case
    out = conv2d(x, w, b, stride, padding)
    dout = np.random.default_rng(2).standard_normal(out.shape)
    grads = conv2d_backward(dout, x, w, stride, padding)
    with _forced_threads(3):
        np.testing.assert_array_equal(conv2d(x, w, b, stride, padding), out)
        for got, expected in zip(conv2d_backward(dout, x, w, stride, padding), grads):
            np.testing.assert_array_equal(got, expected)


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_the_row_shift_forward_equals_torch_on_every_shape(case):
    """conv2d_row_shift (conv2d's route on wide layers), forced onto every shape by a threshold of 1;
    the same bits with threads and a workspace."""
    x, w, b, stride, padding = case
    expected = _torch_conv(x, w, b, stride, padding)
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setattr(fast_conv, "ROW_SHIFT_MIN_DEPTH", 1)
        patch.setattr(fast_conv, "ROW_SHIFT_MIN_ROWS", 1)
        got = conv2d(x, w, b, stride, padding)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(conv2d(x, w, None, stride, padding), expected - b[:, None, None],
                                   rtol=1e-10, atol=1e-10)
        with _forced_threads(3):
            np.testing.assert_array_equal(conv2d(x, w, b, stride, padding, Workspace()), got)


def test_a_wide_float32_layer_takes_the_row_shift_route_and_matches_torch(rng, monkeypatch):
    x = rng.standard_normal((2, 64, 32, 32)).astype(np.float32)
    w = rng.standard_normal((32, 64, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    routes = []
    monkeypatch.setattr(fast_conv, "conv2d_row_shift",
                        lambda *args, real=fast_conv.conv2d_row_shift: routes.append(1) or real(*args))
    for stride in (1, 2):
        expected = F.conv2d(*(torch.from_numpy(a) for a in (x, w, b)), stride=stride, padding=1).numpy()
        got = conv2d(x, w, b, stride, 1, Workspace())
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert routes == [1, 1], "a 64-channel 3x3 layer should take conv2d_row_shift"
    conv2d(x[:, :32], w[:, :32], b, 1, 1)                     # C*KW = 96: the one-GEMM route
    conv2d(x[:, :, :14], w, b, 1, 1)                          # 14 output rows: the one-GEMM route
    conv2d(x, w[:, :, :1, :1], b)                             # 1x1: no kernel rows to share
    conv2d(x, w[:, :, :2], b, 2, 1)                           # KH = 2 = SH: none either
    empty = conv2d(x[:0], w, b, 1, 1)                         # an empty batch, like F.conv2d
    assert empty.shape == (0, 32, 32, 32) and empty.dtype == np.float32
    assert routes == [1, 1]


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_the_row_shift_backward_equals_torch_autograd_on_every_stride_1_shape(case):
    """conv2d_backward_row_shift (conv2d_backward's route on wide stride-1 layers), forced onto every
    shape by a threshold of 1: taken exactly where its rule holds (KH > 1, PH < KH, PW < KW); the
    same bits with threads and a workspace."""
    x, w, b, _, padding = case
    dout = np.random.default_rng(1).standard_normal(_torch_conv(x, w, b, 1, padding).shape)
    expected = _torch_conv(x, w, b, 1, padding, dout)
    (PH, PW), (KH, KW) = ((padding, padding) if isinstance(padding, int) else padding), w.shape[2:]
    routes = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fast_conv, "ROW_SHIFT_MIN_DEPTH", 1)
        patch.setattr(fast_conv, "ROW_SHIFT_MIN_ROWS", 1)
        patch.setattr(fast_conv, "conv2d_backward_row_shift",
                      lambda *args, real=fast_conv.conv2d_backward_row_shift: routes.append(1) or real(*args))
        got = conv2d_backward(dout, x, w, 1, padding)
        for name, g, e in zip(("dx", "dw", "db"), got, expected):
            assert g.shape == e.shape and g.flags.c_contiguous, name
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10, err_msg=name)
        with _forced_threads(3):
            for g, again in zip(got, conv2d_backward(dout, x, w, 1, padding, Workspace())):
                np.testing.assert_array_equal(again, g)
    assert len(routes) == 2 * (KH > 1 and PH < KH and PW < KW)


def test_a_wide_float32_stride_1_layer_takes_the_row_shift_backward_and_matches_torch(rng, monkeypatch):
    x = rng.standard_normal((2, 64, 16, 16)).astype(np.float32)
    w = rng.standard_normal((32, 64, 3, 3)).astype(np.float32)
    routes = []
    monkeypatch.setattr(fast_conv, "conv2d_backward_row_shift",
                        lambda *args, real=fast_conv.conv2d_backward_row_shift: routes.append(1) or real(*args))
    workspace = Workspace()                                   # one, reused by every shape below
    for stride, padding in ((1, 1), (2, 1), (1, 3), (1, 1)):  # not the middle two: stride 2; padding 3 >= KH
        out = F.conv2d(*(torch.from_numpy(a) for a in (x, w)), stride=stride, padding=padding)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        expected = _torch_conv(x, w, np.zeros(32, np.float32), stride, padding, dout)
        for name, got, exp in zip(("dx", "dw", "db"), conv2d_backward(dout, x, w, stride, padding, workspace),
                                  expected):
            assert got.dtype == np.float32, name
            np.testing.assert_allclose(got, exp, rtol=1e-3, atol=1e-3 * np.abs(exp).max(), err_msg=name)
    assert routes == [1, 1], "a 64-channel 3x3 stride-1 layer should take conv2d_backward_row_shift"
    dout = rng.standard_normal((2, 32, 16, 16))               # float64 beside a float32 x: the im2col route
    dx, dw, db = conv2d_backward(dout, x, w, 1, 1)
    assert (dx.dtype, dw.dtype, db.dtype) == (np.float32, np.float32, np.float64)
    assert routes == [1, 1]


def test_both_routes_compute_the_same_convolution_on_a_wide_layer(rng):
    """The benchmark times conv2d's two routes against each other on the ResNet layers: called by
    name on one wide layer, each equals PyTorch, forward and backward."""
    x = rng.standard_normal((2, 64, 20, 20)).astype(np.float32)
    w = rng.standard_normal((16, 64, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    (SH, SW), (PH, PW), (H_out, W_out) = conv_geometry(x, 3, 3, 1, 1)
    expected = F.conv2d(*(torch.from_numpy(a) for a in (x, w, b)), padding=1).numpy()
    for route in (fast_conv.conv2d_row_shift, fast_conv.conv2d_batched_im2col):
        np.testing.assert_allclose(route(x, w, b, SH, SW, PH, PW, H_out, W_out, Workspace()), expected,
                                   rtol=1e-4, atol=1e-4, err_msg=route.__name__)
    dout = rng.standard_normal(expected.shape).astype(np.float32)
    grads = _torch_conv(x, w, b, 1, 1, dout)
    for got in (fast_conv.conv2d_backward_row_shift(dout, x, w, PH, PW, Workspace()),
                fast_conv.conv2d_backward_batched_im2col(dout, x, w, SH, SW, PH, PW, Workspace())):
        for name, g, exp in zip(("dx", "dw", "db"), got, grads):
            np.testing.assert_allclose(g, exp, rtol=1e-3, atol=1e-3 * np.abs(exp).max(), err_msg=name)


def test_float32_lenet_c1_forward_and_backward_on_two_threads_match_torch(rng, monkeypatch):
    """A real-sized layer: large enough that its copies are split between threads unforced."""
    x = rng.standard_normal((64, 1, 32, 32)).astype(np.float32)
    w = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    dout = rng.standard_normal((64, 6, 28, 28)).astype(np.float32)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    out_t = F.conv2d(xt, wt, bt)
    out_t.backward(torch.tensor(dout))
    monkeypatch.setenv("COURSE_LIB_THREADS", "2")
    pools = []
    monkeypatch.setattr(threads, "_executor", lambda n, real=threads._executor: pools.append(n) or real(n))
    out = conv2d(x, w, b)
    dx, dw, db = conv2d_backward(dout, x, w)
    assert pools and set(pools) == {1}, "the copies were not split between two threads"
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-4, atol=1e-4)
    for name, got, expected in (("dx", dx, xt.grad), ("dw", dw, wt.grad), ("db", db, bt.grad)):
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-3, atol=1e-3, err_msg=name)


@settings(max_examples=25, deadline=None)
@given(conv_cases())
def test_a_workspace_changes_no_bit(case):
    """The same results with fresh temporaries, a new workspace, and one grown by other shapes first."""
    x, w, b, stride, padding = case
    out = conv2d(x, w, b, stride, padding)
    dout = np.random.default_rng(2).standard_normal(out.shape)
    grads = conv2d_backward(dout, x, w, stride, padding)
    grown = Workspace()
    big = np.random.default_rng(4).standard_normal((4, x.shape[1], 12, 12))
    conv2d_backward(conv2d(big, w, None, 1, 2, grown), big, w, 1, 2, grown)
    for workspace in (Workspace(), grown):
        np.testing.assert_array_equal(conv2d(x, w, b, stride, padding, workspace=workspace), out)
        for got, expected in zip(conv2d_backward(dout, x, w, stride, padding, workspace=workspace), grads):
            np.testing.assert_array_equal(got, expected)


def test_results_never_share_memory_with_the_workspace(rng):
    """Results a caller keeps must survive later calls that reuse the workspace's memory."""
    x, w, b = rng.standard_normal((3, 2, 9, 9)), rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    big = rng.standard_normal((5, 2, 12, 12))
    workspace = Workspace()
    conv2d_backward(conv2d(big, w, b, 1, 2, workspace), big, w, 1, 2, workspace)   # grow every buffer first
    kept = [conv2d(x, w, b, 1, 1, workspace), *conv2d_backward(np.ones((3, 4, 9, 9)), x, w, 1, 1, workspace)]
    saved = [a.copy() for a in kept]
    for shape, P in (((5, 2, 12, 12), 2), ((3, 2, 9, 9), 0), ((1, 2, 4, 4), 1)):
        xs = rng.standard_normal(shape)
        out = conv2d(xs, w, b, 1, P, workspace)
        conv2d_backward(out, xs, w, 1, P, workspace)
    buffers = list(workspace.buffers.values())
    assert buffers, "no scratch buffer was used"
    for a, before in zip(kept, saved):
        np.testing.assert_array_equal(a, before)
        assert not any(np.shares_memory(a, buf) for buf in buffers)


def test_user_threads_calling_conv_at_once_get_their_own_results():
    """Four threads with different shapes must not mix their data: fresh temporaries, or a workspace each."""
    import concurrent.futures

    def job(seed: int) -> None:
        rng = np.random.default_rng(seed)
        workspace = Workspace() if seed % 2 else None
        for i in range(15):
            N, C, H = 1 + (seed + i) % 3, 1 + seed % 3, 5 + (seed * 7 + i) % 6
            x, w, b = rng.standard_normal((N, C, H, H)), rng.standard_normal((3, C, 3, 3)), rng.standard_normal(3)
            out = conv2d(x, w, b, 1, 1, workspace)
            np.testing.assert_allclose(out, conv2d_im2col(x, w, b, 1, 1), rtol=1e-12, atol=1e-12)
            dx, dw, db = conv2d_backward(out, x, w, 1, 1, workspace)
            dx_ref, dw_ref, _ = _torch_conv(x, w, b, 1, 1, out)
            np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(job, seed) for seed in range(4)]:
            future.result(timeout=120)


def test_a_workspace_holds_its_memory_while_it_lives_and_no_longer(rng):
    import gc
    import weakref

    x, w = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3))
    workspace = Workspace()
    conv2d_backward(conv2d(x, w, None, 1, 1, workspace), x, w, 1, 1, workspace)
    held = sum(buf.nbytes for buf in workspace.buffers.values())
    assert held > 0 and workspace.nbytes == held
    assert set(workspace.buffers) == {"padded", "cols", "out", "dout", "dcols"}, workspace
    refs = [weakref.ref(buf) for buf in workspace.buffers.values()]
    del workspace
    gc.collect()
    assert all(ref() is None for ref in refs), "the workspace's buffers outlived it"
    np.testing.assert_allclose(conv2d(x, w, None, 1, 1), conv2d_im2col(x, w, None, 1, 1), rtol=1e-12)


# ---------------------------------------------------------------- behaviour pinned down by mutation testing

def test_non_integer_error_counts_the_columns_or_rows_pytorch_drops():
    # (10 - 3)/4 + 1 = 2.75: PyTorch keeps 2 windows (columns 0-2 and 4-6) and drops the last 3 columns
    assert F.conv2d(torch.zeros(1, 1, 1, 10), torch.zeros(1, 1, 1, 3), stride=4).shape[-1] == 2
    with pytest.raises(ValueError, match=r"drop the last 3 column\(s\)\)$"):
        conv_output_size(10, 3, 0, 4)
    with pytest.raises(ValueError, match=r"drop the last 1 row\(s\)\)$"):
        conv_output_size(7, 3, 0, 3, axis="height")


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(padding=(0, -1)), r"padding = \(0, -1\) must be >= 0"),
    (dict(stride=(1, 0)), r"stride = \(1, 0\) must be >= 1 \(a stride of 0"),
])
def test_both_elements_of_a_stride_or_padding_pair_are_checked(kwargs, pattern):
    x, w = np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3))
    for f in FORWARDS + [lambda x, w, backward=backward, **k: backward(np.ones((1, 1, 3, 3)), x, w, **k)
                         for backward in BACKWARDS]:
        with pytest.raises(ValueError, match=pattern):
            f(x, w, **kwargs)
    if "padding" in kwargs:
        with pytest.raises(ValueError, match=pattern):
            pad2d(x, kwargs["padding"])


@pytest.mark.parametrize("x_dtype, w_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_mixed_precision_operands_give_the_wider_dtype_in_every_forward(rng, x_dtype, w_dtype):
    x = rng.standard_normal((2, 2, 6, 5)).astype(x_dtype)
    w = rng.standard_normal((3, 2, 3, 2)).astype(w_dtype)
    expected = F.conv2d(torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64),
                        stride=(1, 2), padding=1).numpy()
    for f in FORWARDS:
        out = f(x, w, stride=(1, 2), padding=1)
        assert out.dtype == np.float64, f.__name__
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12, err_msg=f.__name__)


def test_col2im_rejects_rows_that_are_not_whole_kernels():
    with pytest.raises(ValueError, match=r"cols has shape \(1, 10, 9\).*C\*9"):
        col2im(np.ones((1, 10, 9)), (5, 5), 3)          # L = 9 is right, but 10 rows are not C*3*3


def test_dout_must_be_a_floating_numpy_array():
    x, w = np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3))
    for backward in BACKWARDS:
        with pytest.raises(TypeError, match="dout has dtype int64"):
            backward(np.ones((1, 1, 3, 3), dtype=np.int64), x, w)
        with pytest.raises(TypeError, match="dout must be a numpy array.*detach"):
            backward(torch.ones(1, 1, 3, 3), x, w)


def test_dout_with_the_wrong_spatial_shape_is_refused():
    x, w = np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3))
    for backward in BACKWARDS:
        with pytest.raises(ValueError, match=r"dout has shape \(1, 3, 3, 4\).*\(1, 3, 3, 3\)"):
            backward(np.ones((1, 3, 3, 4)), x, w)


# ---------------------------------------------------------------- course_lib.gradcheck

def test_numerical_gradient_refuses_integers_and_works_in_float64(rng):
    from course_lib.gradcheck import numerical_gradient
    with pytest.raises(TypeError, match="needs a floating x, got dtype int64"):
        numerical_gradient(lambda v: float(np.sum(v)), np.arange(3))
    x = rng.standard_normal((3, 4)).astype(np.float32)
    before = x.copy()
    grad = numerical_gradient(lambda v: float(np.sum(v.astype(np.float64) ** 2)), x)
    assert grad.dtype == np.float64 and grad.shape == x.shape
    np.testing.assert_allclose(grad, 2 * x.astype(np.float64), rtol=1e-8, atol=1e-8)   # float64 steps: exact
    np.testing.assert_array_equal(x, before)


def test_rel_error_shapes_and_empty_arrays():
    from course_lib.gradcheck import rel_error
    with pytest.raises(ValueError, match=r"shapes differ, \(3,\) vs \(3, 1\)"):
        rel_error(np.zeros(3), np.zeros((3, 1)))
    assert rel_error(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    assert check_gradient(lambda v: float(np.sum(v)), np.zeros((0, 3)), np.zeros((0, 3))) == 0.0


def test_check_gradient_fails_on_nan_and_on_small_errors_by_default():
    x = np.arange(1.0, 7.0).reshape(2, 3)
    f = lambda v: float(np.sum(v * x))                          # gradient: x itself
    with pytest.raises(AssertionError, match="relative error nan"):
        check_gradient(f, x, np.full(x.shape, np.nan))
    slightly_off = x * (1 + 2e-4)                               # relative error 1e-4: wrong at tol 1e-6
    with pytest.raises(AssertionError, match="relative error 1.00e-04 > tol 1e-06"):
        check_gradient(f, x, slightly_off)
    assert check_gradient(f, x, slightly_off, tol=1e-3) == pytest.approx(1e-4, rel=1e-3)


def test_check_gradient_message_names_the_worst_element_and_both_values():
    x = np.arange(1.0, 7.0).reshape(2, 3)
    analytic = x.copy()
    analytic[1, 2] = 10.0                                       # numerical 6, analytic 10
    analytic[0, 1] = 2.5                                        # a smaller error elsewhere
    with pytest.raises(AssertionError, match=r"worst element \(1, 2\): expected \(numerical\) 6, "
                                             r"received \(analytic\) 10$"):
        check_gradient(lambda v: float(np.sum(v * x)), x, analytic, name="g")


def test_check_gradient_points_at_the_largest_relative_error_not_the_largest_difference():
    c = np.array([2000.0, 2e-3])                                # the gradient of sum(c * v)
    analytic = np.array([2000.5, 6e-3])                         # 0.5 off of 2000, but 3x off at element 1
    with pytest.raises(AssertionError, match=r"relative error 5\.00e-01 .* worst element \(1,\): "
                                             r"expected \(numerical\) 0\.002\d*, received \(analytic\) 0\.006$"):
        check_gradient(lambda v: float(np.sum(c * v)), np.ones(2), analytic, name="g")
