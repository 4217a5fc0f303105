"""Figures and widgets for lesson 13 (model parallelism by layers, GPipe).

Reading order: ``plot_schedule`` (the Gantt chart of ``pipeline.gpipe_schedule``,
the bubble in grey), ``schedule_report`` / ``schedule_explorer`` (the widget; its
logic is ``gpipe_schedule`` and ``bubble_fraction``), ``plot_times`` (measured
time per batch beside the alpha-beta model), ``plot_speedup`` (Dean et al.'s
curve from the calibrated model). Tested in ``tests/test_pipeline.py``.
"""

from __future__ import annotations

import html

import matplotlib.pyplot as plt
import numpy as np

from course_lib.distributed.pipeline import bubble_fraction, format_schedule, gpipe_schedule, speedup_curve
from course_lib.viz import figure_png, print_initial


def plot_schedule(S: int, M: int, ax=None):
    """Gantt chart of GPipe: one row per stage, one column per tick; F blue, B orange, idle grey."""
    ticks = gpipe_schedule(S, M)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(14, 1.5 + 0.45 * len(ticks)), 0.9 + 0.45 * S))
    for t in range(len(ticks)):
        busy = {s for s, _, _ in ticks[t]}
        for s in set(range(S)) - busy:
            ax.broken_barh([(t, 1)], (s - 0.4, 0.8), facecolor="0.9", edgecolor="0.6", hatch="//")
        for s, m, phase in ticks[t]:
            ax.broken_barh([(t, 1)], (s - 0.4, 0.8), facecolor="C0" if phase == "F" else "C1", edgecolor="white")
            if len(ticks) <= 40:
                ax.text(t + 0.5, s, f"{phase}{m}", ha="center", va="center", fontsize=7, color="white")
    ax.axvline(len(ticks) / 2, color="k", lw=0.8, ls="--")
    ax.set(xlim=(0, len(ticks)), ylim=(S - 0.5, -0.5), yticks=range(S), xlabel="tick (one forward or backward "
           "of one micro-batch on one stage)", ylabel="stage (process)",
           title=f"GPipe, S = {S} stages, M = {M} micro-batches: bubble (S-1)/(M+S-1) = {bubble_fraction(S, M):.0%} "
                 "(grey)")
    return ax.figure


def schedule_report(S: int, M: int) -> str:
    """The schedule as text and its bubble: what the widget prints under the chart."""
    T = M + S - 1
    return "\n".join([format_schedule(gpipe_schedule(S, M)) if 2 * T <= 40 else f"({2 * T} ticks: too wide to print)",
                      f"each phase {T} ticks = M + S - 1; every stage busy M = {M} of them; "
                      f"bubble (S-1)/(M+S-1) = {S - 1}/{T} = {bubble_fraction(S, M):.1%}"])


def schedule_explorer(S: int = 4, M: int = 4):
    """Sliders for S and M above the Gantt chart and ``schedule_report``.

    Returns a VBox with ``.stages``, ``.micro``, ``.image`` and ``.report``; the
    starting report is printed and the starting chart drawn once, for the stored notebook.
    """
    import ipywidgets as widgets

    stages = widgets.IntSlider(value=S, min=1, max=8, description="stages S", continuous_update=False)
    micro = widgets.IntSlider(value=M, min=1, max=16, description="micro-batches M", continuous_update=False,
                              style={"description_width": "initial"})
    image, report = widgets.Image(format="png"), widgets.HTML()

    def update(_change=None):
        report.value = f"<pre>{html.escape(schedule_report(stages.value, micro.value))}</pre>"
        image.value = figure_png(plot_schedule(stages.value, micro.value), bbox_inches="tight")

    stages.observe(update, names="value")
    micro.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([stages, micro]), image, report])
    box.stages, box.micro, box.image, box.report = stages, micro, image, report
    print_initial(schedule_report(S, M))
    plot_schedule(S, M)
    plt.show()
    return box


def plot_times(rows: list[dict], cores: int):
    """Time per batch against M, one colour per S: measured median with [min, max], the model on
    ``cores`` shared cores (dashed) and with a core per stage (dotted); ``rows`` from ``model_rows``."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, S in enumerate(sorted({r["S"] for r in rows})):
        mine = [r for r in rows if r["S"] == S]
        M = [r["M"] for r in mine]
        med = np.array([1e3 * r["median"] for r in mine])
        err = [med - [1e3 * r["min"] for r in mine], [1e3 * r["max"] for r in mine] - med]
        ax.errorbar(M, med, yerr=err, fmt="o-", color=f"C{i}", capsize=3, label=f"S = {S} measured")
        ax.plot(M, [1e3 * r["model_cores"] for r in mine], "--", color=f"C{i}", label=f"S = {S} model, {cores} cores")
        if S > cores:
            ax.plot(M, [1e3 * r["model"] for r in mine], ":", color=f"C{i}", label=f"S = {S} model, a core per stage")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="micro-batches M (the batch of N rows cut into M)", ylabel="time per batch (ms)",
           title="One GPipe step on S processes (gloo send/recv), measured and modelled", ylim=(0, None))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_speedup(S_values, M: int, t_micro: float, alpha: float, beta: float, message_bytes: float,
                 widen=(0.25, 1, 4), measured: dict | None = None):
    """Speed-up against partitions (Dean et al.'s axes) from the alpha-beta model, for the measured
    model and models k times as wide (compute k^2 times, messages k times); ``measured``: {S: speed-up}."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    S_values = np.asarray(S_values)
    for i, k in enumerate(widen):
        curve = speedup_curve(S_values, M, t_micro * k * k, alpha, beta, message_bytes * k)
        label = "this MLP (calibrated)" if k == 1 else f"width x{k:g}: compute x{k * k:g}, bytes per message x{k:g}"
        ax.plot(S_values, curve, "-", color=f"C{i}", label=label)
    ax.plot(S_values, S_values * M / (M + S_values - 1), "k:", label="no communication: S M / (M+S-1)")
    if measured:
        ax.plot(list(measured), list(measured.values()), "ks", label="measured here (2 cores)")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="machines per model instance (partitions S)", ylabel="speed-up t(1) / t(S) (x)",
           title=f"Scaling with model parallelism (alpha-beta model, M = {M})", ylim=(0, None))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
