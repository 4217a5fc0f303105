"""LeNet-5's training step from the reading order alone: the baseline that exercise 5 profiles and beats.

``course_lib.lenet.LeNet5`` convolves with the tuned ``machinery.fast_conv`` and pools backward with
``machinery.fast_pool`` (lesson 5, section 3). This module computes the same loss and gradients with
only the functions the lessons read, one layer at a time (``LAYERS``):

    C1, C3, C5   ``conv2d_im2col`` then ``relu``;    backward: ``relu_backward``, ``conv2d_backward_im2col``
    S2, S4       ``max_pool2d(..., return_indices=True)``;    backward: ``max_pool2d_backward(argmax=...)``
    F6           ``linear`` then ``relu``;           backward: ``relu_backward``, ``linear_backward``
    out          ``linear`` then ``softmax_cross_entropy`` (the loss);    backward: ``linear_backward``

Nothing here is tuned: each convolution multiplies N per-image matrices and its backward pass builds
the columns again and computes dx even for the image (C1), which nothing needs. ``reference_step``
adds plain SGD, ``p -= lr * g`` in place. Parameters are a list of arrays in
``course_lib.lenet.PARAM_NAMES`` order (``LeNet5(seed).params``), any float dtype.
"""

from __future__ import annotations

import numpy as np

from course_lib.conv import conv2d_backward_im2col, conv2d_im2col
from course_lib.layers import linear, linear_backward, relu, relu_backward, softmax_cross_entropy
from course_lib.pooling import max_pool2d, max_pool2d_backward

LAYERS = ("C1", "S2", "C3", "S4", "C5", "F6", "out")


def reference_forward(params: list, x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """x (N, 1, 32, 32) -> logits (N, classes), and what ``reference_backward`` needs."""
    w1, b1, w3, b3, w5, b5, w6, b6, w7, b7 = params
    a1 = conv2d_im2col(x, w1, b1)                           # C1 (N, 6, 28, 28)
    r1 = relu(a1)
    s2, i2 = max_pool2d(r1, 2, return_indices=True)         # S2 (N, 6, 14, 14)
    a3 = conv2d_im2col(s2, w3, b3)                          # C3 (N, 16, 10, 10)
    r3 = relu(a3)
    s4, i4 = max_pool2d(r3, 2, return_indices=True)         # S4 (N, 16, 5, 5)
    a5 = conv2d_im2col(s4, w5, b5)                          # C5 (N, 120, 1, 1)
    h5 = relu(a5).reshape(len(x), -1)                       # (N, 120)
    a6 = linear(h5, w6, b6)                                 # F6 (N, 84)
    h6 = relu(a6)
    logits = linear(h6, w7, b7)                             # out (N, classes)
    return logits, (x, a1, r1, i2, s2, a3, r3, i4, s4, a5, h5, a6, h6)


def reference_backward(params: list, dlogits: np.ndarray, cache: tuple) -> list[np.ndarray]:
    """dLoss/dlogits (N, classes) -> the gradients of ``params``, same order and shapes."""
    x, a1, r1, i2, s2, a3, r3, i4, s4, a5, h5, a6, h6 = cache
    w1, _, w3, _, w5, _, w6, _, w7, _ = params
    dh6, dw7, db7 = linear_backward(dlogits, h6, w7)                        # out
    dh5, dw6, db6 = linear_backward(relu_backward(dh6, a6), h5, w6)         # F6
    da5 = relu_backward(dh5.reshape(a5.shape), a5)                          # (N, 120, 1, 1)
    ds4, dw5, db5 = conv2d_backward_im2col(da5, s4, w5)                     # C5
    dr3 = max_pool2d_backward(ds4, r3, 2, argmax=i4)                        # S4 (N, 16, 10, 10)
    ds2, dw3, db3 = conv2d_backward_im2col(relu_backward(dr3, a3), s2, w3)  # C3
    dr1 = max_pool2d_backward(ds2, r1, 2, argmax=i2)                        # S2 (N, 6, 28, 28)
    _, dw1, db1 = conv2d_backward_im2col(relu_backward(dr1, a1), x, w1)     # C1 (its dx is thrown away)
    return [dw1, db1, dw3, db3, dw5, db5, dw6, db6, dw7, db7]


def reference_loss_and_grads(params: list, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """Forward, mean softmax cross-entropy, backward: ``(loss, grads)``, as ``LeNet5.loss_and_grads``."""
    logits, cache = reference_forward(params, x)
    loss, dlogits = softmax_cross_entropy(logits, y)
    return loss, reference_backward(params, dlogits, cache)


def reference_step(params: list, x: np.ndarray, y: np.ndarray, lr: float) -> float:
    """One SGD step on the minibatch (x (N, 1, 32, 32), y (N,)): ``p -= lr * grad`` in place; returns the loss."""
    loss, grads = reference_loss_and_grads(params, x, y)
    for p, g in zip(params, grads):
        p -= lr * g
    return loss
