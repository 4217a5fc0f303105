"""Figures for lesson 10 (large-minibatch SGD, Goyal et al. 2017).

Reading order: ``plot_schedules`` (the linear scaling rule and warm-up as
learning rate against iteration), ``plot_error_vs_batch`` (the experiment of
``course_lib.experiments.large_minibatch`` over seeds, beside the lecture's description),
``plot_warmup_seeds`` (warm-up or not, every seed).
Tested in ``tests/test_lr_schedules.py``.
"""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np

from course_lib.lr_schedules import goyal_lr, linear_scaling_lr

LECTURE_CLAIM = "Goyal et al. (ImageNet, ResNet-50): flat up to kn = 8k, deteriorates beyond"


def plot_schedules(batches=(256, 1024, 8192), iters_per_epoch_at_256: int = 200, epochs: int = 90,
                   warmup_epochs: int = 5, milestones=(30, 60, 80)):
    """Goyal et al.'s whole schedule for several minibatch sizes: lr against epoch.

    Each curve warms up linearly from 0.1 to 0.1 * kn / 256 over the first
    ``warmup_epochs`` (kn <= 256: no warm-up), then drops x0.1 at each
    milestone epoch. An epoch is ``iters_per_epoch_at_256 * 256 // kn`` whole
    iterations.
    The log y-axis bends the linear warm-up into a curve, so an inset shows the
    first ``2 * warmup_epochs`` epochs on linear axes: the ramp is a straight line.
    """
    fig, ax = plt.subplots(figsize=(8, 4))
    inset = ax.inset_axes([0.14, 0.1, 0.28, 0.3]) if warmup_epochs else None   # lower left: empty there
    for kn in batches:
        per_epoch = iters_per_epoch_at_256 * 256 // kn                 # bigger batch, fewer iterations
        if per_epoch < 1:                                              # (whole ones, as with drop_last)
            raise ValueError(f"kn = {kn} is larger than an epoch ({iters_per_epoch_at_256} iterations "
                             f"of 256 = {iters_per_epoch_at_256 * 256} examples): no whole iteration per epoch")
        steps = np.arange(epochs * per_epoch)
        target = linear_scaling_lr(kn)
        warm = warmup_epochs * per_epoch if target > 0.1 else 0
        lr = [goyal_lr(int(t), target, warm, min(0.1, target), tuple(m * per_epoch for m in milestones))
              for t in steps]                                  # kn < 256: no warm-up, a lower start
        line, = ax.plot(steps / per_epoch, lr, label=f"kn = {kn}: peak {target:g}")
        if inset is not None:
            first = steps < 2 * warmup_epochs * per_epoch
            inset.plot(steps[first] / per_epoch, np.asarray(lr)[first], color=line.get_color())
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="learning rate (log scale)",
           title=f"eta = 0.1 kn/256, gradual warm-up over {warmup_epochs} epochs, "
                 f"x0.1 at epochs {', '.join(str(m) for m in milestones)}")
    if inset is not None:
        inset.set_title(f"first {2 * warmup_epochs} epochs on linear axes:\nthe warm-up is a straight ramp",
                        fontsize=7)
        inset.set_xlabel("epoch", fontsize=7, labelpad=1)
        inset.set_ylabel("learning rate", fontsize=7, labelpad=1)
        inset.tick_params(labelsize=6)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_error_vs_batch(summary: dict, batches, base_batch: int, base_lr: float):
    """Test error against global minibatch size: per arm, the median over seeds and its range.

    summary : ``course_lib.experiments.large_minibatch.seed_summary(sweeps)``
    batches : the batch sizes kn of the sweep, in order
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    n_seeds = len(next(iter(summary.values()))["all"])
    for (label, s), marker in zip(summary.items(), itertools.cycle("osd")):
        line, = ax.plot(batches, 100 * s["median"], marker + "-", label=f"{label} (median)")
        ax.fill_between(batches, 100 * s["min"], 100 * s["max"], color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="global minibatch size kn (log scale)", ylabel="test error (%)", ylim=(0, 100),
           title=f"Digits MLP, same epochs for every kn, {n_seeds} seeds (band: min to max); "
                 f"lr = {base_lr:g} or {base_lr:g} kn / {base_batch}")
    ax.text(0.02, 0.95, f"lecture: {LECTURE_CLAIM}", transform=ax.transAxes, fontsize=8, va="top")
    ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    return fig


def plot_warmup_seeds(errors: dict, batch: int, lr: float):
    """Every seed's test error with and without warm-up (one dot each), the medians and upper quartiles.

    errors : ``course_lib.experiments.large_minibatch.warmup_over_seeds(...)``
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, e) in enumerate(errors.items()):
        jitter = np.linspace(-0.15, 0.15, len(e))                 # spread the dots sideways
        ax.plot(i + jitter, 100 * e, "o", alpha=0.6, label=f"{label}: each seed")
        ax.plot([i - 0.3, i + 0.3], [100 * np.median(e)] * 2, "k-", lw=2)
        ax.plot([i - 0.3, i + 0.3], [100 * np.quantile(e, 0.75)] * 2, "k--", lw=1)
    ax.plot([], [], "k-", lw=2, label="median")
    ax.plot([], [], "k--", lw=1, label="upper quartile")
    ax.set_xticks(range(len(errors)), list(errors))
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))   # 2, 5, 10: not 2x10^0
    ax.yaxis.set_minor_formatter(mticker.NullFormatter())
    ax.set(ylabel="test error (%, log scale)", xlabel="schedule",
           title=f"kn = {batch}, lr = {lr:g}: {len(e)} seeds each")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
