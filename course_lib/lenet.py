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
2. ``LeNet5``: forward and backward in numpy, from ``course_lib.conv``,
   ``course_lib.pooling`` and ``course_lib.layers`` only.
3. ``TorchLeNet5``: the same network as a ``torch.nn.Module``;
   ``copy_weights`` moves weights either way, so the two can be compared.
4. ``train_step`` and ``train``: minibatch training of either, with a tqdm
   bar; ``History``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from course_lib.conv import conv2d, conv2d_backward, conv_output_size, conv_param_count
from course_lib.data import Digits
from course_lib.layers import linear, linear_backward, relu, relu_backward, softmax_cross_entropy
from course_lib.optim import SGD, Adagrad
from course_lib.pooling import max_pool2d, max_pool2d_backward

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
        self._cache = None

    def named_params(self) -> dict[str, np.ndarray]:
        return dict(zip(PARAM_NAMES, self.params))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, 1, 32, 32) -> logits (N, classes); keeps what backward needs."""
        w1, b1, w3, b3, w5, b5, w6, b6, w7, b7 = self.params
        a1 = conv2d(x, w1, b1)                                  # C1 (N, 6, 28, 28)
        r1 = relu(a1)
        s2, i2 = max_pool2d(r1, 2, return_indices=True)         # S2 (N, 6, 14, 14)
        a3 = conv2d(s2, w3, b3)                                 # C3 (N, 16, 10, 10)
        r3 = relu(a3)
        s4, i4 = max_pool2d(r3, 2, return_indices=True)         # S4 (N, 16, 5, 5)
        a5 = conv2d(s4, w5, b5)                                 # C5 (N, 120, 1, 1)
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
        dh6, dw7, db7 = linear_backward(dlogits, h6, w7)
        dh5, dw6, db6 = linear_backward(relu_backward(dh6, a6), h5, w6)
        da5 = relu_backward(dh5.reshape(a5.shape), a5)                   # (N, 120, 1, 1)
        ds4, dw5, db5 = conv2d_backward(da5, s4, w5)
        dr3 = max_pool2d_backward(ds4, r3, 2, argmax=i4)                 # (N, 16, 10, 10)
        ds2, dw3, db3 = conv2d_backward(relu_backward(dr3, a3), s2, w3)
        dr1 = max_pool2d_backward(ds2, r1, 2, argmax=i2)                 # (N, 6, 28, 28)
        _, dw1, db1 = conv2d_backward(relu_backward(dr1, a1), x, w1)     # dx of the image unused
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


# --------------------------------------------------------------------------
# 4. Training
# --------------------------------------------------------------------------

@dataclass
class History:
    """Per-epoch record of a training run (lists of equal length)."""
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)   # cumulative training time, evaluation excluded


def minibatches(n: int, batch_size: int, rng: np.random.Generator):
    """Index arrays of a shuffled pass over n examples (the last batch may be smaller)."""
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _make_optimizer(params, optimizer: str, lr: float, momentum: float):
    if optimizer not in ("sgd", "adagrad"):
        raise ValueError(f"train: optimizer must be 'sgd' or 'adagrad', got {optimizer!r}")
    if isinstance(params[0], np.ndarray):
        return SGD(params, lr, momentum=momentum) if optimizer == "sgd" else Adagrad(params, lr)
    return (torch.optim.SGD(params, lr, momentum=momentum) if optimizer == "sgd"
            else torch.optim.Adagrad(params, lr))


def _scale_lr(opt, factor: float) -> None:
    """Multiply the learning rate by factor (course_lib.optim and torch.optim alike)."""
    if isinstance(opt, torch.optim.Optimizer):
        for group in opt.param_groups:
            group["lr"] *= factor
    else:
        opt.lr *= factor


def _accuracy(model, x: np.ndarray, y: np.ndarray, device) -> float:
    if isinstance(model, LeNet5):
        return float((model.predict(x) == y).mean())
    with torch.no_grad():
        dtype = next(model.parameters()).dtype
        logits = torch.cat([model(torch.from_numpy(x[i:i + 500]).to(device, dtype=dtype))
                            for i in range(0, len(x), 500)])
    return float((logits.argmax(1).cpu().numpy() == y).mean())


def train_step(model, opt, xb: np.ndarray, yb: np.ndarray, device=None) -> tuple[float, int]:
    """One minibatch: forward, loss, backward, optimizer step. Returns (mean loss, correct predictions).

    model : LeNet5 with a ``course_lib.optim`` optimizer, or TorchLeNet5 (on
    ``device``) with a ``torch.optim`` one; xb (B, 1, 32, 32), yb (B,).
    """
    if isinstance(model, LeNet5):
        loss, grads, logits = model.loss_and_grads(xb, yb)
        opt.step(grads)
        return loss, int((logits.argmax(1) == yb).sum())
    dtype = next(model.parameters()).dtype
    xt, yt = torch.from_numpy(xb).to(device, dtype=dtype), torch.from_numpy(yb).to(device)
    logits = model(xt)
    loss = F.cross_entropy(logits, yt)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item(), int((logits.argmax(1) == yt).sum())


def train(model, data: Digits, epochs: int = 10, lr: float = 0.05, momentum: float = 0.9,
          batch_size: int = 32, optimizer: str = "sgd", lr_decay: float = 1.0, seed: int = 0,
          device=None, progress: bool = True, desc: str | None = None) -> History:
    """Minibatch training of a ``LeNet5`` (numpy) or a ``TorchLeNet5`` on ``data``.

    Both kinds see the same batches in the same order for the same seed, with
    ``course_lib.optim`` for the numpy model and ``torch.optim`` (equal to it)
    for the PyTorch one, so their curves can be put side by side.

    Parameters
    ----------
    model : LeNet5 or TorchLeNet5 (moved to ``device``, default cpu)
    data : Digits, x (N, 1, 32, 32) float32 and y (N,) int64
    epochs, lr, momentum, batch_size : the usual; momentum is SGD's only
    optimizer : 'sgd' (with momentum) or 'adagrad'
    lr_decay : the learning rate is multiplied by this after every epoch
    seed : seeds the shuffling
    progress : show a tqdm bar over the batches

    Returns
    -------
    History, one entry per epoch
    """
    if not isinstance(model, (LeNet5, TorchLeNet5)):
        raise TypeError(f"train: model must be a LeNet5 or a TorchLeNet5, got {type(model).__name__}")
    if isinstance(model, TorchLeNet5):
        device = torch.device(device or "cpu")
        model.to(device).train()
    params = model.params if isinstance(model, LeNet5) else list(model.parameters())
    opt = _make_optimizer(params, optimizer, lr, momentum)
    rng, history, elapsed = np.random.default_rng(seed), History(), 0.0
    n_batches = -(-len(data.x_train) // batch_size)
    bar = tqdm(total=epochs * n_batches, desc=desc or type(model).__name__, disable=not progress)
    for _ in range(epochs):
        start, losses, correct = time.perf_counter(), [], 0
        for idx in minibatches(len(data.x_train), batch_size, rng):
            loss, n_correct = train_step(model, opt, data.x_train[idx], data.y_train[idx], device)
            correct += n_correct
            losses.append(loss * len(idx))
            bar.update()
        elapsed += time.perf_counter() - start
        history.seconds.append(elapsed)
        history.train_loss.append(float(sum(losses) / len(data.x_train)))
        history.train_acc.append(correct / len(data.x_train))
        history.test_acc.append(_accuracy(model, data.x_test, data.y_test, device))
        _scale_lr(opt, lr_decay)
        bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", test_acc=f"{history.test_acc[-1]:.3f}")
    bar.close()
    return history
