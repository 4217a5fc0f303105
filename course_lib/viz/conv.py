"""Figures and widgets for lessons 01 (convolution) and 02 (im2col).

Every widget drives a plain function defined here and tested in
``tests/test_viz_conv.py``; every figure has a title and labelled axes with
units. Reading order follows the lessons:

lesson 01  ``output_size_report`` / ``output_size_explorer`` (the sliders),
           ``plot_padding``, ``plot_receptive_field`` (what it draws is
           ``course_lib.conv.receptive_field_1d``)
lesson 02  ``im2col_index_map`` / ``im2col_copies`` / ``pixel_colours`` / ``plot_im2col``;
           the tables and figures of ``course_lib.experiments.conv_costs``'s rows:
           ``memory_table`` / ``plot_im2col_memory`` (the KH*KW blow-up),
           ``im2col_gemm_table`` / ``plot_im2col_gemm`` (the copy and the GEMM
           against PyTorch's whole convolution), ``timings_table`` / ``plot_timings``

Symbols are those of ``course_lib`` (N, C, H, W, K, KH, KW, S, P, H_out, W_out, L).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from course_lib.conv import conv_geometry, conv_output_size, conv_param_count, im2col, receptive_field_1d
from course_lib.experiments.conv_costs import IMPLEMENTATIONS
from course_lib.viz import print_initial
from course_lib.viz.tables import table


# --------------------------------------------------------------------------
# Lesson 01: the output-size formula and its sliders
# --------------------------------------------------------------------------

def output_size_report(W: int, F: int, P: int = 0, S: int = 1, D1: int = 3, K: int = 8) -> str:
    """What the slide's formulas give for one layer, as text (the sliders show this).

    ``W2 = (W1 - F + 2P)/S + 1`` and ``(F*F*D1)*K`` weights plus ``K`` biases
    (lecture 5, "Convolution Summary"). When the formula does not give a
    positive integer, the report shows ``conv_output_size``'s ValueError
    message and what PyTorch would do instead (round down), never hides it.
    """
    params = conv_param_count(F, D1, K)
    lines = [f"input volume   {W} x {W} x {D1}   (W1 x H1 x D1)",
             f"filters        K = {K} of size {F} x {F} x {D1}, stride S = {S}, padding P = {P}"]
    try:
        W2 = conv_output_size(W, F, P, S)
    except ValueError as err:
        lines.append(f"ValueError: {err}")
        if F <= W + 2 * P:
            floor = conv_output_size(W, F, P, S, floor=True)
            lines.append(f"(F.conv2d would round down to {floor} x {floor} x {K})")
    else:
        lines.append(f"W2 = (W - F + 2P)/S + 1 = ({W} - {F} + 2*{P})/{S} + 1 = {W2}")
        lines.append(f"output volume  {W2} x {W2} x {K}   (W2 x H2 x D2, D2 = K)")
    lines.append(f"parameters     (F*F*D1)*K = ({F}*{F}*{D1})*{K} = {params.weights} weights "
                 f"+ {params.biases} biases = {params.total}")
    return "\n".join(lines)


def output_size_explorer(W: int = 7, F: int = 3, P: int = 0, S: int = 1, D1: int = 3, K: int = 8):
    """Sliders for W, F, P, S (and D1, K) above a live ``output_size_report``.

    Returns an ``ipywidgets.VBox``; ``box.sliders`` maps each name to its
    slider and ``box.report`` is the HTML widget that shows the text. The
    initial report is printed once, so a stored notebook shows it too.
    """
    import html

    import ipywidgets as widgets

    ranges = {"W": (W, 1, 64), "F": (F, 1, 11), "P": (P, 0, 5), "S": (S, 1, 5),
              "D1": (D1, 1, 64), "K": (K, 1, 64)}
    sliders = {name: widgets.IntSlider(value=value, min=low, max=high, description=name,
                                       continuous_update=True)
               for name, (value, low, high) in ranges.items()}
    report = widgets.HTML()

    def update(_change=None):
        text = output_size_report(**{name: s.value for name, s in sliders.items()})
        report.value = f"<pre>{html.escape(text)}</pre>"

    for slider in sliders.values():
        slider.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox(list(sliders.values())[:3]),
                        widgets.HBox(list(sliders.values())[3:]), report])
    box.sliders, box.report = sliders, report
    print_initial(output_size_report(W, F, P, S, D1, K))
    return box


# --------------------------------------------------------------------------
# Lesson 01: padding and the receptive field
# --------------------------------------------------------------------------

def _draw_grid(ax, values: np.ndarray, highlight: np.ndarray, title: str) -> None:
    """A 2-D array as annotated squares; ``highlight`` (bool) cells are drawn coloured."""
    shade = np.where(highlight, 1.0, 0.15)
    ax.imshow(shade, cmap="Blues", vmin=0, vmax=1.6)
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    ax.set_title(title)
    ax.set_xlabel("column j (pixel)")
    ax.set_ylabel("row i (pixel)")


def plot_padding(x: np.ndarray, xp: np.ndarray):
    """The lecture's padding example: the input (H, W) beside the padded (H+2P, W+2P).

    ``x`` and ``xp`` are 2-D; the zeros that padding added are left pale.
    """
    PH, PW = (xp.shape[0] - x.shape[0]) // 2, (xp.shape[1] - x.shape[1]) // 2
    inside = np.zeros(xp.shape, dtype=bool)
    inside[PH:PH + x.shape[0], PW:PW + x.shape[1]] = True
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.6),
                                      gridspec_kw={"width_ratios": [x.shape[1], xp.shape[1]]})
    _draw_grid(left, x, np.ones(x.shape, dtype=bool), f"input, {x.shape[0]} x {x.shape[1]}")
    _draw_grid(right, xp, inside, f"padded with P = {PH}: {xp.shape[0]} x {xp.shape[1]}")
    fig.suptitle("Zero padding adds P rows/columns on each side: W + 2P")
    fig.tight_layout()
    return fig


def plot_receptive_field(n_inputs: int = 11, F: int = 3, S: int = 1, n_layers: int = 3):
    """Sparse connectivity and the growing receptive field, in one dimension.

    Grey lines: every connection (each neuron sees only F neighbours below).
    Orange: the neurons one top neuron depends on, down to the input pixels
    (``course_lib.conv.receptive_field_1d``).
    """
    cone = receptive_field_1d(n_inputs, F, S, n_layers)
    positions = [np.arange(n_inputs, dtype=float)]
    for _ in range(n_layers):  # draw each neuron above the middle of its window
        below = positions[-1]
        width = conv_output_size(len(below), F, 0, S, floor=True)
        positions.append(np.array([below[j * S:j * S + F].mean() for j in range(width)]))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 1.1 * n_layers))
    for q in range(1, n_layers + 1):
        for j, x in enumerate(positions[q]):
            for u in range(F):
                on = j in cone[q] and j * S + u in cone[q - 1]
                ax.plot([positions[q - 1][j * S + u], x], [q - 1, q], zorder=1,
                        color="tab:orange" if on else "0.8", lw=2 if on else 1)
    for q, xs in enumerate(positions):
        colours = ["tab:orange" if j in cone[q] else "white" for j in range(len(xs))]
        ax.scatter(xs, np.full(len(xs), q), s=180, c=colours, edgecolors="k", zorder=2)
    ax.set_yticks(range(n_layers + 1), ["input"] + [f"layer {q}" for q in range(1, n_layers + 1)])
    ax.set_xlabel("position along the image (input pixel)")
    ax.set_ylabel("layer q")
    ax.set_title(f"{n_layers} layers of F = {F}, S = {S}: one neuron sees "
                 f"{len(cone[0])} input pixels (receptive field)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Lesson 02: which pixel lands where in the im2col matrix
# --------------------------------------------------------------------------

def im2col_index_map(H: int, W: int, KH: int, KW: int, stride=1, padding=0) -> np.ndarray:
    """For one single-channel H x W image: which input pixel each im2col entry holds.

    Returns an int array of shape (KH*KW, L), the shape of ``im2col``'s matrix
    for one image; entry [u*KW + v, i*W_out + j] is the row-major pixel index
    ``row*W + col`` that window (i, j) reads at kernel offset (u, v), or -1
    where the window lies on padding.
    """
    pixel_ids = np.arange(H * W, dtype=np.float64).reshape(1, 1, H, W) + 1  # 0 is left for padding
    cols = im2col(pixel_ids, (KH, KW), stride, padding)                     # (1, KH*KW, L)
    return cols[0].astype(np.int64) - 1


def im2col_copies(H: int, W: int, KH: int, KW: int, stride=1, padding=0) -> np.ndarray:
    """How many times each pixel of an H x W image is copied into the im2col matrix.

    Returns an int array of shape (H, W): the number of windows that cover each
    pixel (what ``col2im(im2col(ones))`` adds up). At most ``KH*KW``; a stride
    larger than 1 skips windows, so the maximum can be smaller.
    """
    index = im2col_index_map(H, W, KH, KW, stride, padding)
    return np.bincount(index[index >= 0], minlength=H * W).reshape(H, W)


def pixel_colours(n: int) -> np.ndarray:
    """``n`` distinct light RGB colours, shape (n, 3), pixel ``i`` -> row ``i``.

    Evenly spaced along the ``turbo`` colour map (so no two pixels share a
    colour, unlike a 20-colour qualitative map), mixed with white so that black
    numbers printed on them stay readable: 35% for even ``i``, 60% for odd
    ``i``, so that neighbours along a row also differ in lightness. None is
    grey, the colour ``plot_im2col`` keeps for padding.
    """
    base = plt.get_cmap("turbo")(np.linspace(0.05, 0.95, max(n, 1)))[:n, :3]
    white = np.where(np.arange(n) % 2 == 0, 0.35, 0.6)[:, None]
    return (1 - white) * base + white


def plot_im2col(H: int = 4, W: int = 4, KH: int = 2, KW: int = 2, stride=1, padding=0):
    """The input pixels (left) and the im2col matrix (right), in matching colours.

    Each pixel gets its own colour and its index; the matrix shows where each
    copy of it went: one row per kernel offset (u, v), one column per window (i, j).
    The title gives the largest number of copies of one pixel (``im2col_copies``).
    """
    index = im2col_index_map(H, W, KH, KW, stride, padding)      # (KH*KW, L)
    _, _, (H_out, W_out) = conv_geometry(np.empty((1, 1, H, W)), KH, KW, stride, padding)
    most_copies = int(im2col_copies(H, W, KH, KW, stride, padding).max())
    colours = pixel_colours(H * W)
    to_rgb = lambda ids: np.where(ids[..., None] >= 0, colours[np.maximum(ids, 0)], 0.92)
    pixels = np.arange(H * W).reshape(H, W)
    fig, (left, right) = plt.subplots(1, 2, figsize=(4 + 0.45 * index.shape[1], 4),
                                      gridspec_kw={"width_ratios": [W, index.shape[1]]})
    for ax, ids in ((left, pixels), (right, index)):
        ax.imshow(to_rgb(ids))
        for (r, c), v in np.ndenumerate(ids):
            ax.text(c, r, "pad" if v < 0 else str(v), ha="center", va="center", fontsize=7)
    left.set_title(f"input {H} x {W} (pixel index)")
    left.set_xlabel("column (pixel)")
    left.set_ylabel("row (pixel)")
    right.set_title(f"im2col matrix ({KH}*{KW} rows x L = {H_out}*{W_out} windows)")
    right.set_xticks(range(index.shape[1]), [f"{i},{j}" for i in range(H_out) for j in range(W_out)],
                     rotation=90, fontsize=7)
    right.set_yticks(range(KH * KW), [f"{u},{v}" for u in range(KH) for v in range(KW)], fontsize=7)
    right.set_xlabel("column = window position (i, j) of the output")
    right.set_ylabel("row = kernel offset (u, v)")
    bound = " (= KH*KW, the bound)" if most_copies == KH * KW else f" (the bound is KH*KW = {KH * KW})"
    fig.suptitle(f"im2col: each window becomes a column\n"
                 f"here a pixel is copied at most {most_copies} times{bound}")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Lesson 02: the KH*KW memory blow-up and the timings (measured by experiments.conv_costs)
# --------------------------------------------------------------------------

def memory_table(rows: list[dict]):
    """``conv_costs.im2col_memory``'s rows as a table: one row per layer, sizes in MiB.

    Columns: input (MiB), cols (MiB), cols / input, and the bound KH*KW / S^2
    that the ratio reaches with "same" padding.
    """
    return table([{"layer": r["layer"], "input": r["input_bytes"] / 2**20, "cols": r["cols_bytes"] / 2**20,
                   "ratio": r["ratio"], "bound": r["kernel_area"] / r["stride"] ** 2} for r in rows],
                 {"layer": "layer", "input": "input (MiB)", "cols": "cols (MiB)", "ratio": "cols / input",
                  "bound": "KH*KW / S^2"}, digits={"input (MiB)": 1, "cols (MiB)": 1, "cols / input": 2,
                                                 "KH*KW / S^2": 2}, index="layer")


def plot_im2col_memory(rows: list[dict]):
    """Input bytes vs im2col bytes per layer (``conv_costs.im2col_memory``'s rows), a log-scale bar chart (MiB)."""
    names = [r["layer"] for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    ax.barh(y - 0.2, [r["input_bytes"] / 2**20 for r in rows], 0.4, label="input x")
    ax.barh(y + 0.2, [r["cols_bytes"] / 2**20 for r in rows], 0.4, label="im2col matrix")
    for yi, r in zip(y, rows):
        ax.text(r["cols_bytes"] / 2**20, yi + 0.2, f"  {r['ratio']:.1f}x", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(r["cols_bytes"] for r in rows) / 2**20 * 30)  # room for the labels
    sizes = sorted({r["itemsize"] for r in rows})
    dtypes = ", ".join({2: "float16", 4: "float32", 8: "float64"}.get(s, f"{s}-byte numbers") for s in sizes)
    ax.set_xlabel(f"memory, {dtypes} (MiB, log scale)")
    batches = sorted({r["N"] for r in rows})
    ax.set_ylabel(f"layer (batch N = {', '.join(map(str, batches))})")
    ax.set_title("im2col copies each pixel up to KH*KW times")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def im2col_gemm_table(rows: list[dict]):
    """``conv_costs.im2col_gemm_timings``' rows as a table: one row per layer.

    The cost model beside the times: the bytes the copy writes (cols, MiB) and
    the GEMM's flops (GFLOP, 2*K*C*KH*KW*N*L), then each step's median time and
    the rate it reached (the copy in GB written per second, the GEMM and
    ``F.conv2d``, which do the same flops, in GFLOP per second).
    """
    return table([{"layer": r["layer"], "cols": r["cols_bytes"] / 2**20, "gflop": r["flops"] / 1e9,
                   "copy": r["copy_s"] * 1e3, "copy_rate": r["cols_bytes"] / r["copy_s"] / 1e9,
                   "gemm": r["gemm_s"] * 1e3, "gemm_rate": r["flops"] / r["gemm_s"] / 1e9,
                   "torch": r["torch_s"] * 1e3, "torch_rate": r["flops"] / r["torch_s"] / 1e9} for r in rows],
                 {"layer": "layer", "cols": "cols (MiB)", "gflop": "GEMM (GFLOP)", "copy": "copy (ms)",
                  "copy_rate": "copy (GB/s)", "gemm": "GEMM (ms)", "gemm_rate": "GEMM (GFLOP/s)",
                  "torch": "F.conv2d (ms)", "torch_rate": "F.conv2d (GFLOP/s)"},
                 digits={"cols (MiB)": 1, "GEMM (GFLOP)": 3, "copy (ms)": 2, "copy (GB/s)": 1, "GEMM (ms)": 2,
                         "GEMM (GFLOP/s)": 1, "F.conv2d (ms)": 2, "F.conv2d (GFLOP/s)": 1}, index="layer")


def plot_im2col_gemm(rows: list[dict]):
    """One panel per layer: numpy's im2col convolution, its GEMM with the copy stacked on
    top, beside PyTorch's whole ``F.conv2d`` (ms per call, linear scale; the dashed line
    carries PyTorch's time across to the GEMM).

    rows : ``course_lib.experiments.conv_costs.im2col_gemm_timings``'
    """
    fig, axes = plt.subplots(1, len(rows), figsize=(3.3 * len(rows), 4.4), squeeze=False)
    for ax, r in zip(axes[0], rows):
        copy_ms, gemm_ms, torch_ms = (r[key] * 1e3 for key in ("copy_s", "gemm_s", "torch_s"))
        parts = [(0, gemm_ms, 0, "numpy GEMM", "tab:blue"), (0, copy_ms, gemm_ms, "im2col copy", "tab:orange"),
                 (1, torch_ms, 0, "PyTorch F.conv2d", "tab:green")]
        top = 1.1 * max(copy_ms + gemm_ms, torch_ms)
        for x, height, bottom, label, colour in parts:
            ax.bar(x, height, 0.6, bottom=bottom, color=colour, label=label)
            inside = height > 0.08 * top       # a thin segment is labelled beside its bar
            ax.text(x if inside else x + 0.32, bottom + height / 2, f"{height:.2f} ms",
                    ha="center" if inside else "left", va="center", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1})
        ax.axhline(torch_ms, color="tab:green", ls="--", lw=1)
        ax.set_xticks([0, 1], ["numpy:\nim2col + GEMM", "PyTorch:\nF.conv2d"])
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylim(0, top)
        ax.set_title(f"{r['layer']}\n(copy + GEMM = {(copy_ms + gemm_ms) / torch_ms:.2g}x F.conv2d)", fontsize=9)
        ax.set_xlabel(f"batch N = {r['N']}, float32, CPU")
        ax.set_ylabel("time per call (ms)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("An im2col convolution in numpy, step by step, against PyTorch's whole convolution\n"
                 "(median time per call after warm-up)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def timings_table(rows: list[dict], baseline: str = "PyTorch CPU"):
    """``conv_costs.conv_timings``' rows as a table: one row per case.

    For each implementation timed: ms per call, and its time / ``baseline``'s
    (lower is faster). NaN where it was skipped on that case (``conv2d_naive``
    on a large layer); an implementation timed on no case (PyTorch GPU without
    a GPU) gets no column.
    """
    cases = list(dict.fromkeys(r["case"] for r in rows))
    seconds = {(r["case"], r["implementation"]): r["seconds"] for r in rows}
    impls = [i for i in IMPLEMENTATIONS if any(not math.isnan(seconds.get((c, i), math.nan)) for c in cases)]
    others = [i for i in impls if i != baseline]
    columns = {"case": "case", **{i: f"{i} (ms)" for i in impls},
               **{i + " ratio": f"{i} / {baseline}" for i in others}}
    table_rows = [{"case": c, **{i: 1e3 * seconds.get((c, i), math.nan) for i in impls},
                   **{i + " ratio": seconds.get((c, i), math.nan) / seconds[(c, baseline)] for i in others}}
                  for c in cases]
    return table(table_rows, columns, digits=2, index="case")


def plot_timings(rows: list[dict]):
    """Grouped bars: time per forward call of each implementation, per case (log scale).

    rows : ``course_lib.experiments.conv_costs.conv_timings``'s
    """
    cases = list(dict.fromkeys(r["case"] for r in rows))
    impls = [i for i in IMPLEMENTATIONS
             if any(r["implementation"] == i and not math.isnan(r["seconds"]) for r in rows)]
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for k, impl in enumerate(impls):
        ms = [next(r["seconds"] for r in rows if r["case"] == c and r["implementation"] == impl) * 1e3
              for c in cases]
        xs = np.arange(len(cases)) + (k - (len(impls) - 1) / 2) * width
        ax.bar(xs, ms, width, label=impl)
        for xk, value in zip(xs, ms):
            if math.isnan(value):  # not timed (the naive loops on a large layer)
                ax.text(xk, 0.03, "skipped", rotation=90, ha="center", va="bottom",
                        fontsize=7, transform=ax.get_xaxis_transform())
    ax.set_xticks(range(len(cases)), [c.replace(" (", "\n(", 1) for c in cases])  # shape on a line of its own
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 30)  # headroom for the legend
    ax.set_xlabel("layer (input shape N,C,H,W)")
    ax.set_ylabel("time per forward call (ms, log scale)")
    ax.set_title("Convolution forward: from loops to one GEMM (median of repeats, after warm-up)")
    ax.legend(fontsize=8, ncol=len(impls), loc="upper center")
    fig.tight_layout()
    return fig
