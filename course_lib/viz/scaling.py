"""Figures and widgets for lesson 11 (scaling efficiency).

Reading order: ``plot_powerai`` (the two PowerAI tables and the model beside
them), ``plot_timeline`` (one iteration, with and without overlap),
``plot_efficiency_curves`` (the curves are ``course_lib.scaling.efficiency_curves``),
``what_if_report`` / ``what_if_explorer`` (the widget; its logic is
``course_lib.scaling.what_if``), ``plot_imagenet``.
Tested in ``tests/test_scaling.py``.
"""

from __future__ import annotations

import html

import matplotlib.pyplot as plt
import numpy as np

from course_lib.scaling import (IMAGENET_AT_SCALE, POWERAI_CAFFE, POWERAI_MODEL, POWERAI_TORCH,
                                Timeline, efficiency_curves, modelled_efficiency, resnet50_layers, what_if)
from course_lib.viz import print_initial


def plot_powerai(with_model: bool = True):
    """Speed-up and efficiency against GPUs for IBM-Caffe and Torch, printed and modelled."""
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    layers = resnet50_layers()
    for table, overlap, color in ((POWERAI_CAFFE, True, "C0"), (POWERAI_TORCH, False, "C1")):
        label = "Caffe (overlapped)" if overlap else "Torch (not overlapped)"
        ax_s.plot(table.gpus, table.speedup, "o-", color=color, label=f"{label}, printed")
        ax_e.plot(table.gpus, table.efficiency, "o-", color=color, label=f"{label}, printed")
        if with_model:
            model = modelled_efficiency(layers, nodes=table.nodes, overlap=overlap, **POWERAI_MODEL)
            ax_e.plot(table.gpus, model, "x--", color=color, label=f"{label}, timeline model")
    ideal = np.array(POWERAI_CAFFE.gpus) / 4
    ax_s.plot(POWERAI_CAFFE.gpus, ideal, "k:", label="ideal (linear)")
    ax_s.set(xlabel="GPUs (4 per node)", ylabel="speed-up over one node (x)",
             title="PowerAI DDL, ResNet-50: speed-up")
    ax_e.set(xlabel="GPUs (4 per node)", ylabel="scaling efficiency S / (P / 4)",
             title="Scaling efficiency: 95% with overlap, 84% without", ylim=(0.75, 1.02))
    for ax in (ax_s, ax_e):
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_timeline(timelines: dict[str, Timeline]):
    """One row per timeline: forward, backward (layer by layer) and the all-reduces, in ms."""
    fig, ax = plt.subplots(figsize=(11, 1.2 + 1.1 * len(timelines)))
    for row, (label, tl) in enumerate(timelines.items()):
        y = 2 * row
        ax.broken_barh([(0, 1e3 * tl.forward)], (y + 0.55, 0.4), color="0.6")
        ax.broken_barh([(1e3 * s, 1e3 * (e - s)) for _, s, e in tl.backward], (y + 0.55, 0.4),
                       color="C0", edgecolor="white", linewidth=0.3)
        ax.broken_barh([(1e3 * s, 1e3 * (e - s)) for _, s, e in tl.allreduce], (y + 0.05, 0.4),
                       color="C3", edgecolor="white", linewidth=0.8)
        ax.text(1e3 * tl.total, y + 0.5, f"  {1e3 * tl.total:.1f} ms", va="center", fontsize=8)
    ax.set_yticks([2 * r + 0.5 for r in range(len(timelines))], list(timelines))
    ax.set_xlabel("time within one iteration (ms)")
    ax.set_ylabel("configuration (compute above, all-reduce below)")
    ax.set_title("One iteration: forward (grey), backward layer by layer (blue), all-reduce buckets (red)")
    fig.tight_layout()
    return fig


def plot_efficiency_curves(nodes=(1, 2, 4, 8, 16, 32, 64, 128, 256), ratios=(0.05, 0.2, 0.5, 1.0)):
    """Modelled efficiency against nodes, with and without overlap, for several comm/compute ratios
    (``course_lib.scaling.efficiency_curves``)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (r, E) in enumerate(efficiency_curves(nodes, ratios).items()):
        ax.plot(nodes, E["overlap"], "-", color=f"C{i}", label=f"comm/compute {r:g}, overlap")
        ax.plot(nodes, E["no_overlap"], "--", color=f"C{i}", label=f"comm/compute {r:g}, none")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="nodes in the ring (world_size)", ylabel="scaling efficiency t(1) / t(P)",
           title="Efficiency under the timeline model: overlap hides what backprop can cover", ylim=(0, 1.05))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def what_if_report(comm_over_compute: float, nodes: int) -> str:
    """``what_if`` as text: the numbers behind one setting of the widget."""
    w = what_if(comm_over_compute, nodes)
    return "\n".join([
        f"compute {1e3 * w['t_compute']:.1f} ms/iteration, all-reduce of 102 MB over {nodes} nodes "
        f"{1e3 * w['t_comm']:.1f} ms",
        f"no overlap: iteration {1e3 * w['t_iter_no_overlap']:.1f} ms, efficiency {w['no_overlap']:.1%}",
        f"overlap   : iteration {1e3 * w['t_iter_overlap']:.1f} ms, efficiency {w['overlap']:.1%}",
    ])


def what_if_explorer(comm_over_compute: float = 0.2, nodes: int = 64):
    """Sliders for the comm/compute ratio and the node count above a live ``what_if_report``.

    Returns a VBox with ``.ratio``, ``.nodes`` and ``.report``; prints the
    first report once so that the stored notebook shows it.
    """
    import ipywidgets as widgets

    ratio = widgets.FloatSlider(value=comm_over_compute, min=0.0, max=2.0, step=0.05,
                                description="comm/compute", continuous_update=False)
    n = widgets.IntSlider(value=nodes, min=1, max=256, description="nodes", continuous_update=False)
    report = widgets.HTML()

    def update(_change=None):
        report.value = f"<pre>{html.escape(what_if_report(ratio.value, n.value))}</pre>"

    ratio.observe(update, names="value")
    n.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([ratio, n]), report])
    box.ratio, box.nodes, box.report = ratio, n, report
    print_initial(what_if_report(comm_over_compute, nodes))
    return box


def plot_imagenet():
    """Training time (log) and reported scaling efficiency of the ImageNet/ResNet-50 runs."""
    runs = IMAGENET_AT_SCALE
    labels = [f"{r.work}\n{r.batch}, {r.n_processors or '?'} x {r.processor}" for r in runs]
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    y = np.arange(len(runs))
    ax_t.barh(y, [r.minutes for r in runs], color="C0")
    ax_t.set_xscale("log")
    ax_t.set(yticks=y, yticklabels=labels, xlabel="training time (minutes, log scale)",
             ylabel="work (batch, processors)", title="ImageNet-1K / ResNet-50 training time")
    ax_t.invert_yaxis()
    ax_e.barh(y, [r.efficiency or 0 for r in runs], color="C2")
    for i, r in enumerate(runs):
        ax_e.text(0.01, i, "not reported" if r.efficiency is None else f"{r.efficiency:.0%}", va="center",
                  fontsize=8, color="black" if r.efficiency is None else "white")
    ax_e.set(xlabel="scaling efficiency (as reported)", xlim=(0, 1), title="Reported scaling efficiency")
    for ax in (ax_t, ax_e):
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig
