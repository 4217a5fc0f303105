"""Figures and widgets for lesson 04 (Adagrad beside SGD, momentum and Nesterov).

The runs come from ``course_lib.experiments.optimizer_bowl`` (the bowl
f(w) = 0.5 * (a_1 w_1^2 + a_2 w_2^2), a = (0.5, 25), and ``run_optimizer``).
Reading order: ``adagrad_report`` / ``gamma_explorer`` (the widget),
``plot_trajectories``, ``plot_losses``, ``plot_effective_lr``.
Tested in ``tests/test_optim.py``.
"""

from __future__ import annotations

import html

import matplotlib.pyplot as plt
import numpy as np

from course_lib.experiments.optimizer_bowl import CURVATURES, START, bowl_loss, run_optimizer
from course_lib.viz import print_initial


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
    ax.contour(w1, w2, bowl_loss(np.stack([w1, w2], axis=-1)), levels=np.geomspace(0.01, 60, 14),
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
