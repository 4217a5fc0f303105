"""The small layers LeNet-5 needs besides convolution and pooling: ReLU, a
fully connected (linear) layer, and softmax cross-entropy.

Each comes as a forward function and a backward function that takes the
upstream gradient and what the forward pass saw, in the pattern of
``course_lib.conv``'s ``conv2d_im2col`` / ``conv2d_backward_im2col``.
Conventions are PyTorch's: a linear layer's weight is (out_features,
in_features) and computes ``x @ w.T + b`` (``torch.nn.functional.linear``);
the loss is the batch mean (``torch.nn.functional.cross_entropy``).

Lecture 5: "Three basic operations in CNNs are convolution, pooling, and
ReLU"; "ReLU often follows the convolutional layers".
"""

from __future__ import annotations

import numpy as np


def relu(x: np.ndarray) -> np.ndarray:
    """``max(0, x)`` elementwise; any shape; a new array."""
    return np.maximum(x, 0)


def relu_backward(dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Gradient of ReLU: dout where x > 0, else 0 (at x == 0 the gradient is 0, as in PyTorch)."""
    if dout.shape != x.shape:
        raise ValueError(f"relu_backward: dout {dout.shape} and x {x.shape} must have one shape")
    return np.where(x > 0, dout, 0).astype(dout.dtype, copy=False)


def _check_linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> None:
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"linear: x must be (N, in_features) and w (out_features, in_features); "
                         f"got x {x.shape}, w {w.shape} (flatten images with x.reshape(N, -1))")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"linear: x has {x.shape[1]} features but w {w.shape} expects "
                         f"in_features = {w.shape[1]}")
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"linear: b has shape {b.shape}, expected ({w.shape[0]},)")


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Fully connected layer, ``out = x @ w.T + b``.

    Parameters
    ----------
    x : ndarray, shape (N, in_features)
    w : ndarray, shape (out_features, in_features)
    b : ndarray, shape (out_features,), or None

    Returns
    -------
    out : ndarray, shape (N, out_features)
    """
    _check_linear(x, w, b)
    out = x @ w.T                                    # (N, in) @ (in, out) -> (N, out)
    return out + b if b is not None else out


def linear_backward(dout: np.ndarray, x: np.ndarray, w: np.ndarray):
    """Gradients of ``out = x @ w.T + b``: ``dx = dout @ w``, ``dw = dout.T @ x``, ``db = sum_N dout``.

    Returns dx (N, in_features), dw (out_features, in_features), db (out_features,).
    """
    _check_linear(x, w, None)
    if dout.shape != (x.shape[0], w.shape[0]):
        raise ValueError(f"linear_backward: dout has shape {dout.shape}, expected "
                         f"{(x.shape[0], w.shape[0])} = (N, out_features)")
    return dout @ w, dout.T @ x, dout.sum(axis=0)


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient with respect to the logits.

        p = softmax(logits),   loss = -(1/N) sum_n log p[n, y_n],
        dloss/dlogits = (p - onehot(y)) / N

    The max of each row is subtracted before ``exp`` (it cancels in the
    softmax) so that large logits do not overflow.

    Parameters
    ----------
    logits : ndarray, shape (N, classes)
    y : integer ndarray, shape (N,), values in 0 .. classes - 1

    Returns
    -------
    loss : float;  dlogits : ndarray, shape (N, classes), logits' dtype
    """
    if logits.ndim != 2 or y.shape != (logits.shape[0],):
        raise ValueError(f"softmax_cross_entropy: logits must be (N, classes) and y (N,); got "
                         f"logits {logits.shape}, y {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"softmax_cross_entropy: y must hold integer class labels, got {y.dtype}")
    N, classes = logits.shape
    if N and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"softmax_cross_entropy: labels must be in 0..{classes - 1}, got "
                         f"{y.min()}..{y.max()}")
    shifted = logits - logits.max(axis=1, keepdims=True)          # (N, classes), row max = 0
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -float(log_p[np.arange(N), y].mean())
    dlogits = np.exp(log_p)                                        # p
    dlogits[np.arange(N), y] -= 1                                  # p - onehot(y)
    return loss, (dlogits / N).astype(logits.dtype, copy=False)
