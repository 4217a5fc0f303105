"""Worker functions that run inside ``machinery.launch.launch`` (they live in a module, not a notebook).

``data_parallel_least_squares`` is data-parallel training in miniature: each
rank holds a slice of the rows, computes the gradient on its slice, all-reduces
it (the sum over all rows), and takes the same step as every other rank. With
full-batch gradient descent this equals single-process training on all rows,
up to the order of floating-point additions.
"""

from __future__ import annotations

import numpy as np

from .schedule import chunk_bounds


def data_parallel_least_squares(pg, X: np.ndarray, y: np.ndarray, steps: int, lr: float,
                                algorithm: str = "ring", seed: int = 0) -> np.ndarray:
    """Gradient descent on ``L(w) = ||X w - y||^2 / (2n)`` with the rows split across ranks.

    Every rank draws its own random start (seed + rank), then takes rank 0's
    (``broadcast_``), as DistributedDataParallel does when it wraps a model.

    Parameters
    ----------
    pg : ProcessGroup (dtype float64, capacity >= D)
    X : ndarray, shape (n, D); y : ndarray, shape (n,)
    steps, lr : number of steps and learning rate

    Returns
    -------
    w : ndarray, shape (D,), the same bits on every rank
    """
    a, b = chunk_bounds(len(X), pg.world_size)[pg.rank]
    X_r, y_r = X[a:b], y[a:b]                         # (n_r, D), (n_r,): this rank's rows
    w = np.random.default_rng(seed + pg.rank).standard_normal(X.shape[1])   # (D,) differs per rank
    pg.broadcast_(w, root=0)                          # now rank 0's start everywhere
    for _ in range(steps):
        grad = X_r.T @ (X_r @ w - y_r)                # (D,) sum over my rows
        pg.allreduce_(grad, algorithm=algorithm)      # (D,) sum over all n rows
        w -= lr * grad / len(X)
    return w


def least_squares_reference(X: np.ndarray, y: np.ndarray, steps: int, lr: float, seed: int = 0) -> np.ndarray:
    """The same gradient descent in one process, on all rows (what data parallelism must match)."""
    w = np.random.default_rng(seed).standard_normal(X.shape[1])          # rank 0's start
    for _ in range(steps):
        w -= lr * (X.T @ (X @ w - y)) / len(X)
    return w
