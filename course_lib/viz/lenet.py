"""Figures and tables for lesson 05 (LeNet-5 trained from scratch).

Reading order: ``architecture_table`` (the lecture's table),
``plot_digits`` (samples of the data), ``plot_history`` (loss and accuracy
curves side by side), ``plot_seed_accuracy`` (the spread over seeds),
``misclassified`` / ``plot_misclassified``,
``epoch_timings_table`` / ``plot_epoch_timings``. The training runs and timings
they show are ``course_lib.experiments.lenet_training``'s. Tables are DataFrames
(``course_lib.viz.tables``). Tested in ``tests/test_lenet.py``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from course_lib.lenet import architecture
from course_lib.viz.tables import table


def architecture_table(size: int = 32) -> pd.DataFrame:
    """LeNet-5's layers as a table: what each layer is, its output shape, its parameters.

    One row per layer of ``course_lib.lenet.architecture(size)``, labelled by the
    layer's name, between the input image and the total.
    """
    layers = architecture(size)
    rows = [{"layer": "input", "operation": "image", "output": f"1 x {size} x {size}", "params": 0}]
    rows += [{"layer": layer.name, "operation": layer.kind, "output": " x ".join(str(d) for d in layer.output),
              "params": layer.params} for layer in layers]
    rows.append({"layer": "total", "operation": "", "output": "", "params": sum(layer.params for layer in layers)})
    return table(rows, {"layer": "layer", "operation": "operation", "output": "output shape",
                        "params": "parameters"}, index="layer")


def plot_digits(x: np.ndarray, y: np.ndarray, n: int = 10, title: str = "Training digits"):
    """The first ``n`` images (N, 1, H, W) with their labels, in one row."""
    fig, axes = plt.subplots(1, n, figsize=(1.3 * n, 1.9))
    for ax, img, label in zip(np.atleast_1d(axes), x[:n, 0], y[:n]):
        ax.imshow(img, cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"label {label}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[0].set_ylabel(f"{x.shape[2]} px")
    np.atleast_1d(axes)[0].set_xlabel(f"{x.shape[3]} px")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(histories: dict):
    """Training loss (left) and test accuracy (right) per epoch, one line per run.

    histories : {name: course_lib.experiments.lenet_training.History}
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for k, (name, h) in enumerate(histories.items()):
        epochs, colour = np.arange(1, len(h.train_loss) + 1), f"C{k}"
        left.plot(epochs, h.train_loss, "o-", color=colour, label=name)
        right.plot(epochs, np.array(h.test_acc) * 100, "o-", color=colour, label=f"{name} (test)")
        right.plot(epochs, np.array(h.train_acc) * 100, "--", color=colour, alpha=0.6,
                   label=f"{name} (train, during the epoch)")
    left.set_yscale("log")
    left.set_xlabel("epoch")
    left.set_ylabel("mean cross-entropy loss (nats, log scale)")
    left.set_title("Training loss")
    right.axhline(95, color="0.5", lw=0.8, ls=":")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy (%)")
    right.set_title("Accuracy (dotted line: 95%)")
    for ax in (left, right):
        ax.legend(fontsize=8)
    fig.suptitle("LeNet-5 on the digits: numpy and PyTorch side by side")
    fig.tight_layout()
    return fig


def plot_seed_accuracy(runs: list):
    """Test accuracy over seeds: per epoch (median line, min-max band) and final (one dot per seed).

    runs : ``course_lib.experiments.lenet_training.train_over_seeds``' result; on
    the right, grey lines join the numpy and PyTorch runs of the same seed
    (same initial weights, same minibatches), a bar marks each median.
    """
    names = list(runs[0].histories)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    final = np.array([[run.histories[name].test_acc[-1] for name in names] for run in runs]) * 100  # (seeds, 2)
    for k, name in enumerate(names):
        acc = np.array([run.histories[name].test_acc for run in runs]) * 100          # (seeds, epochs)
        epochs = np.arange(1, acc.shape[1] + 1)
        left.fill_between(epochs, acc.min(axis=0), acc.max(axis=0), color=f"C{k}", alpha=0.2,
                          label=f"{name}: min to max")
        left.plot(epochs, np.median(acc, axis=0), "o-", color=f"C{k}", label=f"{name}: median")
        right.hlines(np.median(final[:, k]), k - 0.25, k + 0.25, color=f"C{k}", lw=2)
        right.text(k + 0.27, np.median(final[:, k]), f"median {np.median(final[:, k]):.1f}%", va="center",
                   fontsize=8)
        right.plot(np.full(len(runs), k), final[:, k], "o", color=f"C{k}", alpha=0.8)
    for pair in final:
        right.plot([0, 1], pair, "-", color="0.6", lw=0.8, zorder=0)
    left.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy per epoch", ylim=(None, 100))
    left.legend(fontsize=8, loc="lower right")
    right.set_xticks(range(len(names)), names)
    right.set_xlim(-0.5, len(names) - 0.1)
    right.set(xlabel="implementation (grey: the same seed)", ylabel="final test accuracy (%)",
              title="After the last epoch, one dot per seed")
    fig.suptitle(f"LeNet-5 on the digits, trained from {len(runs)} seeds: the spread of the test accuracy")
    fig.tight_layout()
    return fig


def misclassified(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Indices where the prediction is wrong, in order."""
    if y_true.shape != y_pred.shape:
        raise ValueError(f"misclassified: y_true {y_true.shape} and y_pred {y_pred.shape} differ")
    return np.flatnonzero(y_true != y_pred)


def plot_misclassified(x: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, max_n: int = 16):
    """A grid of up to ``max_n`` wrongly classified images, titled 'true -> predicted'."""
    wrong = misclassified(y_true, y_pred)[:max_n]
    cols = 8
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        ax.axis("on")
        ax.imshow(x[i, 0], cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"{y_true[i]} -> {y_pred[i]}", fontsize=9, color="tab:red")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel(f"{x.shape[2]} px")
    axes[0, 0].set_xlabel(f"{x.shape[3]} px")
    fig.suptitle(f"Misclassified test digits (true -> predicted): {len(misclassified(y_true, y_pred))} "
                 f"of {len(y_true)}")
    fig.tight_layout()
    return fig


def epoch_timings_table(timings: dict[str, float]) -> pd.DataFrame:
    """``epoch_timings`` as a table: seconds per epoch and the ratio to PyTorch on the CPU.

    timings : {implementation: seconds per epoch}, with a 'PyTorch CPU' entry
    """
    base = timings["PyTorch CPU"]
    rows = [{"implementation": name, "seconds": seconds, "ratio": seconds / base}
            for name, seconds in timings.items()]
    return table(rows, {"implementation": "implementation", "seconds": "time per epoch (s)",
                        "ratio": "relative to PyTorch CPU (x)"}, digits=2, index="implementation")


def plot_epoch_timings(timings: dict[str, float]):
    """Bar chart of seconds per training epoch (``experiments.lenet_training.epoch_timings``)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(list(timings), list(timings.values()), color=["tab:blue", "tab:orange", "tab:green"][:len(timings)])
    for bar, value in zip(bars, timings.values()):
        ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.2f} s", ha="center", va="bottom")
    ax.set_ylim(top=max(timings.values()) * 1.2)
    ax.set_xlabel("implementation")
    ax.set_ylabel("time per training epoch (s)")
    ax.set_title("One LeNet-5 epoch on the digits (forward, backward, SGD step)")
    fig.tight_layout()
    return fig
