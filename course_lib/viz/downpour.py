"""Figures for lesson 09 (Downpour SGD).

Reading order: ``plot_architecture`` (shards, replicas, data shards, fetch
and push), ``plot_staleness`` (histograms), ``plot_curves`` (loss against
steps or time, events marked; a list of runs over seeds is drawn one faint
line per seed), ``plot_robustness`` (final loss against replicas, median over
seeds and its range: ``course_lib.experiments.downpour.robustness_over_seeds``),
``plot_throughput`` (steps per second against replicas, one colour per number
of shards: measured on processes beside the model's bound) and
``plot_runtime_resource`` (seconds and machine-seconds to a target loss against
replicas, the lecture's runtime-resource trade-off).
Tested in ``tests/test_downpour.py`` and ``tests/test_downpour_tradeoffs.py``.
"""

from __future__ import annotations

import itertools

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
    """Histogram of update staleness (updates missed), one panel per run.

    The counts are shard updates: every pushed gradient updates each of the n_shards
    shards once, so a run of n pushes has n_shards * n of them.
    """
    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.4), sharey=True)
    n_shards = set()
    for ax, (label, res) in zip(np.atleast_1d(axes), results.items()):
        st = res.staleness[:, 1]
        n_shards.add(len(np.unique(res.staleness[:, 0])))
        ax.hist(st, bins=np.arange(st.max() + 2) - 0.5, color="C0")
        ax.axvline(st.mean(), color="C3", ls="--", label=f"mean {st.mean():.1f}")
        ax.set(title=f"{label}: {len(st):,} shard updates", xlabel="staleness (updates missed)")
        ax.legend(fontsize=8)
    per_push = f"{n_shards.pop()} per pushed gradient" if len(n_shards) == 1 else "one per shard per push"
    np.atleast_1d(axes)[0].set_ylabel(f"shard updates ({per_push})")
    fig.suptitle("Staleness of each shard update: updates the shard applied between "
                 "the replica's fetch and its push")
    fig.tight_layout()
    return fig


def plot_curves(results: dict, x: str = "steps", marks: dict | None = None,
                title: str = "Downpour SGD training"):
    """Training loss of the server's parameters against steps done or time.

    results : {label: a DownpourResult, or a list of them, one per seed (each
        seed a faint line of the label's colour)}
    x : "steps" (gradient steps done), "time" (the simulation's virtual
        seconds) or "wall" (wall-clock seconds of a real run,
        ``machinery.downpour_processes.train_on_processes``)
    marks : {text: x position}, each drawn as a dotted vertical line (an event,
        such as a replica's death)
    """
    col, xlabel = {"steps": (0, "gradient steps done (all replicas)"),
                   "time": (1, "virtual time (s, simulated)"),
                   "wall": (1, "wall-clock time (s)")}[x]
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (label, runs) in enumerate(results.items()):
        runs = runs if isinstance(runs, (list, tuple)) else [runs]
        faint = dict(alpha=0.35, lw=1) if len(runs) > 1 else {}
        seeds = f" ({len(runs)} seeds, one line each)" if len(runs) > 1 else ""
        for k, res in enumerate(runs):
            ax.plot(res.curve[:, col], res.curve[:, 2], color=f"C{i}", label=None if k else label + seeds, **faint)
    for i, (text, pos) in enumerate((marks or {}).items()):
        ax.axvline(pos, color="0.3", ls=":", lw=1.2)
        ax.annotate(text, (pos, 1.0), xycoords=("data", "axes fraction"), xytext=(4, -12 - 11 * i),
                    textcoords="offset points", fontsize=8, color="0.2", va="top")
    ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel="training loss (cross-entropy, log scale)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_robustness(replicas, summary: dict, total_steps: int | None = None):
    """Final training loss against the number of replicas: per arm, the median over
    seeds (line) and the range from the best to the worst seed (band).

    summary : {label: {"median": (n_R,), "min": (n_R,), "max": (n_R,), "all": (n_seeds, n_R)}},
        ``course_lib.experiments.downpour.robustness_over_seeds``
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    n_seeds = len(next(iter(summary.values()))["all"])
    for (label, s), marker in zip(summary.items(), itertools.cycle("osd^v")):
        line, = ax.plot(replicas, s["median"], marker + "-", label=label)
        ax.fill_between(replicas, s["min"], s["max"], color=line.get_color(), alpha=0.12, lw=0)
    ax.axhline(np.log(10), color="0.5", ls=":", label="chance: log 10 = 2.30")
    ax.set_xscale("log", base=2)
    ax.set_xticks(replicas, [str(R) for R in replicas])
    ax.set_yscale("log")
    budget = f"{total_steps:,} gradient steps" if total_steps else "the same budget of gradient steps"
    ax.set(xlabel="model replicas R (mean staleness about R - 1)",
           ylabel="final training loss (log scale)",
           title=f"Downpour SGD, {budget} for every R: median of {n_seeds} seeds, band min to max")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_throughput(replicas, shards, sweep: dict, compute_time: float, service_time: float):
    """Steps per second of all replicas against R: per number of shards, the measured
    throughput on processes (markers), the model's bound min(replica, server) (line) and
    its server bound n_shards / (2 t_service) (dotted).

    sweep : ``course_lib.experiments.downpour.throughput_sweep``'s result, row i for shards[i]
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (n_shards, marker) in enumerate(zip(shards, itertools.cycle("osd^v"))):
        color, name = f"C{i}", f"{n_shards} shard{'s' * (n_shards > 1)}"
        ax.plot(replicas, sweep["bound"][i], "-", color=color, alpha=0.7, label=f"{name}: model bound")
        ax.axhline(sweep["server_bound"][i, 0], color=color, ls=":", lw=1)
        ax.plot(replicas, sweep["measured"][i], marker, color=color, ms=8, label=f"{name}: measured")
    ax.set_xscale("log", base=2)
    ax.set_xticks(replicas, [str(R) for R in replicas])
    ax.set(xlabel="model replicas R (processes)", ylabel="throughput (steps per second, all replicas)",
           title=f"Downpour on processes, emulated t_compute = {1e3 * compute_time:g} ms, "
                 f"t_service = {1e3 * service_time:g} ms\n(dotted: a shard 100% busy, n_shards / (2 t_service))")
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    fig.tight_layout()
    return fig


def plot_runtime_resource(replicas, arms: dict, target: float, measured: dict | None = None):
    """The runtime-resource trade-off: seconds (left) and machine-seconds (right) to reach a
    training loss of ``target``, against the number of replicas; median over seeds, band min to max.

    arms : {label: ``course_lib.experiments.downpour.runtime_resource``'s result, one value per R}
    measured : {label of an arm: (replicas, the same kind of result)}: markers in that arm's colour,
        its steps over seeds at a throughput measured on processes (median, bars min to max)
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    n_seeds = len(next(iter(arms.values()))["seconds"]["all"])
    colour = {label: f"C{i}" for i, label in enumerate(arms)}
    for ax, key, ylabel in zip(axes, ("seconds", "machine_seconds"),
                               ("time to the target (s)", "machine-seconds to the target (s x machines)")):
        for label, res in arms.items():
            s = res[key]
            ax.plot(replicas, s["median"], "-", color=colour[label], label=f"{label}: model throughput")
            ax.fill_between(replicas, s["min"], s["max"], color=colour[label], alpha=0.12, lw=0)
        for label, (reps, res) in (measured or {}).items():
            s = res[key]
            ax.errorbar(reps, s["median"], yerr=[s["median"] - s["min"], s["max"] - s["median"]], fmt="o",
                        color=colour[label], capsize=3, label=f"{label}: measured throughput")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(replicas, [str(R) for R in replicas])
        ax.set(xlabel="model replicas R (machines: R + n_shards)", ylabel=ylabel)
    axes[0].set_title(f"time to training loss {target}")
    axes[1].set_title("resources used (machines x seconds)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Runtime-resource trade-off: median of {n_seeds} seeds, band min to max")
    fig.tight_layout()
    return fig
