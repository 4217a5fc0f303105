"""Results over seeds: the median and the range, the form every training claim takes.

A training run amplifies float rounding, and rounding depends on the CPU
(PyTorch and OpenBLAS pick kernels by instruction set): one seed's result on
one machine is one draw from a distribution. The lessons run each experiment
over several seeds and state, and assert, what holds for the median, with a
margin the range justifies.

``summarize``   median, min and max over seeds (axis 0) of any array of results
``paired``      the same for a difference of two arms that share their seeds
``fmt``         one summary as text: "median [min, max]"
"""

from __future__ import annotations

import numpy as np


def summarize(values) -> dict[str, np.ndarray]:
    """Median, min and max over seeds.

    Parameters
    ----------
    values : array-like, shape (n_seeds, ...): one row per seed (a final loss, a
        test error, or one value per setting of a sweep)

    Returns
    -------
    ``{"median": (...), "min": (...), "max": (...), "all": (n_seeds, ...)}``
    """
    values = np.asarray(values, dtype=float)
    if values.ndim == 0 or len(values) == 0:
        raise ValueError(f"give one result per seed along axis 0, got shape {values.shape}")
    return {"median": np.median(values, axis=0), "min": values.min(axis=0),
            "max": values.max(axis=0), "all": values}


def paired(a, b) -> dict[str, np.ndarray]:
    """``summarize(a - b)``: arm a minus arm b, seed by seed.

    When both arms share each seed's initial weights and data order, the
    difference has a smaller spread than either arm: the seed's luck cancels.
    a, b : array-like, the same shape (n_seeds, ...)
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arms need one result per seed each, got shapes {a.shape} and {b.shape}")
    return summarize(a - b)


def fmt(s: dict, scale: float = 1.0, digits: int = 3) -> str:
    """``"median [min, max]"`` of a scalar summary, e.g. ``0.107 [0.096, 0.128]``
    (scale=100, digits=1 for percent)."""
    m, lo, hi = (scale * float(s[k]) for k in ("median", "min", "max"))
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
