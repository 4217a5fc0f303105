"""Numerical gradients: the check every backward pass in the kit must pass.

Central differences (error O(h^2)):

    df/dx_i  ~=  (f(x + h e_i) - f(x - h e_i)) / (2h)

and the relative error used by CS231n,

    rel_error(a, b) = max_i |a_i - b_i| / max(|a_i| + |b_i|, tiny)

which is about 1e-7 or less for a correct float64 gradient, and 1e-2 or more
for a wrong one.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray,
                       h: float = 1e-5) -> np.ndarray:
    """Gradient of the scalar function ``f`` at ``x`` by central differences.

    Parameters
    ----------
    f : callable, ndarray of x's shape -> float
    x : ndarray, any shape, float64 recommended (float32 loses the digits)
    h : step size

    Returns
    -------
    grad : ndarray, same shape as x
    """
    if not np.issubdtype(np.asarray(x).dtype, np.floating):
        raise TypeError(f"numerical_gradient needs a floating x, got dtype {np.asarray(x).dtype}")
    x = np.array(x, dtype=np.float64)  # our own copy: the caller's array is never touched
    grad = np.zeros_like(x)
    flat_x, flat_g = x.reshape(-1), grad.reshape(-1)  # views into x and grad
    for i in range(flat_x.size):
        old = flat_x[i]
        flat_x[i] = old + h
        f_plus = float(f(x))
        flat_x[i] = old - h
        f_minus = float(f(x))
        flat_x[i] = old
        flat_g[i] = (f_plus - f_minus) / (2 * h)
    return grad


def relative_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise relative error ``|a - b| / (|a| + |b|)`` (float64, the shape of a and b)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    return np.abs(a - b) / np.maximum(1e-12, np.abs(a) + np.abs(b))


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest elementwise relative error ``|a - b| / (|a| + |b|)``."""
    return float(np.max(relative_errors(a, b), initial=0.0))


def check_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, analytic: np.ndarray,
                   name: str = "gradient", tol: float = 1e-6, h: float = 1e-5) -> float:
    """Compare an analytic gradient with the numerical one; raise if they disagree.

    Returns the relative error. The AssertionError message prints where the
    worst element is, the expected (numerical) and received (analytic) values.
    """
    numeric = numerical_gradient(f, x, h)
    analytic = np.asarray(analytic, dtype=np.float64)
    relative = relative_errors(numeric, analytic)
    err = float(np.max(relative, initial=0.0))                  # rel_error(numeric, analytic)
    if not err <= tol:
        worst = tuple(int(i) for i in np.unravel_index(np.argmax(relative), numeric.shape))
        raise AssertionError(
            f"{name}: relative error {err:.2e} > tol {tol:.0e}; worst element {worst}: "
            f"expected (numerical) {numeric[worst]:.6g}, received (analytic) {analytic[worst]:.6g}")
    return err
