"""Lesson 4's experiment: SGD, momentum, Nesterov and Adagrad on an ill-conditioned bowl.

The test problem is an ill-conditioned quadratic bowl,

    f(w) = 0.5 * (a_1 w_1^2 + a_2 w_2^2),   a = CURVATURES = (0.5, 25),

steep along w_2 and flat along w_1: one global learning rate is either too
large for w_2 or too small for w_1, which is exactly what Adagrad's
per-parameter rates ``eta_ik = gamma / sqrt(sum_j dw_ij^2)`` address.

``angle`` rotates the bowl: f(w) = 0.5 * (R w)^T diag(a) (R w), with R the
rotation by ``angle`` degrees, so its steep and flat directions no longer lie
along the parameters' axes.

``run_optimizer`` runs any optimizer of ``course_lib.optim`` on the bowl,
axis-aligned or rotated, and records its path, its loss and (Adagrad) the
rate each parameter got. Figures of the runs are drawn by ``course_lib.viz.optim``.
"""

from __future__ import annotations

import numpy as np

from course_lib.optim import SGD, Adagrad

CURVATURES = np.array([0.5, 25.0])
START = np.array([-4.0, 1.5])
OPTIMIZERS = ("SGD", "momentum", "Nesterov", "Adagrad")


def rotation(angle: float) -> np.ndarray:
    """The 2 x 2 matrix R that rotates by ``angle`` degrees (counter-clockwise)."""
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    return np.array([[c, -s], [s, c]])


def bowl_loss(w: np.ndarray, angle: float = 0.0) -> np.ndarray:
    """f(w) of the bowl for w of shape (..., 2); rotated by ``angle`` degrees: f evaluated at R w."""
    w = np.asarray(w)
    if angle:
        w = w @ rotation(angle).T                  # R w, for every row of w
    return 0.5 * np.sum(CURVATURES * w ** 2, axis=-1)


def bowl_grad(w: np.ndarray, angle: float = 0.0) -> np.ndarray:
    """Its gradient for w of shape (..., 2): ``a * w`` elementwise; rotated, ``R^T (a * (R w))``."""
    w = np.asarray(w)
    if not angle:
        return CURVATURES * w
    R = rotation(angle)
    return (CURVATURES * (w @ R.T)) @ R            # R^T (a * (R w)), for every row of w


def optimizer_by_name(name: str, params: list[np.ndarray], lr: float):
    """One of ``OPTIMIZERS`` over ``params`` (momentum 0.9 for the two momentum methods)."""
    if name == "SGD":
        return SGD(params, lr)
    if name == "momentum":
        return SGD(params, lr, momentum=0.9)
    if name == "Nesterov":
        return SGD(params, lr, momentum=0.9, nesterov=True)
    if name == "Adagrad":
        return Adagrad(params, lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def run_optimizer(name: str, lr: float, steps: int = 100, start=START, angle: float = 0.0) -> dict:
    """Run an optimizer on the bowl from ``start``.

    With ``angle``, on the bowl rotated by that many degrees, from the start
    rotated with it (``R^T start``): the same problem, seen in axes turned by
    ``angle``, so the loss starts at the same value.

    Returns a dict with ``path`` (steps + 1, 2), ``loss`` (steps + 1,) and,
    for Adagrad, ``eta`` (steps, 2): the effective learning rate of each
    parameter used at each step.
    """
    w = np.array(start, dtype=np.float64)
    if angle:
        w = rotation(angle).T @ w
    opt = optimizer_by_name(name, [w], lr)
    path, etas = [w.copy()], []
    for _ in range(steps):
        opt.step([bowl_grad(w, angle)])
        if name == "Adagrad":
            etas.append(opt.effective_lr()[0])   # the rate this step used
        path.append(w.copy())
    path = np.array(path)
    result = {"name": name, "lr": lr, "angle": angle, "path": path, "loss": bowl_loss(path, angle)}
    if etas:
        result["eta"] = np.array(etas)
    return result
