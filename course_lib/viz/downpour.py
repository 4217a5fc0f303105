"""Figures for lesson 09 (Downpour SGD).

Reading order: ``plot_architecture`` (shards, replicas, data shards, fetch
and push), ``plot_staleness`` (histograms), ``plot_curves`` (loss against
steps or time), ``plot_robustness`` (final loss against replicas: the
experiment of ``course_lib.distributed.downpour.robustness_sweep``).
Tested in ``tests/test_downpour.py``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch

from course_lib.distributed.schedule import chunk_bounds


def _box(ax, x, y, w, h, text, color):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02",
                                facecolor=color, edgecolor="black"))
    ax.text(x, y, text, ha="center", va="center", fontsize=8)


def plot_architecture(n_replicas: int = 4, n_shards: int = 3, n_params: int | None = None):
    """Downpour SGD as in Dean et al. 2012: a sharded parameter server above
    model replicas, each with its own data shard; fetch w down, push dw up."""
    fig, ax = plt.subplots(figsize=(10, 4.6))
    shard_x = np.linspace(0.25, 0.75, n_shards)
    rep_x = np.linspace(0.1, 0.9, n_replicas)
    for s, x in enumerate(shard_x):
        label = f"shard {s}\nAdagrad state"
        if n_params:
            lo, hi = chunk_bounds(n_params, n_shards)[s]
            label = f"shard {s}: w[{lo}:{hi}]\nown Adagrad state"
        _box(ax, x, 0.85, 0.2, 0.12, label, "#cfe3f5")
    ax.text(0.5, 0.99, "parameter server: w' = w - eta * dw, each shard on its own, no talk between shards",
            ha="center", va="top", fontsize=9)
    for r, x in enumerate(rep_x):
        _box(ax, x, 0.4, 0.14, 0.1, f"model replica {r}", "#f5e3cf")
        _box(ax, x, 0.12, 0.14, 0.08, f"data shard {r}", "#e0e0e0")
        ax.annotate("", (x, 0.17), (x, 0.34), arrowprops=dict(arrowstyle="<-", color="0.4"))
        for sx in shard_x:
            ax.annotate("", (sx - 0.01, 0.79), (x - 0.01, 0.45),
                        arrowprops=dict(arrowstyle="->", color="C3", lw=0.6, alpha=0.6))
            ax.annotate("", (x + 0.01, 0.45), (sx + 0.01, 0.79),
                        arrowprops=dict(arrowstyle="->", color="C0", lw=0.6, alpha=0.6))
    ax.text(0.02, 0.62, "fetch w every n_fetch steps (blue)\npush dw every n_push steps (red)",
            fontsize=8, va="center")
    ax.set(xlim=(0, 1), ylim=(0.03, 1.0), xticks=[], yticks=[],
           title=f"Downpour SGD: {n_shards} parameter-server shards, {n_replicas} asynchronous model replicas")
    ax.set_xlabel("replicas run independently; every update is applied with whatever parameters it was computed from")
    fig.tight_layout()
    return fig


def plot_staleness(results: dict):
    """Histogram of update staleness (updates missed), one panel per run."""
    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.2), sharey=True)
    for ax, (label, res) in zip(np.atleast_1d(axes), results.items()):
        st = res.staleness[:, 1]
        ax.hist(st, bins=np.arange(st.max() + 2) - 0.5, color="C0")
        ax.axvline(st.mean(), color="C3", ls="--", label=f"mean {st.mean():.1f}")
        ax.set(title=label, xlabel="staleness (updates missed)")
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("number of updates")
    fig.tight_layout()
    return fig


def plot_curves(results: dict, x: str = "steps"):
    """Training loss of the server's parameters against steps done or (virtual) time."""
    col, xlabel = {"steps": (0, "gradient steps done (all replicas)"),
                   "time": (1, "time (s, virtual for the simulation)")}[x]
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, res in results.items():
        ax.plot(res.curve[:, col], res.curve[:, 2], label=label)
    ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel="training loss (cross-entropy, log scale)", title="Downpour SGD training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_robustness(replicas, sweep: dict):
    """Final training loss against the number of replicas, one line per arm."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (label, runs), marker in zip(sweep.items(), "osd^v"):
        ax.plot(replicas, [r.final_loss for r in runs], marker + "-", label=label)
    ax.axhline(np.log(10), color="0.5", ls=":", label="chance: log 10 = 2.30")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="model replicas R (mean staleness about R - 1)",
           ylabel="final training loss (log scale)",
           title="Same budget of gradient steps: Adagrad keeps Downpour stable")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
