"""Figures, widgets and tables for lessons 06 (reduction topologies), 07 (ring
all-reduce) and 08 (data parallelism with DDP).

Every widget drives a plain function defined here and tested in
``tests/test_viz_distributed.py``; every figure has a title and labelled axes
with units. Symbols are those of ``course_lib``: N elements (the model's
parameters), P = ``world_size`` ranks.

lesson 06  ``plot_topologies``, ``cost_table`` (the rows of ``course_lib.distributed.cost.cost_rows``),
           ``cost_report`` / ``cost_explorer`` (sliders for N and P), ``plot_cost_vs_P``; real runs
           against the formulas are an experiment, ``course_lib.experiments.allreduce.measured_bytes``,
           shown by ``measured_bytes_table``
lesson 07  ``schedule_table``, ``ring_state_text``, ``chunk_colours``, ``plot_ring_step`` /
           ``plot_ring_steps`` / ``ring_stepper`` (the step slider),
           ``plot_duplex`` (the model is ``cost.duplex_timeline``), ``bandwidth_series`` / ``plot_bandwidth`` /
           ``bandwidth_table``
lesson 08  ``bucket_rows`` / ``bucket_table``, ``plot_ddp_losses``,
           ``overlap_table``, ``plot_overlap`` (a measured backward pass above the model's:
           the measurement is ``course_lib.experiments.ddp_overlap``)

Tables are DataFrames (``course_lib.viz.tables.table``): rich in JupyterLab, text
in a terminal; units in the headers. Widgets' reports (``*_report``) stay text.
"""

from __future__ import annotations

import html
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.ticker import FuncFormatter

from course_lib.distributed.cost import duplex_timeline, ps_bytes_at_server, ps_time, ring_bytes_per_rank, ring_time
from course_lib.viz import figure_png, print_initial
from course_lib.viz.tables import table

# A 1 GB/s link with 50 us latency: about what two processes see on one machine
# (gloo over loopback on the course machine: docs/benchmarks.md).
ALPHA_S, BETA_S_PER_BYTE = 50e-6, 1 / 1e9


def _byte_unit(n: float) -> tuple[str, int]:
    """The largest unit in which ``n`` bytes is at least 1: ("KiB", 1024) for 241 KiB."""
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= size:
            return unit, size
    return "B", 1


def _bytes(n: float) -> str:
    """A byte count for people: 240 B, 96.5 KiB, 1.5 MiB, 2.0 GiB."""
    unit, size = _byte_unit(n)
    return f"{n:.0f} B" if size == 1 else f"{n / size:.1f} {unit}"


# --------------------------------------------------------------------------
# Lesson 06: the cost of the two topologies
# --------------------------------------------------------------------------

def cost_table(rows: list[dict]) -> pd.DataFrame:
    """``cost.cost_rows`` as a table, one row per P, bytes to 0.1 of one unit for the whole table.

    The unit is the largest in which the smallest count is at least 1 (KiB for
    LeNet-5's gradients, MiB for ResNet-50's), so that the columns compare at a glance.
    """
    unit, size = _byte_unit(min((r["ring_per_rank"] for r in rows if r["ring_per_rank"] > 0), default=0))
    scaled = [dict(r, ps_server=r["ps_server"] / size, ring_per_rank=r["ring_per_rank"] / size) for r in rows]
    ps, ring, ratio = f"PS server, 2N(P-1) ({unit})", f"ring per rank, 2N(P-1)/P ({unit})", "ratio PS / ring"
    return table(scaled, {"P": "P", "ps_server": ps, "ring_per_rank": ring, "ratio": ratio},
                 digits={ps: 1, ring: 1, ratio: 2}, index="P")


def _per_rank(counts) -> str:
    """Counts per rank written as Python builds the list: [12012] + [4004] * 3."""
    runs = [(value, len(list(run))) for value, run in itertools.groupby(np.asarray(counts).tolist())]
    return " + ".join(f"[{value}]" + (f" * {n}" if n > 1 else "") for value, n in runs)


def measured_bytes_table(rows: list[dict]) -> pd.DataFrame:
    """``experiments.allreduce.measured_bytes`` as a table: bytes sent per rank, measured and from the formula.

    Each list of P counts is written as Python builds it (``[12012] + [4004] * 3``: rank 0
    sent 12012 bytes, the three others 4004 each), so that P = 8 still fits a column.
    """
    shown = [dict(r, measured=_per_rank(r["measured"]), formula=_per_rank(r["formula"]),
                  equal=bool(np.array_equal(r["measured"], r["formula"]))) for r in rows]
    return table(shown, {"N": "N", "P": "P", "algorithm": "algorithm", "measured": "bytes sent per rank (B)",
                         "formula": "formula (B)", "equal": "equal"})


def cost_report(N: int, P: int, itemsize: int = 4, alpha: float = ALPHA_S, beta: float = BETA_S_PER_BYTE) -> str:
    """The lecture's two formulas worked out for one N and P, bytes and alpha-beta times, as text."""
    nbytes = N * itemsize
    ps, ring = ps_bytes_at_server(N, P, itemsize), ring_bytes_per_rank(N, P, itemsize)
    t_ps, t_ring = ps_time(N, P, alpha, beta, itemsize), ring_time(N, P, alpha, beta, itemsize)
    return "\n".join([
        f"N = {N:,} elements of {itemsize} bytes ({_bytes(nbytes)}), P = {P} processes",
        f"parameter server: 2N(P-1)   = 2 * {N:,} * {P - 1} elements = {_bytes(ps)} through the server",
        f"ring all-reduce:  2N(P-1)/P = 2 * {N:,} * {P - 1}/{P} elements = {_bytes(ring.mean())} per rank"
        + ("" if ring.min() == ring.max() else f" (exactly {ring.min():,} to {ring.max():,} bytes: uneven chunks)"),
        f"ratio PS / ring = {ps / ring.mean() if ring.mean() else float('nan'):.2f} (= P)",
        f"alpha-beta time (alpha = {alpha * 1e6:.0f} us, 1/beta = {1 / beta / 1e9:.1f} GB/s): "
        f"PS {t_ps * 1e3:.3f} ms, ring {t_ring * 1e3:.3f} ms, ratio {t_ps / t_ring if t_ring else float('nan'):.2f}",
    ])


def cost_explorer(N: int = 61_706, P: int = 4, itemsize: int = 4):
    """Sliders for N (log scale) and P above a live ``cost_report``.

    Returns an ``ipywidgets.VBox`` with ``box.sliders`` ({"N", "P"}) and ``box.report``;
    the starting report is printed once so that the stored notebook shows it.
    """
    import ipywidgets as widgets

    sliders = {"N": widgets.FloatLogSlider(value=N, base=10, min=0, max=9, step=0.25, description="N",
                                           continuous_update=False),
               "P": widgets.IntSlider(value=P, min=2, max=64, description="P", continuous_update=False)}
    report = widgets.HTML()

    def update(_change=None):
        text = cost_report(int(round(sliders["N"].value)), sliders["P"].value, itemsize)
        report.value = f"<pre>{html.escape(text)}</pre>"

    for slider in sliders.values():
        slider.observe(update, names="value")
    update()
    box = widgets.VBox([*sliders.values(), report])
    box.sliders, box.report = sliders, report
    print_initial(cost_report(N, P, itemsize))
    return box


def plot_cost_vs_P(N: int = 25_557_032, P_max: int = 64, itemsize: int = 4,
                   alpha: float = ALPHA_S, beta: float = BETA_S_PER_BYTE, small_N: int = 1_000):
    """Left: bytes through the PS vs bytes per ring rank as P grows (N fixed).
    Right: modelled time ratio PS / ring for a large and a small message."""
    P = np.arange(2, P_max + 1)
    ps = np.array([ps_bytes_at_server(N, p, itemsize) for p in P]) / 2 ** 20
    ring = np.array([ring_bytes_per_rank(N, p, itemsize).mean() for p in P]) / 2 ** 20
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(P, ps, "o-", ms=3, label="parameter server: 2N(P-1), in + out at the server")
    left.plot(P, ring, "s-", ms=3, label="ring: 2N(P-1)/P sent per rank (as much received)")
    left.axhline(2 * N * itemsize / 2 ** 20, color="0.5", ls=":", lw=1, label="2N (the ring's limit)")
    left.set_yscale("log")
    left.set_xlabel("processes P")
    left.set_ylabel("communication cost (MiB, log scale)")
    left.set_title(f"Communication per reduction, N = {N:,} ({_bytes(N * itemsize)})")
    left.legend(fontsize=8)
    for n, style in ((N, "o-"), (small_N, "s--")):
        ratio = [ps_time(n, p, alpha, beta, itemsize) / ring_time(n, p, alpha, beta, itemsize) for p in P]
        right.plot(P, ratio, style, ms=3, label=f"N = {n:,} ({_bytes(n * itemsize)})")
    right.plot(P, P, color="0.5", ls=":", lw=1, label="ratio = P (bandwidth bound)")
    right.set_xlabel("processes P")
    right.set_ylabel("time PS / time ring (x)")
    right.set_title(f"alpha-beta model: alpha = {alpha * 1e6:.0f} us, {1 / beta / 1e9:.0f} GB/s")
    right.legend(fontsize=8)
    fig.suptitle("Parameter server vs ring all-reduce as P grows")
    fig.tight_layout()
    return fig


def plot_topologies(world_size: int = 4):
    """The lecture's two "reduction topologies" side by side, each arrow labelled with the
    elements it carries in one reduction of N elements.

    Left: a parameter server (rank 0) and P - 1 learners, N up and N down each.
    Right: a ring, each rank sending to its right neighbour 2(P-1) times N/P.
    """
    P = world_size
    if isinstance(P, bool) or not isinstance(P, int) or P < 2:
        raise ValueError(f"world_size must be an int >= 2, got {P!r}")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    angles = np.pi / 2 - 2 * np.pi * np.arange(P) / P                 # rank 0 at the top, clockwise
    ring_xy = np.stack([np.cos(angles), np.sin(angles)], axis=1)      # (P, 2)
    spokes = np.pi / 2 - 2 * np.pi * np.arange(P - 1) / (P - 1)       # the P - 1 learners around the PS
    learner_xy = np.stack([np.cos(spokes), np.sin(spokes)], axis=1)   # (P-1, 2)
    left.scatter([0], [0], s=1600, color="tab:red", zorder=3)
    left.text(0, 0, "PS\nrank 0", ha="center", va="center", color="white", fontsize=9, zorder=4)
    for i, (x, y) in enumerate(learner_xy, start=1):
        left.scatter([x], [y], s=900, color="tab:blue", zorder=3)
        left.text(x, y, f"rank {i}", ha="center", va="center", color="white", fontsize=8, zorder=4)
        left.annotate("", xy=(0.25 * x, 0.25 * y), xytext=(0.8 * x, 0.8 * y),
                      arrowprops=dict(arrowstyle="->", color="0.3", lw=1.5, connectionstyle="arc3,rad=0.15"))
        left.annotate("", xy=(0.8 * x, 0.8 * y), xytext=(0.25 * x, 0.25 * y),
                      arrowprops=dict(arrowstyle="->", color="tab:red", lw=1.5, connectionstyle="arc3,rad=0.15"))
        # label at 60% of the spoke, pushed sideways (perpendicular to it) clear of both arrows
        left.text(0.6 * x + 0.16 * y, 0.6 * y - 0.16 * x, "N", fontsize=9, ha="center", va="center")
    left.set_title(f"Parameter server: single reducer\n2N(P-1) = {2 * (P - 1)}N elements through rank 0")
    for r, (x, y) in enumerate(ring_xy):
        right.scatter([x], [y], s=900, color="tab:green", zorder=3)
        right.text(x, y, f"rank {r}", ha="center", va="center", color="white", fontsize=8, zorder=4)
        nx, ny = ring_xy[(r + 1) % P]
        right.annotate("", xy=(x + 0.8 * (nx - x), y + 0.8 * (ny - y)), xytext=(x + 0.2 * (nx - x), y + 0.2 * (ny - y)),
                       arrowprops=dict(arrowstyle="->", color="0.3", lw=1.5))
        right.text((x + nx) / 2 * 1.15, (y + ny) / 2 * 1.15, f"{2 * (P - 1)} x N/{P}", ha="center", fontsize=8)
    right.set_title(f"Ring: all are reducers\n2N(P-1)/P = {2 * (P - 1)}N/{P} elements sent per rank")
    for ax in (left, right):
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("arrows: messages of one reduction, labelled in elements")
        ax.set_ylabel(f"P = {P} processes")
    fig.suptitle("Reduction topologies (lecture 5, after Gibiansky 2017)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Lesson 07: the ring, step by step
# --------------------------------------------------------------------------

def schedule_table(schedule) -> pd.DataFrame:
    """A ``course_lib.distributed.schedule.ring_schedule`` as a table, one row per rank and step.

    Rank ``rank`` sends chunk ``sends chunk`` to its right neighbour ``to rank`` and
    receives chunk ``receives chunk`` from its left neighbour ``from rank``.
    """
    return table(schedule.rows(), {"phase": "phase", "step": "step", "rank": "rank", "send_chunk": "sends chunk",
                                   "dst": "to rank", "recv_chunk": "receives chunk", "src": "from rank"},
                 index="phase")


def chunk_colours(world_size: int):
    """A colour map with one colour per contribution count 1..P, and its norm."""
    base = plt.get_cmap("viridis")
    cmap = ListedColormap([base(v) for v in np.linspace(0.1, 0.95, world_size)])
    return cmap, BoundaryNorm(np.arange(0.5, world_size + 1.5), world_size)


def ring_state_text(trace, t: int) -> str:
    """State ``t`` of a ``RingTrace`` as text: what moved, and each rank's chunks as
    ``chunk:contributions`` (P means the chunk holds the full sum)."""
    T, P = trace.contributions.shape[:2]
    if not 0 <= t < T:
        raise ValueError(f"state t = {t} out of range: a ring of P = {P} has 2(P-1) + 1 = {T} states, 0 .. {T - 1}")
    lines = [f"state {t} of {T - 1}: {trace.labels[t]}"]
    if trace.transfers[t]:
        lines.append("moved: " + ", ".join(f"rank {s} -> rank {d}: chunk {c}" for s, d, c in trace.transfers[t]))
    for r in range(P):
        chunks = " ".join(f"{c}:{trace.contributions[t, r, c]}" for c in range(P))
        complete = [c for c in range(P) if trace.contributions[t, r, c] == P]
        lines.append(f"rank {r}  {chunks}   complete chunks: {complete if complete else 'none'}")
    return "\n".join(lines)


def plot_ring_step(trace, t: int, ax=None, values: bool | None = None):
    """Every rank's array at state ``t``: one row per rank, chunks coloured by how many
    ranks' contributions they hold (1 .. P), arrows for what moved into this state
    (dashed: from rank P-1 round to rank 0)."""
    T, P, _ = trace.contributions.shape
    N = trace.buffers.shape[2]
    if not 0 <= t < T:
        raise ValueError(f"state t = {t} out of range 0 .. {T - 1}")
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * N + 2), 0.7 * P + 1.6))
    cmap, norm = chunk_colours(P)
    counts = np.zeros((P, N))                                        # (P, N) colour of each element
    for c, (a, b) in enumerate(trace.bounds):
        counts[:, a:b] = trace.contributions[t, :, c][:, None]
    image = ax.imshow(counts, cmap=cmap, norm=norm, aspect="auto", extent=(0, N, P - 0.5, -0.5))
    for a, _ in trace.bounds[1:]:
        ax.axvline(a, color="white", lw=3)
    if values is None:                                              # write the numbers when they fit
        values = N <= 16
    if values:
        for r in range(P):
            for i in range(N):
                ax.text(i + 0.5, r, f"{trace.buffers[t, r, i]:g}", ha="center", va="center", fontsize=8,
                        color="white" if counts[r, i] < (P + 1) / 2 else "black")
    for src, dst, c in trace.transfers[t]:                        # dashed: rank P-1 -> rank 0, around the ring
        a, b = trace.bounds[c]
        ax.annotate("", xy=((a + b) / 2 + 0.15, dst), xytext=((a + b) / 2 - 0.15, src),
                    arrowprops=dict(arrowstyle="->", color="tab:red", lw=1.5, alpha=0.8,
                                    ls="--" if dst < src else "-"))
    ax.set_yticks(range(P))
    ax.set_yticklabels([f"rank {r}" for r in range(P)])
    ax.set_xlabel("element index (white lines: chunk boundaries)")
    ax.set_ylabel("rank")
    ax.set_title(f"{trace.labels[t]} (state {t} of {T - 1})")
    if own:
        fig.colorbar(image, ax=ax, ticks=range(1, P + 1), label="ranks summed into the chunk")
        fig.tight_layout()
        return fig
    return image


def plot_ring_steps(trace):
    """All 2(P-1) + 1 states of a ring all-reduce, one panel each (scatter-reduce, then allgather)."""
    T, P, _ = trace.contributions.shape
    N = trace.buffers.shape[2]
    fig, axes = plt.subplots(T, 1, figsize=(max(6, 0.5 * N + 2.5), (0.45 * P + 1.1) * T), squeeze=False,
                             sharex=True, layout="constrained")
    for t, ax in enumerate(axes[:, 0]):
        image = plot_ring_step(trace, t, ax=ax)
        if t < T - 1:
            ax.set_xlabel("")
    fig.colorbar(image, ax=axes[:, 0].tolist(), ticks=range(1, P + 1), label="ranks summed into the chunk",
                 shrink=0.5)
    fig.suptitle(f"Ring all-reduce of N = {N} elements on P = {P} ranks: every step")
    return fig


def ring_stepper(trace):
    """A slider over the states of ``trace`` (a ``RingTrace``) redrawing ``plot_ring_step``.

    Returns an ``ipywidgets.VBox`` with ``box.slider``, ``box.image`` (the PNG of the
    figure) and ``box.report`` (``ring_state_text``); the starting state is printed
    and drawn once, so that the stored notebook shows it.
    """
    import ipywidgets as widgets

    T = trace.contributions.shape[0]
    slider = widgets.IntSlider(value=0, min=0, max=T - 1, description="state", continuous_update=False)
    image, report = widgets.Image(format="png"), widgets.HTML()

    def update(_change=None):
        report.value = f"<pre>{html.escape(ring_state_text(trace, slider.value))}</pre>"
        image.value = figure_png(plot_ring_step(trace, slider.value))

    slider.observe(update, names="value")
    update()
    box = widgets.VBox([slider, image, report])
    box.slider, box.image, box.report = slider, image, report
    print_initial(ring_state_text(trace, 0))
    plot_ring_step(trace, 0)
    plt.show()
    return box


def plot_duplex(world_size: int = 4):
    """Gantt charts of one ring step, overlapped vs send-then-receive (``cost.duplex_timeline``)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * world_size + 1.8), sharey=True)
    for ax, mode in zip(axes, ("overlapped", "send-then-receive")):
        rows = duplex_timeline(world_size, mode)
        for r, kind, start, end in rows:
            y = r + (-0.18 if kind == "send" else 0.18)
            ax.barh(y, end - start, left=start, height=0.32,
                    color="tab:orange" if kind == "send" else "tab:blue",
                    label=kind if r == 0 else None)
        ax.set_xlim(0, 3.2)
        ax.set_xlabel("time (chunk transfer times: bytes of one chunk / bandwidth)")
        ax.set_title(f"{mode}: the step takes {max(end for *_, end in rows):g}")
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_yticks(range(world_size))
    axes[0].set_yticklabels([f"rank {r}" for r in range(world_size)])
    axes[0].set_ylabel("rank")
    axes[0].invert_yaxis()
    fig.suptitle(f"One ring step on P = {world_size}: send right while receiving from the left, or not")
    fig.tight_layout()
    return fig


def bandwidth_series(rows: list[dict], world_size: int) -> dict[str, dict[str, np.ndarray]]:
    """Rows of ``experiments.allreduce.sweep`` for one P, as {method: {"nbytes", "algbw", "busbw", "time",
    "time_q25", "time_q75"}} sorted by size (a row without quartiles uses its median for both)."""
    series = {}
    for method in dict.fromkeys(r["method"] for r in rows if r["P"] == world_size):
        mine = sorted((r for r in rows if r["P"] == world_size and r["method"] == method),
                      key=lambda r: r["nbytes"])
        series[method] = {k: np.array([r.get(k, r["time"]) for r in mine], dtype=np.float64)
                          for k in ("nbytes", "algbw", "busbw", "time", "time_q25", "time_q75")}
    return series


def bandwidth_table(rows: list[dict]) -> pd.DataFrame:
    """``experiments.allreduce.sweep`` as an nccl-tests-like table: size, P, method, time, algbw, busbw.

    Time in microseconds to 0.1 us, bandwidths in GB/s (1e9 bytes per second) to 1 MB/s.
    """
    shown = [dict(r, time=r["time"] * 1e6, algbw=r["algbw"] / 1e9, busbw=r["busbw"] / 1e9) for r in rows]
    return table(shown, {"nbytes": "size (B)", "P": "P", "method": "method", "time": "time (us)",
                         "algbw": "algbw (GB/s)", "busbw": "busbw (GB/s)"},
                 digits={"time (us)": 1, "algbw (GB/s)": 3, "busbw (GB/s)": 3})


def plot_bandwidth(rows: list[dict], world_size: int = 2):
    """Time per all-reduce (left) and busbw (right) against message size, one line per method.

    Points are medians, bars the interquartile range of ``sweep``'s samples: where two
    methods' bars overlap, which one is faster is noise. busbw = algbw * 2(P-1)/P, which
    is algbw itself at P = 2 (so one bandwidth panel, not two).
    """
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(11, 4))
    for method, s in bandwidth_series(rows, world_size).items():
        t, lo, hi = s["time"], s["time_q25"], s["time_q75"]
        ax_t.errorbar(s["nbytes"], 1e6 * t, yerr=[1e6 * (t - lo), 1e6 * (hi - t)], fmt="o-", capsize=3,
                      label=method)
        busbw = s["busbw"] / 1e9                                   # GB/s at the median time t
        ax_b.errorbar(s["nbytes"], busbw, yerr=[busbw * (1 - t / hi), busbw * (t / lo - 1)], fmt="o-",
                      capsize=3, label=method)                     # at the slow (q75) and fast (q25) ends
    same = " = algbw at P = 2" if world_size == 2 else ""
    ax_t.set(yscale="log", ylabel="time per all-reduce (us, log scale)",
             title="Time: median and interquartile range")
    ax_b.set(ylabel="bandwidth (GB/s)", title=f"busbw = algbw * 2(P-1)/P{same}")
    for ax in (ax_t, ax_b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("message size (bytes, log scale)")
        ax.legend(fontsize=8)
    fig.suptitle(f"All-reduce on P = {world_size} processes (bars: where half the samples fall)")
    fig.tight_layout()
    return fig


def plot_flat_vs_two_level(rows: list[dict], world_size: int, local_size: int):
    """Time of one all-reduce against message size: the flat ring and the two-level one, model and measured.

    rows : ``experiments.allreduce.flat_vs_two_level``'s rows for several sizes (method, nbytes,
    measured_s, model_s). Lines: the alpha-beta model; markers: the run on emulated links.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, colour in (("flat ring", "tab:orange"), ("two-level", "tab:blue")):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["nbytes"])
        kib = [r["nbytes"] / 1024 for r in mine]
        ax.plot(kib, [1e3 * r["model_s"] for r in mine], "-", color=colour, label=f"{method}: model")
        ax.plot(kib, [1e3 * r["measured_s"] for r in mine], "o--" if method == "flat ring" else "s--",
                color=colour, label=f"{method}: measured (emulated links)")
    ax.set(xscale="log", yscale="log", xlabel="message size (KiB, log scale)",
           ylabel="time per all-reduce (ms, log scale)",
           title=f"P = {world_size} in {world_size // local_size} nodes of {local_size}: "
                 f"a slow link between nodes")
    plain = FuncFormatter(lambda value, _: f"{value:g}")          # 20, not 2 x 10^1
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Lesson 08: DDP's buckets and the overlap of all-reduce with backprop
# --------------------------------------------------------------------------

def bucket_rows(events: list, sizes: dict[str, int]) -> list[dict]:
    """DDP's buckets from a ``course_lib.ddp.BackwardLog``: index, parameters, elements.

    sizes : {parameter name: number of elements}
    """
    rows = []
    for e in events:
        if e[0] == "allreduce":
            rows.append({"bucket": e[1], "params": list(e[2]), "elements": sum(sizes[n] for n in e[2])})
    return sorted(rows, key=lambda r: r["bucket"])


def bucket_table(rows: list[dict], itemsize: int = 4) -> pd.DataFrame:
    """``bucket_rows`` as a table, with the gradients' size in KiB (``itemsize`` bytes per element)."""
    shown = [dict(r, kib=itemsize * r["elements"] / 2 ** 10, params=", ".join(r["params"])) for r in rows]
    return table(shown, {"bucket": "bucket", "elements": "elements", "kib": "gradients (KiB)",
                         "params": "parameters (in the order DDP adds them)"},
                 digits={"gradients (KiB)": 1}, index="bucket")


def overlap_table(rows: list[dict]) -> pd.DataFrame:
    """``experiments.ddp_overlap.pass_rows`` as a table, one row per logged pass, times in ms to 0.1:
    the slowest rank's last gradient, the last rank's return, exposed = the difference, the ranks'
    skew, whether the overlap held, and the slowest rank's backprop alone (no_sync)."""
    ms = ("backprop", "returned", "exposed", "skew", "compute")
    shown = [dict(r, **{k: 1e3 * r[k] for k in ms}) for r in rows]
    columns = {"pass": "pass", "backprop": "last gradient (ms)", "returned": "backward() returned (ms)",
               "exposed": "exposed (ms)", "skew": "rank skew (ms)", "held": "overlap held",
               "compute": "no_sync alone (ms)"}
    return table(shown, columns, digits={columns[k]: 1 for k in ms}, index="pass")


def _draw_timeline(ax, timelines: list, labels: list[str], lines: tuple[str, str, str]) -> None:
    """``scaling.Timeline``s of one pass (one per rank) on one axis, in ms: a row per layer (its
    backprop, one thin bar per rank, backprop order top to bottom), then a row with the first
    timeline's all-reduces, numbered by bucket and staggered so that overlapping bars stay apart.
    ``lines``: legend labels of the all-reduce bars, the last gradient and the end."""
    layers, R = [name for name, _, _ in timelines[0].backward], len(timelines)
    blues = plt.get_cmap("Blues")
    for r, (tl, label) in enumerate(zip(timelines, labels)):
        for row, (_, start, end) in enumerate(tl.backward):
            ax.broken_barh([(1e3 * start, 1e3 * (end - start))], (row - 0.4 + 0.8 * r / R, 0.8 / R),
                           color=blues(0.75 - 0.35 * r), label=label if row == 0 else None)
    colours, row = plt.get_cmap("tab10"), len(layers)
    for b, (_, start, end) in enumerate(timelines[0].allreduce):
        y = row - 0.4 + 0.4 * (b % 2)                                 # even buckets above, odd below
        ax.broken_barh([(1e3 * start, 1e3 * (end - start))], (y, 0.4), color=colours((b + 1) % 10),
                       edgecolor="black", linewidth=0.5, label=lines[0] if b == 0 else None)
        ax.text(1e3 * start, y + 0.2, f"{b} ", ha="right", va="center", fontsize=8)
    backprop_end = max(tl.backward[-1][2] for tl in timelines)
    total = max(tl.total for tl in timelines)
    ax.axvline(1e3 * backprop_end, color="0.3", ls="--", lw=1, label=f"{lines[1]}: {1e3 * backprop_end:.1f} ms")
    ax.axvline(1e3 * total, color="tab:red", ls=":", lw=1.5, label=f"{lines[2]}: {1e3 * total:.1f} ms")
    ax.set_yticks(range(row + 1), [f"{name} backprop" for name in layers] + ["all-reduce\n(bucket no.)"])
    ax.set_ylim(row + 0.6, -0.6)                                     # first layer of backprop on top
    ax.set_ylabel("layer (backprop order)")
    ax.legend(fontsize=8, loc="upper right")


def plot_overlap(measured: list, modelled, measured_title: str = "Measured", modelled_title: str = "Model",
                 suptitle: str = "DDP: the all-reduce of each bucket while backprop continues"):
    """A measured backward pass above the lecture's model of it, on one time axis (ms).

    measured : one pass's ``scaling.Timeline`` on each rank, on one clock (rank 0's backward()
    starts at 0), e.g. ``experiments.ddp_overlap.measured_timeline`` of each rank's log;
    modelled : the model's ``Timeline`` of the same pass (``modelled_timeline``), from t = 0.
    Each panel: every layer's backprop, each bucket's all-reduce (rank 0's, measured), when the
    last gradient was ready (dashed) and when backward() returned (dotted), the latest rank's.
    """
    rows = 2 * len(modelled.backward) + 4
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 0.45 * rows + 2.2), sharex=True)
    _draw_timeline(top, measured, [f"rank {r} backprop" for r in range(len(measured))],
                   ("all-reduce (rank 0)", "last gradient, slower rank", "backward() returned, both ranks"))
    _draw_timeline(bottom, [modelled], ["backprop (every rank)"],
                   ("all-reduce", "last gradient", "backward() returns"))
    top.set_title(measured_title, fontsize=10)
    bottom.set_title(modelled_title, fontsize=10)
    for ax in (top, bottom):
        ax.set_xlabel("time since backward() started (ms)")
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_ddp_losses(single_losses, ddp_losses: dict, world_size: int | None = None):
    """Training loss per step: single process vs each DDP rank's global-batch loss."""
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(single_losses) + 1)
    ax.plot(steps, single_losses, "-", lw=4, alpha=0.4, label="single process, whole batch")
    for name, losses in ddp_losses.items():
        ax.plot(steps, losses, "--", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("mean cross-entropy over the global batch (nats)")
    P = len(ddp_losses) if world_size is None else world_size          # default: one curve per rank
    ax.set_title(f"LeNet-5 on the digits: DDP over P = {P} processes vs one process")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
