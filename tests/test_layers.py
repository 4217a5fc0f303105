"""course_lib.layers (ReLU, linear, softmax cross-entropy) against PyTorch and numerical gradients."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from course_lib.gradcheck import check_gradient
from course_lib.layers import (linear, linear_backward, relu, relu_backward,
                               softmax_cross_entropy)


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 6), n_in=st.integers(1, 9), n_out=st.integers(1, 9), seed=st.integers(0, 999))
def test_linear_forward_backward_equal_torch(N, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((N, n_in)), rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out)
    dout = rng.standard_normal((N, n_out))
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    out = F.linear(xt, wt, bt)
    out.backward(torch.tensor(dout))
    np.testing.assert_allclose(linear(x, w, b), out.detach().numpy(), atol=1e-12)
    for ours, ref in zip(linear_backward(dout, x, w), (xt.grad, wt.grad, bt.grad)):
        np.testing.assert_allclose(ours, ref.numpy(), atol=1e-12)


def test_relu_and_its_gradient(rng):
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(relu(x), [0.0, 0.0, 3.0])
    np.testing.assert_array_equal(relu_backward(np.ones(3), x), [0.0, 0.0, 1.0])  # 0 at x == 0, as torch
    x = rng.standard_normal((4, 5))
    dout = rng.standard_normal((4, 5))
    check_gradient(lambda v: float(np.sum(relu(v) * dout)), x, relu_backward(dout, x), name="relu dx")


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 8), classes=st.integers(2, 10), scale=st.sampled_from([1.0, 100.0]),
       seed=st.integers(0, 999))
def test_softmax_cross_entropy_equals_torch(N, classes, scale, seed):
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal((N, classes))      # large logits: no overflow
    y = rng.integers(0, classes, N)
    lt = torch.tensor(logits, requires_grad=True)
    loss_t = F.cross_entropy(lt, torch.tensor(y))
    loss_t.backward()
    loss, dlogits = softmax_cross_entropy(logits, y)
    assert loss == pytest.approx(loss_t.item(), rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(dlogits, lt.grad.numpy(), atol=1e-12)


def test_softmax_cross_entropy_numerical_gradient(rng):
    logits, y = rng.standard_normal((3, 4)), np.array([0, 3, 1])
    check_gradient(lambda v: softmax_cross_entropy(v, y)[0], logits,
                   softmax_cross_entropy(logits, y)[1], name="dlogits")


def test_uniform_logits_give_log_classes():
    loss, _ = softmax_cross_entropy(np.zeros((5, 10)), np.arange(5))
    assert loss == pytest.approx(np.log(10))


def test_teaching_errors(rng):
    with pytest.raises(ValueError, match="x has 3 features but w"):
        linear(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="flatten images"):
        linear(np.zeros((2, 1, 3, 3)), np.zeros((4, 9)))
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        softmax_cross_entropy(np.zeros((2, 10)), np.array([0, 10]))
    with pytest.raises(TypeError, match="integer class labels"):
        softmax_cross_entropy(np.zeros((2, 10)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="one shape"):
        relu_backward(np.zeros(3), np.zeros(4))


# --------------------------------------------------------------------------
# Behaviour pinned down by mutation testing
# --------------------------------------------------------------------------

def test_shapes_that_would_broadcast_are_refused():
    x, w = np.ones((2, 3)), np.ones((4, 3))
    for b in (np.zeros(1), np.zeros((4, 1))):                  # numpy would broadcast either silently
        with pytest.raises(ValueError, match=r"linear: b has shape .*, expected \(4,\)"):
            linear(x, w, b)
    for dout in (np.ones((2, 5)), np.ones((1, 4))):
        with pytest.raises(ValueError, match=r"linear_backward: dout has shape .*expected \(2, 4\)"):
            linear_backward(dout, x, w)


def test_negative_labels_are_refused_as_torch_does():
    with pytest.raises(IndexError, match="out of bounds"):
        F.cross_entropy(torch.zeros(2, 10), torch.tensor([0, -1]))
    with pytest.raises(ValueError, match=r"labels must be in 0..9, got -1..0"):
        softmax_cross_entropy(np.zeros((2, 10)), np.array([0, -1]))


def test_rows_far_apart_are_each_shifted_by_their_own_max():
    logits = np.array([[0.0, 1.0, 2.0], [-1000.0, -999.0, -1001.0], [800.0, 799.0, 790.0]])
    y = np.array([2, 0, 1])
    lt = torch.tensor(logits, requires_grad=True)
    loss_t = F.cross_entropy(lt, torch.tensor(y))
    loss_t.backward()
    loss, dlogits = softmax_cross_entropy(logits, y)
    assert loss == pytest.approx(loss_t.item(), rel=1e-12)
    np.testing.assert_allclose(dlogits, lt.grad.numpy(), rtol=0, atol=1e-15)


def test_an_empty_batch_gives_nan_like_torch():
    loss_t = F.cross_entropy(torch.zeros(0, 10, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)             # numpy's "Mean of empty slice"
        loss, dlogits = softmax_cross_entropy(np.zeros((0, 10)), np.zeros(0, dtype=np.int64))
    assert np.isnan(loss) and np.isnan(loss_t.item())
    assert dlogits.shape == (0, 10)
