"""Figures and widgets for lesson 03 (max pooling).

Every widget drives a plain function defined here and tested in
``tests/test_pooling.py``; every figure has a title and labelled axes.

Reading order: ``pooling_report`` / ``pooling_explorer`` (the sliders),
``plot_pooling_regions`` (which window each output reads),
``plot_next_layer_params`` (subsampling and the parameters of the layer after
it: the rows of ``course_lib.pooling.next_layer_params``), ``plot_gradient_routing`` (backward).
"""

from __future__ import annotations

import html

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from course_lib.pooling import max_pool2d, max_pool2d_backward, pool_output_shape
from course_lib.viz import print_initial


def pooling_report(x: np.ndarray, kernel_size: int, stride: int, C: int = 6,
                   next_units: int = 84) -> str:
    """What max pooling does to the 2-D map ``x`` and to a C-deep volume of its size, as text.

    Shows the output size ``(W - F)/S + 1`` (floored), the pooled values and,
    for ``C`` maps of ``x``'s size stacked into a volume (default 6, the depth
    of LeNet-5's C1 output), the share of activations kept and the weights a
    fully connected layer of ``next_units`` units would need after the pooling
    versus without it.
    Bad hyper-parameters give the library's ValueError message, not a crash.
    """
    H, W = x.shape
    try:
        _, _, _, (H_out, W_out) = pool_output_shape(x.shape, kernel_size, stride)
    except ValueError as err:
        return f"ValueError: {err}"
    pooled = max_pool2d(x[None, None].astype(np.float64), kernel_size, stride)[0, 0]
    before, after = C * H * W, C * H_out * W_out
    rows = "\n".join("  " + " ".join(f"{v:3g}" for v in row) for row in pooled)
    return "\n".join([
        f"pool {kernel_size}x{kernel_size}, stride {stride}: "
        f"W_out = (W - F)/S + 1 = ({W} - {kernel_size})//{stride} + 1 = {W_out}, H_out = {H_out}",
        f"pooled map ({H_out} x {W_out}):", rows,
        f"stack C = {C} such maps (a {H} x {W} x {C} volume): it becomes {H_out} x {W_out} x {C}, "
        f"depth kept, {after} of {before} activations ({after / before:.0%})",
        f"a fully connected layer of {next_units} units after it needs {after * next_units:,} "
        f"weights instead of {before * next_units:,}",
    ])


def pooling_explorer(x: np.ndarray, kernel_size: int = 2, stride: int = 2):
    """Sliders for pool size and stride above a live ``pooling_report`` of ``x``.

    Returns an ``ipywidgets.VBox`` with ``box.sliders`` (``"kernel_size"``,
    ``"stride"``) and ``box.report`` (an HTML widget). The starting report is
    printed once so that the stored notebook shows it.
    """
    import ipywidgets as widgets

    sliders = {"kernel_size": widgets.IntSlider(value=kernel_size, min=1, max=min(x.shape),
                                                description="pool size", continuous_update=False),
               "stride": widgets.IntSlider(value=stride, min=1, max=min(x.shape),
                                           description="stride", continuous_update=False)}
    report = widgets.HTML()

    def update(_change=None):
        text = pooling_report(x, sliders["kernel_size"].value, sliders["stride"].value)
        report.value = f"<pre>{html.escape(text)}</pre>"

    for slider in sliders.values():
        slider.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox(list(sliders.values())), report])
    box.sliders, box.report = sliders, report
    print_initial(pooling_report(x, kernel_size, stride))
    return box


def _grid(ax, values, title, shade=None, fmt="{:g}", cmap="Blues"):
    shade = np.zeros(values.shape) if shade is None else shade
    ax.imshow(shade, cmap=cmap, vmin=0, vmax=max(1.0, float(np.max(shade)) * 1.3))
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    ax.set_xlabel("column j (pixel)")
    ax.set_ylabel("row i (pixel)")
    ax.set_title(title, fontsize=10)


def winners_2d(x: np.ndarray, kernel_size: int, stride: int) -> np.ndarray:
    """Boolean (H, W) mask of the inputs that win at least one window (ties: first in row-major order)."""
    x4 = x[None, None].astype(np.float64)
    out = max_pool2d(x4, kernel_size, stride)
    return max_pool2d_backward(np.ones_like(out), x4, kernel_size, stride)[0, 0] > 0


def plot_pooling_regions(x: np.ndarray, kernel_size: int = 2, stride: int = 2):
    """The input map with every pooling window outlined (left) and the pooled map (right).

    Winners (the max of some window) are shaded; windows of different output
    positions get different colours, so overlaps (stride < pool size) show.
    """
    out = max_pool2d(x[None, None].astype(np.float64), kernel_size, stride)[0, 0]
    H_out, W_out = out.shape
    colours = plt.get_cmap("tab10")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.6),
                                      gridspec_kw={"width_ratios": [x.shape[1], max(W_out, 3)]})
    _grid(left, x, f"input {x.shape[0]} x {x.shape[1]}, windows {kernel_size}x{kernel_size} "
          f"stride {stride}", shade=winners_2d(x, kernel_size, stride).astype(float))
    for i in range(H_out):
        for j in range(W_out):
            inset = 0.08 * ((i + j) % 3)
            left.add_patch(Rectangle((j * stride - 0.5 + inset, i * stride - 0.5 + inset),
                                     kernel_size - 2 * inset, kernel_size - 2 * inset, fill=False,
                                     lw=2, edgecolor=colours((i * W_out + j) % 10)))
            right.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=3,
                                      edgecolor=colours((i * W_out + j) % 10)))
    _grid(right, out, f"max pooled {H_out} x {W_out}", shade=np.full(out.shape, 0.5))
    right.set_xlabel("output column")
    right.set_ylabel("output row")
    fig.suptitle("Max pooling: each output is the maximum of its window (shaded: the winners)")
    fig.tight_layout()
    return fig


def plot_next_layer_params(rows: list[dict], H: int, C: int, next_units: int = 84):
    """Bar chart of ``course_lib.pooling.next_layer_params``' rows: parameters after each pool size (log scale)."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = [f"{r['pool']}x{r['pool']}\n-> {r['output'][1]}x{r['output'][2]}x{r['output'][0]}"
              for r in rows]
    bars = ax.bar(labels, [r["weights"] for r in rows], color="tab:blue")
    for bar, r in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, r["weights"], f"{r['weights']:,}",
                ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(top=max(r["weights"] for r in rows) * 5)
    ax.set_xlabel("pool size (stride = pool size) and the pooled volume")
    ax.set_ylabel("weights of the next layer (count, log scale)")
    ax.set_title(f"Pooling a {H}x{H}x{C} volume before a {next_units}-unit fully connected layer")
    fig.tight_layout()
    return fig


def plot_gradient_routing(x: np.ndarray, dout: np.ndarray, kernel_size: int = 2, stride: int = 2):
    """Backward pass: the upstream gradient (middle) goes to each window's winner (right).

    Left: the input with winners shaded. Middle: dL/dout. Right: dL/dx, zero
    except at the winners; where overlapping windows share a winner its
    gradients add up.
    """
    x4 = x[None, None].astype(np.float64)
    dx = max_pool2d_backward(dout[None, None].astype(np.float64), x4, kernel_size, stride)[0, 0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4),
                             gridspec_kw={"width_ratios": [x.shape[1], max(dout.shape[1], 3), x.shape[1]]})
    _grid(axes[0], x, "forward input x (shaded: winners)",
          shade=winners_2d(x, kernel_size, stride).astype(float))
    _grid(axes[1], dout, "upstream gradient dL/dout", shade=np.full(dout.shape, 0.5), cmap="Oranges")
    axes[1].set_xlabel("output column")
    axes[1].set_ylabel("output row")
    _grid(axes[2], dx, "dL/dx: routed to the winners", shade=(dx != 0).astype(float), cmap="Oranges")
    fig.suptitle(f"Max pooling backward ({kernel_size}x{kernel_size}, stride {stride}): "
                 f"the gradient flows only through each window's maximum")
    fig.tight_layout()
    return fig
