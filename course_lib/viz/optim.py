"""Figures and widgets for lesson 04 (Adagrad beside SGD, momentum and Nesterov).

The test problem is an ill-conditioned quadratic bowl,

    f(w) = 0.5 * (a_1 w_1^2 + a_2 w_2^2),   a = CURVATURES = (0.5, 25),

steep along w_2 and flat along w_1: one global learning rate is either too
large for w_2 or too small for w_1, which is exactly what Adagrad's
per-parameter rates ``eta_ik = gamma / sqrt(sum_j dw_ij^2)`` address.

``angle`` rotates the bowl: f(w) = 0.5 * (R w)^T diag(a) (R w), with R the
rotation by ``angle`` degrees, so its steep and flat directions no longer lie
along the parameters' axes.

Reading order: ``run_optimizer`` (any optimizer of ``course_lib.optim`` on
the bowl, axis-aligned or rotated), ``adagrad_report`` / ``gamma_explorer`` (the widget),
``plot_trajectories``, ``plot_losses``, ``plot_effective_lr``.
Tested in ``tests/test_optim.py``.
"""

from __future__ import annotations

import html

import matplotlib.pyplot as plt
import numpy as np

from course_lib.optim import SGD, Adagrad
from course_lib.viz import print_initial

CURVATURES = np.array([0.5, 25.0])
START = np.array([-4.0, 1.5])
OPTIMIZERS = ("SGD", "momentum", "Nesterov", "Adagrad")


def rotation(angle: float) -> np.ndarray:
    """The 2 x 2 matrix R that rotates by ``angle`` degrees (counter-clockwise)."""
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    return np.array([[c, -s], [s, c]])


def loss(w: np.ndarray, angle: float = 0.0) -> np.ndarray:
    """f(w) of the bowl for w of shape (..., 2); rotated by ``angle`` degrees: f evaluated at R w."""
    w = np.asarray(w)
    if angle:
        w = w @ rotation(angle).T                  # R w, for every row of w
    return 0.5 * np.sum(CURVATURES * w ** 2, axis=-1)


def grad(w: np.ndarray, angle: float = 0.0) -> np.ndarray:
    """Its gradient for w of shape (..., 2): ``a * w`` elementwise; rotated, ``R^T (a * (R w))``."""
    w = np.asarray(w)
    if not angle:
        return CURVATURES * w
    R = rotation(angle)
    return (CURVATURES * (w @ R.T)) @ R            # R^T (a * (R w)), for every row of w


def make_optimizer(name: str, params: list[np.ndarray], lr: float):
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
    opt = make_optimizer(name, [w], lr)
    path, etas = [w.copy()], []
    for _ in range(steps):
        opt.step([grad(w, angle)])
        if name == "Adagrad":
            etas.append(opt.effective_lr()[0])   # the rate this step used
        path.append(w.copy())
    path = np.array(path)
    result = {"name": name, "lr": lr, "angle": angle, "path": path, "loss": loss(path, angle)}
    if etas:
        result["eta"] = np.array(etas)
    return result


def adagrad_report(gamma: float, steps: int = 50) -> str:
    """Adagrad with ``lr = gamma`` on the bowl: final loss and each parameter's rate, as text."""
    run = run_optimizer("Adagrad", gamma, steps)
    eta = run["eta"]
    return "\n".join([
        f"gamma = {gamma:.3g}, {steps} steps: loss {run['loss'][0]:.3g} -> {run['loss'][-1]:.3g}",
        f"w = ({run['path'][-1][0]:+.3f}, {run['path'][-1][1]:+.3f})   (the minimum is (0, 0))",
        f"effective rate of w_1 (flat, a = {CURVATURES[0]:g}):  step 1 {eta[0, 0]:.3g}, "
        f"step {steps} {eta[-1, 0]:.3g}",
        f"effective rate of w_2 (steep, a = {CURVATURES[1]:g}): step 1 {eta[0, 1]:.3g}, "
        f"step {steps} {eta[-1, 1]:.3g}",
        f"ratio w_1 / w_2 at step {steps}: {eta[-1, 0] / eta[-1, 1]:.3g}",
    ])


def gamma_explorer(gamma: float = 0.5, steps: int = 50):
    """A log-scale slider for Adagrad's gamma above a live ``adagrad_report``.

    Returns an ``ipywidgets.VBox`` with ``box.slider`` and ``box.report``; the
    starting report is printed once so that the stored notebook shows it.
    """
    import ipywidgets as widgets

    slider = widgets.FloatLogSlider(value=gamma, base=10, min=-2, max=1, step=0.1,
                                    description="gamma", continuous_update=False)
    report = widgets.HTML()

    def update(_change=None):
        report.value = f"<pre>{html.escape(adagrad_report(slider.value, steps))}</pre>"

    slider.observe(update, names="value")
    update()
    box = widgets.VBox([slider, report])
    box.slider, box.report = slider, report
    print_initial(adagrad_report(gamma, steps))
    return box


def plot_trajectories(runs: list[dict]):
    """The bowl's contour lines and each run's path from the start to (near) the minimum.

    Draws the unrotated bowl (angle 0), so it refuses rotated runs, whose
    paths live on other contours: plot those with ``plot_losses``.
    """
    rotated = [run["name"] for run in runs if run.get("angle", 0)]
    if rotated:
        raise ValueError(f"plot_trajectories draws the unrotated bowl, but {rotated} ran on a rotated "
                         f"one (angle != 0): their paths would lie on other contours; compare them "
                         f"with plot_losses instead")
    w1, w2 = np.meshgrid(np.linspace(-4.5, 4.5, 200), np.linspace(-2, 2, 200))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.contour(w1, w2, loss(np.stack([w1, w2], axis=-1)), levels=np.geomspace(0.01, 60, 14),
               colors="0.75", linewidths=0.8)
    for run in runs:
        ax.plot(run["path"][:, 0], run["path"][:, 1], ".-", ms=3, lw=1,
                label=f"{run['name']} (lr {run['lr']:g})")
    ax.plot(*START, "ko")
    ax.plot(0, 0, "k*", ms=12)
    ax.set_xlabel("w_1 (flat direction, a = 0.5)")
    ax.set_ylabel("w_2 (steep direction, a = 25)")
    ax.set_title("Paths on an ill-conditioned bowl f(w) = 0.5 (0.5 w_1^2 + 25 w_2^2)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_losses(runs: list[dict]):
    """f(w) against the step, log scale, one line per run."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        ax.semilogy(run["loss"], label=f"{run['name']} (lr {run['lr']:g})")
    ax.set_xlabel("step k")
    ax.set_ylabel("loss f(w) (log scale)")
    ax.set_title("Loss on the ill-conditioned bowl")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_effective_lr(run: dict):
    """Adagrad's per-parameter effective learning rate ``eta_ik`` against the step k."""
    if "eta" not in run:
        raise ValueError("plot_effective_lr needs an Adagrad run (run_optimizer('Adagrad', ...))")
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(run["eta"]) + 1)
    ax.loglog(steps, run["eta"][:, 0], label="w_1 (flat, small gradients)")
    ax.loglog(steps, run["eta"][:, 1], label="w_2 (steep, large gradients)")
    ax.set_xlabel("step k (log scale)")
    ax.set_ylabel("eta_ik = gamma / sqrt(sum dw^2) (log scale)")
    ax.set_title(f"Adagrad gives each parameter its own rate (gamma = {run['lr']:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
