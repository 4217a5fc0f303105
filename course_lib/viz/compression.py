"""Figures for lesson 12 (gradient compression).

Reading order: ``plot_message`` (one gradient, what each scheme sends and
keeps), ``plot_bytes_vs_workers`` (ring/PS bytes per step, dense and
compressed), ``plot_training`` (loss curves), ``plot_bytes_vs_error``
(the trade-off). Tested in ``tests/test_compression.py``.
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


def plot_training(runs: dict):
    """Training loss against step, one line per run (``CompressedRun``)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, run in runs.items():
        ax.plot(run.curve[:, 0], run.curve[:, 1], "--" if "no feedback" in label else "-", label=label)
    ax.set_yscale("log")
    shapes = {(run.world_size, run.batch) for run in runs.values()}
    xlabel = "step"
    if len(shapes) == 1:                                 # the same for every run: say what a step is
        (workers, batch), = shapes
        xlabel = f"step (each: {workers} workers x {batch} images)"
    ax.set(xlabel=xlabel, ylabel="training loss (cross-entropy, log scale)",
           title="Data-parallel SGD with compressed gradients")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_bytes_vs_error(runs: dict):
    """Bytes per worker per step (log) against test error: the trade-off."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, run in runs.items():
        ax.scatter(run.bytes_per_worker_step, 100 * run.test_error,
                   marker="x" if "no feedback" in label else "o", s=50)
        ax.annotate(label, (run.bytes_per_worker_step, 100 * run.test_error), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    if any(run.bytes_per_worker_step == 0 for run in runs.values()):   # a run that sent nothing would
        sent = [run.bytes_per_worker_step for run in runs.values() if run.bytes_per_worker_step > 0]
        ax.set_xscale("symlog", linthresh=min([1.0] + sent) / 2)      # vanish from a log axis; every run
        #                                                               that sent something stays on its log part
        unit = "bytes sent per worker per step (log scale; 0: nothing sent)"
    else:
        ax.set_xscale("log")
        unit = "bytes sent per worker per step (log scale)"
    ax.set(xlabel=unit, ylabel="test error (%)",
           title="Bytes saved vs accuracy (o: error feedback, x: without)")
    fig.tight_layout()
    return fig
