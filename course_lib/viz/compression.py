"""Figures for lesson 12 (gradient compression).

Reading order: ``plot_message`` (one gradient, what each scheme sends and
keeps), ``plot_bytes_vs_workers`` (ring/PS bytes per step, dense and
compressed), ``plot_training`` (loss curves), ``plot_bytes_vs_error``
(the trade-off). The last two take one run per label, or a list of runs over
seeds (``course_lib.experiments.compression.compression_over_seeds``), drawn as
the median and the range from the best seed to the worst. Tested in
``tests/test_compression.py``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from course_lib.distributed.compression import bytes_per_step, decompress


def plot_message(g: np.ndarray, messages: dict):
    """The gradient g beside what each scheme sends (decompressed) and keeps (residual).

    messages : {label: (Compressed, residual)}
    """
    fig, axes = plt.subplots(1, len(messages), figsize=(4 * len(messages), 3.4), sharey=True)
    i = np.arange(g.size)
    for ax, (label, (msg, residual)) in zip(np.atleast_1d(axes), messages.items()):
        ax.bar(i - 0.25, g, width=0.25, color="0.6", label="gradient g")
        ax.bar(i, decompress(msg), width=0.25, color="C0", label="sent")
        ax.bar(i + 0.25, residual, width=0.25, color="C3", label="residual e' (kept)")
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=f"{label}: {msg.nbytes} bytes vs {4 * g.size} dense", xlabel="element index")
    np.atleast_1d(axes)[0].set_ylabel("value")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_bytes_vs_workers(n_params: int, message_bytes: dict, workers=(2, 4, 8, 16, 32, 64, 128, 256)):
    """Bytes one reduction moves, per rank on a ring and at a parameter server, against P.

    message_bytes : {label: bytes of one worker's compressed gradient}

    At the parameter server the dense sum sent back, N(P-1) floats, dwarfs the
    compressed messages coming in, so the compressed curves lie on top of each
    other there: each scheme has its own line style and marker (hollow, of
    decreasing size) so that every one stays visible, and the panel says so.
    """
    fig, (ax_ring, ax_ps) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    dense = [bytes_per_step(n_params, P) for P in workers]
    ax_ring.plot(workers, [d["ring_per_rank"] for d in dense], "k-o",
                 label="dense ring: 2N(P-1)/P floats, 8N(P-1)/P bytes")
    ax_ps.plot(workers, [d["ps_at_server"] for d in dense], "k-o", label="dense PS: 2N(P-1) floats, 8N(P-1) bytes")
    styles = [("--", "s", 9), ("-.", "^", 6.5), (":", "o", 4)]
    for i, (label, nbytes) in enumerate(message_bytes.items()):
        ls, marker, size = styles[i % len(styles)]
        style = dict(ls=ls, marker=marker, ms=size, mfc="none", color=f"C{i}")
        comp = [bytes_per_step(n_params, P, nbytes) for P in workers]
        ax_ring.plot(workers, [c["ring_per_rank"] for c in comp], label=f"{label}, allgather", **style)
        ax_ps.plot(workers, [c["ps_at_server"] for c in comp], label=f"{label} up, dense down", **style)
    if len(message_bytes) > 1:
        ax_ps.text(0.97, 0.04, "the compressed curves coincide:\nthe dense sum sent back down,\n"
                   "4N(P-1) bytes, outweighs every upload", transform=ax_ps.transAxes,
                   ha="right", va="bottom", fontsize=8)
    for ax, where in ((ax_ring, "Ring: bytes sent per rank"), (ax_ps, "Parameter server: bytes in and out")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel="workers P (world_size, log scale)", title=where)
        ax.legend(fontsize=7)
    ax_ring.set_ylabel("bytes per step (log scale)")
    fig.suptitle(f"One gradient reduction of N = {n_params:,} float32 parameters, dense and compressed")
    fig.tight_layout()
    return fig


def _seeds(runs) -> list:
    """One run or a list of runs over seeds -> a list."""
    return list(runs) if isinstance(runs, (list, tuple)) else [runs]


def plot_training(runs: dict):
    """Training loss against step, one line per label: the median over seeds
    and a band from the lowest to the highest seed (a single run: its line).

    runs : {label: a CompressedRun, or a list of them, one per seed, evaluated at the same steps}
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    n_seeds = set()
    for label, rs in runs.items():
        rs = _seeds(rs)
        n_seeds.add(len(rs))
        losses = np.array([r.curve[:, 1] for r in rs])                    # (n_seeds, n_evals)
        steps = rs[0].curve[:, 0]
        line, = ax.plot(steps, np.median(losses, axis=0), "--" if "no feedback" in label else "-", label=label)
        if len(rs) > 1:
            ax.fill_between(steps, losses.min(axis=0), losses.max(axis=0), color=line.get_color(), alpha=0.12, lw=0)
    ax.set_yscale("log")
    shapes = {(r.world_size, r.batch) for rs in runs.values() for r in _seeds(rs)}
    xlabel = "step"
    if len(shapes) == 1:                                 # the same for every run: say what a step is
        (workers, batch), = shapes
        xlabel = f"step (each: {workers} workers x {batch} images)"
    title = "Data-parallel SGD with compressed gradients"
    if n_seeds != {1}:
        title += f": median of {max(n_seeds)} seeds, band min to max"
    ax.set(xlabel=xlabel, ylabel="training loss (cross-entropy, log scale)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_bytes_vs_error(runs: dict):
    """Bytes per worker per step (log) against test error: the trade-off.

    runs : {label: a CompressedRun, or a list of them over seeds: the median
        test error, with a bar from the best seed to the worst}
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sizes, n_seeds = {}, set()
    for label, rs in runs.items():
        rs = _seeds(rs)
        n_seeds.add(len(rs))
        err = 100 * np.array([r.test_error for r in rs])
        nbytes = sizes[label] = float(np.median([r.bytes_per_worker_step for r in rs]))
        med = np.median(err)
        ax.errorbar(nbytes, med, yerr=[[med - err.min()], [err.max() - med]], capsize=3,
                    fmt="x" if "no feedback" in label else "o", ms=7)
        ax.annotate(label, (nbytes, med), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if any(b == 0 for b in sizes.values()):                           # a run that sent nothing would
        sent = [b for b in sizes.values() if b > 0]
        ax.set_xscale("symlog", linthresh=min([1.0] + sent) / 2)      # vanish from a log axis; every run
        #                                                               that sent something stays on its log part
        unit = "bytes sent per worker per step (log scale; 0: nothing sent)"
    else:
        ax.set_xscale("log")
        unit = "bytes sent per worker per step (log scale)"
    seeds = f"; median of {max(n_seeds)} seeds, bar min to max" if n_seeds != {1} else ""
    ax.set(xlabel=unit, ylabel="test error (%)",
           title=f"Bytes saved vs accuracy (o: error feedback, x: without{seeds})")
    fig.tight_layout()
    return fig
