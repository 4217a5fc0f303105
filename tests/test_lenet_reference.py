"""The reading-order LeNet-5 step (course_lib.experiments.lenet_reference): the same loss and gradients
as the tuned LeNet5, and plain SGD in place."""

from __future__ import annotations

import numpy as np
import pytest

from course_lib.data import load_digits
from course_lib.experiments.lenet_reference import LAYERS, reference_loss_and_grads, reference_step
from course_lib.lenet import LeNet5, architecture


@pytest.fixture(scope="module")
def batch():
    data = load_digits()
    return data.x_train[:12], data.y_train[:12]      # blank borders: ties in every pooling window there


def test_layers_are_the_architecture_table():
    assert LAYERS == tuple(layer.name for layer in architecture())


def test_same_loss_and_gradients_as_the_tuned_lenet(batch):
    x, y = batch
    net = LeNet5(seed=3, dtype=np.float64)
    loss, grads, _ = net.loss_and_grads(x.astype(np.float64), y)
    ref_loss, ref_grads = reference_loss_and_grads(net.params, x.astype(np.float64), y)
    assert ref_loss == pytest.approx(loss, rel=1e-13)
    for g, r in zip(grads, ref_grads):
        assert r.shape == g.shape and r.dtype == g.dtype
        np.testing.assert_allclose(r, g, rtol=1e-10, atol=1e-13)


def test_step_is_sgd_in_place(batch):
    x, y = batch
    params = LeNet5(seed=1).params
    before = [p.copy() for p in params]
    loss, grads = reference_loss_and_grads(before, x, y)
    same = params[:]
    assert reference_step(params, x, y, 0.1) == pytest.approx(loss)
    for p, q, b, g in zip(params, same, before, grads):
        assert p is q and p.dtype == np.float32
        np.testing.assert_allclose(p, b - np.float32(0.1) * g, rtol=0, atol=1e-7)
