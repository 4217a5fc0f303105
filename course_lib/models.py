"""Small models the lessons train in seconds on a laptop (LeNet-5 lives in ``lenet``).

``TinyNet``: an ``n_in -> n_hidden (ReLU) -> n_out`` softmax classifier whose
parameters are one flat vector, so that a parameter-server shard is a slice of
it (Downpour SGD, lesson 09) and a gradient is one array to compress
(lesson 12). Its gradient is written out by hand and checked against
PyTorch's autograd and a numerical gradient (``tests/test_downpour.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TinyNet:
    """``n_in -> n_hidden (ReLU) -> n_out`` softmax classifier on a flat parameter vector.

    A small network instead of LeNet-5 so that thousands of asynchronous steps
    run in seconds on a laptop; ``n_hidden = 0`` is softmax regression.
    Layout of the vector: W1 (n_in, n_hidden), b1, W2 (n_hidden, n_out), b2.
    """
    n_in: int = 64
    n_hidden: int = 32
    n_out: int = 10

    def shapes(self) -> list[tuple[int, ...]]:
        """The shape of each weight and bias, in the order they sit in the flat vector."""
        if self.n_hidden == 0:
            return [(self.n_in, self.n_out), (self.n_out,)]
        return [(self.n_in, self.n_hidden), (self.n_hidden,), (self.n_hidden, self.n_out), (self.n_out,)]

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes())

    def unflatten(self, w: np.ndarray) -> list[np.ndarray]:
        """Views of the flat vector, one per weight/bias, in layout order."""
        if w.shape != (self.n_params,):
            raise ValueError(f"parameters must have shape ({self.n_params},), got {w.shape}")
        out, start = [], 0
        for s in self.shapes():
            out.append(w[start:start + math.prod(s)].reshape(s))
            start += math.prod(s)
        return out

    def init(self, rng: np.random.Generator) -> np.ndarray:
        """He-style initial weights, zero biases: float64 (n_params,)."""
        parts = [rng.normal(0, np.sqrt(2 / s[0]), s) if len(s) == 2 else np.zeros(s)
                 for s in self.shapes()]
        return np.concatenate([p.ravel() for p in parts])

    def logits(self, w: np.ndarray, x: np.ndarray) -> np.ndarray:
        """x (N, n_in) -> logits (N, n_out), for the flat parameters w (n_params,)."""
        p = self.unflatten(w)
        if self.n_hidden == 0:
            return x @ p[0] + p[1]
        return np.maximum(x @ p[0] + p[1], 0) @ p[2] + p[3]

    def loss_and_grad(self, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean cross-entropy over the batch and its gradient (n_params,); x (N, n_in), y (N,) class indices."""
        p, N = self.unflatten(w), len(x)
        h = np.maximum(x @ p[0] + p[1], 0) if self.n_hidden else x          # (N, n_hidden)
        z = h @ p[-2] + p[-1]                                                # (N, n_out)
        z = z - z.max(axis=1, keepdims=True)
        prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(prob[np.arange(N), y] + 1e-300))
        dz = prob.copy()
        dz[np.arange(N), y] -= 1
        dz /= N                                                               # (N, n_out)
        grads = [h.T @ dz, dz.sum(0)]
        if self.n_hidden:
            dh = (dz @ p[2].T) * (h > 0)                                      # (N, n_hidden)
            grads = [x.T @ dh, dh.sum(0)] + grads
        return float(loss), np.concatenate([g.ravel() for g in grads])

    def loss(self, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy of the flat parameters w (n_params,) on x (N, n_in), y (N,)."""
        return self.loss_and_grad(w, x, y)[0]

    def error(self, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        """Fraction of the N examples x (N, n_in) whose predicted class is not y (N,)."""
        return float(np.mean(self.logits(w, x).argmax(1) != y))
