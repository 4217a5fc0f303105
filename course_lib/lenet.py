"""LeNet-5 from course_lib's own layers, and its PyTorch twin.

Lecture 5: "LeNet-5 (convolutional network for hand-written digits
classification): 7 layers, 3 convolutional layers (C1, C3 and C5), 2
sub-sampling (pooling) layers (S2 and S4), and 1 fully connected layer (F6),
that are followed by the output layer." "ReLU often follows the
convolutional layers"; "max-pooling is often applied after convolution-ReLU
combinations." So, on a (N, 1, 32, 32) input:

    C1  conv 5x5, 6 filters      -> (N, 6, 28, 28), ReLU
    S2  max pool 2x2, stride 2   -> (N, 6, 14, 14)
    C3  conv 5x5, 16 filters     -> (N, 16, 10, 10), ReLU
    S4  max pool 2x2, stride 2   -> (N, 16, 5, 5)
    C5  conv 5x5, 120 filters    -> (N, 120, 1, 1), ReLU
    F6  fully connected 120->84  -> (N, 84), ReLU
    out fully connected 84->10   -> (N, 10) logits (softmax cross-entropy)

This is the modern reading the lecture gives (ReLU, max pooling, every C3
filter sees all six S2 maps); LeCun et al. (1998) used scaled tanh, trainable
average-pooling and a sparse C3 connection table.

Reading order
-------------
1. ``architecture``: the table above computed from the lecture's formulas
   (``W2 = (W1 - F + 2P)/S + 1``, ``(F*F*D1)*K`` weights + K biases).
2. ``LeNet5``: forward and backward in numpy, the operations of ``course_lib.conv``,
   ``course_lib.pooling`` and ``course_lib.layers``; it calls their tuned forms
   (``machinery.fast_conv``'s ``conv2d`` with its own ``Workspace``, and
   ``machinery.fast_pool``'s ``max_pool2d_backward_fast``): the same results, faster.
3. ``TorchLeNet5``: the same network as a ``torch.nn.Module``;
   ``copy_weights`` moves weights either way, so the two can be compared.

Training either of them on the digits (``train``, the same minibatches for
both) is lesson 5's experiment: ``course_lib.experiments.lenet_training``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.conv import conv_output_size, conv_param_count
from course_lib.layers import linear, linear_backward, relu, relu_backward, softmax_cross_entropy
from course_lib.machinery.fast_conv import Workspace, conv2d, conv2d_backward
from course_lib.machinery.fast_pool import max_pool2d_backward_fast
from course_lib.pooling import max_pool2d

PARAM_NAMES = ("c1.weight", "c1.bias", "c3.weight", "c3.bias", "c5.weight", "c5.bias",
               "f6.weight", "f6.bias", "out.weight", "out.bias")


# --------------------------------------------------------------------------
# 1. The architecture table
# --------------------------------------------------------------------------

class Layer(NamedTuple):
    """One row of LeNet-5's table: output shape (C, H, W) or (features,), parameter count."""
    name: str
    kind: str
    output: tuple
    params: int


def architecture(size: int = 32, classes: int = 10) -> list[Layer]:
    """LeNet-5's layers, shapes and parameter counts from the lecture's formulas.

    >>> [layer.output for layer in architecture()][:2]
    [(6, 28, 28), (6, 14, 14)]
    >>> sum(layer.params for layer in architecture())
    61706
    """
    rows, (C, W) = [], (1, size)
    for name, kind, K, F_ in (("C1", "conv", 6, 5), ("S2", "pool", None, 2),
                              ("C3", "conv", 16, 5), ("S4", "pool", None, 2),
                              ("C5", "conv", 120, 5)):
        if kind == "conv":   # W2 = (W1 - F + 2P)/S + 1 with P = 0, S = 1; (F*F*D1)*K + K params
            W, params, C = conv_output_size(W, F_), conv_param_count(F_, C, K).total, K
            rows.append(Layer(name, f"conv {F_}x{F_}, {K} filters, ReLU", (C, W, W), params))
        else:                # pooling preserves the depth, subsamples by 2, has no parameters
            W = conv_output_size(W, F_, 0, F_)
            rows.append(Layer(name, f"max pool {F_}x{F_}, stride {F_}", (C, W, W), 0))
    features = C * W * W
    rows.append(Layer("F6", "fully connected, ReLU", (84,), features * 84 + 84))
    rows.append(Layer("out", "fully connected (logits)", (classes,), 84 * classes + classes))
    return rows


# --------------------------------------------------------------------------
# 2. LeNet-5 in numpy
# --------------------------------------------------------------------------

class LeNet5:
    """LeNet-5 with forward and backward passes in numpy.

    Parameters
    ----------
    seed : seeds the initial weights (PyTorch's default rule: weights and
        biases uniform in +-1/sqrt(fan_in), fan_in = C*KH*KW or in_features)
    dtype : float32 (fast) or float64 (for gradient checks)

    Attributes
    ----------
    params : list of ndarrays in the order of ``PARAM_NAMES`` (an optimizer
        updates them in place)
    workspace : the convolutions' scratch memory, reused from batch to batch
        (``course_lib.machinery.fast_conv.Workspace``); it holds no result
    """

    def __init__(self, seed: int = 0, dtype=np.float32, classes: int = 10):
        rng = np.random.default_rng(seed)
        shapes = [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 16, 5, 5), (120,),
                  (84, 120), (84,), (classes, 84), (classes,)]
        self.params = []
        for i in range(0, len(shapes), 2):
            bound = 1 / np.sqrt(np.prod(shapes[i][1:]))        # 1/sqrt(fan_in)
            self.params.append(rng.uniform(-bound, bound, shapes[i]).astype(dtype))
            self.params.append(rng.uniform(-bound, bound, shapes[i + 1]).astype(dtype))
        self.workspace = Workspace()
        self._cache = None

    def named_params(self) -> dict[str, np.ndarray]:
        """``{name: array}`` in ``PARAM_NAMES`` order, the arrays themselves (no copy): ``c1.weight``
        (6, 1, 5, 5), ``c1.bias`` (6,), ..., ``out.weight`` (classes, 84), ``out.bias`` (classes,)."""
        return dict(zip(PARAM_NAMES, self.params))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, 1, 32, 32) -> logits (N, classes); keeps what backward needs."""
        w1, b1, w3, b3, w5, b5, w6, b6, w7, b7 = self.params
        ws = self.workspace                                     # scratch memory the convolutions reuse
        a1 = conv2d(x, w1, b1, workspace=ws)                    # C1 (N, 6, 28, 28)
        r1 = relu(a1)
        s2, i2 = max_pool2d(r1, 2, return_indices=True)         # S2 (N, 6, 14, 14)
        a3 = conv2d(s2, w3, b3, workspace=ws)                   # C3 (N, 16, 10, 10)
        r3 = relu(a3)
        s4, i4 = max_pool2d(r3, 2, return_indices=True)         # S4 (N, 16, 5, 5)
        a5 = conv2d(s4, w5, b5, workspace=ws)                   # C5 (N, 120, 1, 1)
        h5 = relu(a5).reshape(len(x), -1)                       # (N, 120)
        a6 = linear(h5, w6, b6)                                 # F6 (N, 84)
        h6 = relu(a6)
        logits = linear(h6, w7, b7)                             # out (N, classes)
        self._cache = (x, a1, r1, i2, s2, a3, r3, i4, s4, a5, h5, a6, h6)
        return logits

    def backward(self, dlogits: np.ndarray) -> list[np.ndarray]:
        """dLoss/dlogits (N, classes) -> gradients of ``params``, same order and shapes."""
        if self._cache is None:
            raise RuntimeError("LeNet5.backward: call forward first (it saves the activations)")
        x, a1, r1, i2, s2, a3, r3, i4, s4, a5, h5, a6, h6 = self._cache
        w1, _, w3, _, w5, _, w6, _, w7, _ = self.params
        ws = self.workspace
        dh6, dw7, db7 = linear_backward(dlogits, h6, w7)
        dh5, dw6, db6 = linear_backward(relu_backward(dh6, a6), h5, w6)
        da5 = relu_backward(dh5.reshape(a5.shape), a5)                          # (N, 120, 1, 1)
        ds4, dw5, db5 = conv2d_backward(da5, s4, w5, workspace=ws)
        dr3 = max_pool2d_backward_fast(ds4, r3, 2, argmax=i4)                   # (N, 16, 10, 10)
        ds2, dw3, db3 = conv2d_backward(relu_backward(dr3, a3), s2, w3, workspace=ws)
        dr1 = max_pool2d_backward_fast(ds2, r1, 2, argmax=i2)                   # (N, 6, 28, 28)
        _, dw1, db1 = conv2d_backward(relu_backward(dr1, a1), x, w1, workspace=ws)   # dx of the image unused
        return [dw1, db1, dw3, db3, dw5, db5, dw6, db6, dw7, db7]

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray):
        """Forward, mean softmax cross-entropy, backward: ``(loss, grads, logits)``."""
        logits = self.forward(x)
        loss, dlogits = softmax_cross_entropy(logits, y)
        return loss, self.backward(dlogits), logits

    def predict(self, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """Class labels (N,) for images (N, 1, 32, 32), in batches.

        A query: what the last ``forward`` saved for ``backward`` is kept.
        """
        saved = self._cache
        try:
            return np.concatenate([self.forward(x[i:i + batch_size]).argmax(axis=1)
                                   for i in range(0, len(x), batch_size)])
        finally:
            self._cache = saved


# --------------------------------------------------------------------------
# 3. The PyTorch twin
# --------------------------------------------------------------------------

class TorchLeNet5(nn.Module):
    """The same LeNet-5 as ``LeNet5``, in PyTorch (parameters in ``PARAM_NAMES`` order)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.out = nn.Linear(84, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)          # C1, S2: (N, 6, 14, 14)
        x = F.max_pool2d(F.relu(self.c3(x)), 2)          # C3, S4: (N, 16, 5, 5)
        x = F.relu(self.c5(x)).flatten(1)                # C5: (N, 120)
        x = F.relu(self.f6(x))                           # F6: (N, 84)
        return self.out(x)                               # (N, classes)


def copy_weights(src, dst) -> None:
    """Copy every weight from ``src`` to ``dst``, one a ``LeNet5`` and the other a
    ``TorchLeNet5`` (either way round). dst's arrays/tensors are updated in place."""
    if isinstance(src, LeNet5) and isinstance(dst, TorchLeNet5):
        with torch.no_grad():
            for name, p in dst.named_parameters():
                value = src.named_params()[name]
                p.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(p.dtype))
    elif isinstance(src, TorchLeNet5) and isinstance(dst, LeNet5):
        for (name, p), ours in zip(src.named_parameters(), dst.params):
            if name not in PARAM_NAMES or p.shape != ours.shape:
                raise ValueError(f"copy_weights: unexpected parameter {name} {tuple(p.shape)}")
            ours[...] = p.detach().cpu().numpy()
    else:
        raise TypeError(f"copy_weights: need one LeNet5 and one TorchLeNet5, got "
                        f"{type(src).__name__} -> {type(dst).__name__}")
