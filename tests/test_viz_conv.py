"""The plain functions behind lessons 01 and 02's figures and widgets, and lesson 02's measurements.

Each function a widget or a figure relies on is checked against an
independent reference: course_lib.conv's formulas or torch.nn.functional
(the receptive field itself is course_lib.conv's, tested in tests/test_conv.py). The measurements are
course_lib.experiments.conv_costs (im2col's memory, the timings) and the
tables and figures lesson 02 draws from their rows.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.conv import conv_output_size, im2col, pad2d
from course_lib.experiments import conv_costs
from course_lib.viz import conv as viz

SETTINGS = settings(max_examples=30, deadline=None)


# ---------------------------------------------------------------- lesson 01

def test_report_of_the_lecture_example_shows_the_formula_and_the_parameters():
    text = viz.output_size_report(W=32, F=5, P=0, S=1, D1=1, K=6)  # LeNet-5's C1
    assert "(32 - 5 + 2*0)/1 + 1 = 28" in text, text
    assert "28 x 28 x 6" in text, text
    assert "150 weights + 6 biases = 156" in text, text


def test_report_shows_the_value_error_of_a_non_integer_size():
    text = viz.output_size_report(W=7, F=3, P=0, S=3)
    with pytest.raises(ValueError) as err:
        conv_output_size(7, 3, 0, 3)
    assert f"ValueError: {err.value}" in text, text
    assert "2.33" in text
    assert "round down to 2 x 2" in text  # what F.conv2d does instead


def test_report_of_a_filter_larger_than_the_input_is_an_error_not_a_crash():
    text = viz.output_size_report(W=3, F=7, P=1, S=1)
    assert "ValueError: filter size F = 7 is larger than the padded input" in text, text


@SETTINGS
@given(W=st.integers(1, 40), F=st.integers(1, 11), P=st.integers(0, 5), S=st.integers(1, 5))
def test_report_agrees_with_conv_output_size(W, F, P, S):
    text = viz.output_size_report(W, F, P, S, D1=3, K=4)
    try:
        W2 = conv_output_size(W, F, P, S)
    except ValueError as err:
        assert f"ValueError: {err}" in text
    else:
        assert f"output volume  {W2} x {W2} x 4" in text
        assert W2 == torch_output_width(W, F, P, S)
    assert f"{F * F * 3 * 4} weights + 4 biases" in text


def torch_output_width(W, F_, P, S):
    """The output width PyTorch actually produces, as an independent reference."""
    return F.conv2d(torch.zeros(1, 1, W, W), torch.zeros(1, 1, F_, F_), padding=P, stride=S).shape[-1]


def test_explorer_sliders_drive_the_report(capsys):
    box = viz.output_size_explorer(W=7, F=3, P=0, S=1)
    printed = capsys.readouterr().out
    from course_lib.viz import INITIAL_NOTE                     # initial rendering, marked as such
    assert printed.strip() == INITIAL_NOTE + "\n" + viz.output_size_report(7, 3, 0, 1).strip()
    assert "5 x 5 x 8" in box.report.value
    box.sliders["S"].value = 3                      # the non-integer case
    assert "ValueError" in box.report.value and "2.33" in box.report.value
    box.sliders["P"].value = 1                      # (7 - 3 + 2)/3 + 1 = 3
    assert "= 3\n" in box.report.value and "3 x 3 x 8" in box.report.value


def test_padding_figure_reproduces_the_lecture_example():
    x = np.arange(49).reshape(7, 7)
    xp = pad2d(x[None, None].astype(float), 2)[0, 0]
    fig = viz.plot_padding(x, xp)
    assert "11 x 11" in fig.axes[1].get_title()
    _assert_labelled(fig)


def test_receptive_field_figure_is_labelled():
    _assert_labelled(viz.plot_receptive_field(11, 3, 1, 3))


# ---------------------------------------------------------------- lesson 02

@SETTINGS
@given(H=st.integers(1, 6), W=st.integers(1, 6), KH=st.integers(1, 3), KW=st.integers(1, 3),
       S=st.integers(1, 3), P=st.integers(0, 2))
def test_im2col_index_map_matches_unfold_of_pixel_indices(H, W, KH, KW, S, P):
    if KH > H + 2 * P or KW > W + 2 * P:
        return
    index = viz.im2col_index_map(H, W, KH, KW, S, P)
    ids = torch.arange(1, H * W + 1, dtype=torch.float64).reshape(1, 1, H, W)
    expected = F.unfold(ids, (KH, KW), padding=P, stride=S)[0].numpy().astype(np.int64) - 1
    np.testing.assert_array_equal(index, expected)


def test_im2col_index_map_by_hand():
    # 3x3 image, 2x2 kernel, stride 1: window (0, 0) reads pixels 0, 1, 3, 4
    index = viz.im2col_index_map(3, 3, 2, 2)
    assert index.shape == (4, 4)
    np.testing.assert_array_equal(index[:, 0], [0, 1, 3, 4])
    np.testing.assert_array_equal(index[:, 3], [4, 5, 7, 8])
    assert (viz.im2col_index_map(2, 2, 3, 3, padding=1) == -1).sum() == 4 * 9 - 4 * 4


def test_im2col_figure_is_labelled():
    _assert_labelled(viz.plot_im2col(4, 4, 2, 2))


@SETTINGS
@given(H=st.integers(1, 9), W=st.integers(1, 9), KH=st.integers(1, 4), KW=st.integers(1, 4),
       S=st.integers(1, 3), P=st.integers(0, 2))
def test_im2col_copies_is_what_fold_of_unfold_counts(H, W, KH, KW, S, P):
    if H + 2 * P < KH or W + 2 * P < KW:
        return
    copies = viz.im2col_copies(H, W, KH, KW, S, P)
    ones = torch.ones(1, 1, H, W, dtype=torch.float64)
    expected = F.fold(F.unfold(ones, (KH, KW), padding=P, stride=S), (H, W), (KH, KW), padding=P, stride=S)
    np.testing.assert_array_equal(copies, expected[0, 0].numpy().astype(np.int64))
    assert copies.max() <= KH * KW


def test_im2col_figure_title_gives_the_real_number_of_copies():
    # 3x3 kernel, stride 2, padding 1 on 5x5: windows skip every other position, so at most 4 copies
    np.testing.assert_array_equal(viz.im2col_copies(5, 5, 3, 3, 2, 1)[:2], [[1, 2, 1, 2, 1], [2, 4, 2, 4, 2]])
    fig = viz.plot_im2col(5, 5, 3, 3, stride=2, padding=1)
    title = fig._suptitle.get_text()
    plt.close(fig)
    assert "at most 4 times" in title and "KH*KW = 9" in title, title
    fig = viz.plot_im2col(4, 4, 2, 2)
    title = fig._suptitle.get_text()
    plt.close(fig)
    assert "at most 4 times (= KH*KW" in title, title


def test_every_pixel_gets_its_own_colour_and_none_is_the_padding_grey():
    for n in (1, 16, 25, 49):
        colours = viz.pixel_colours(n)
        assert colours.shape == (n, 3) and np.all((colours >= 0) & (colours <= 1))
        distance = np.linalg.norm(colours[:, None] - colours[None], axis=-1) + np.eye(n)
        assert distance.min() > 0.02, n                              # no two pixels share a colour
        assert np.linalg.norm(colours - 0.92, axis=1).min() > 0.1   # far from the "pad" grey


def test_memory_table_equals_the_bytes_im2col_really_allocates():
    layers = [conv_costs.ConvLayer("small", 2, 3, 9, 7, 4, 3, 2, S=2, P=1),
              conv_costs.ConvLayer("lenet", 2, 1, 32, 32, 6, 5, 5)]
    for layer, row in zip(layers, conv_costs.im2col_memory(layers)):
        x = np.zeros((layer.N, layer.C, layer.H, layer.W), dtype=np.float32)
        cols = im2col(x, (layer.KH, layer.KW), layer.S, layer.P)
        assert row["input_bytes"] == x.nbytes
        assert row["cols_bytes"] == cols.nbytes, (layer, row, cols.shape)


def test_memory_blow_up_is_kernel_area_over_stride_squared_with_same_padding():
    rows = {r["layer"]: r for r in conv_costs.im2col_memory()}
    assert rows["ResNet 3x3, 64 ch, 56x56"]["ratio"] == pytest.approx(9.0)
    assert rows["ResNet 3x3, 128 ch, S=2"]["ratio"] == pytest.approx(9 / 4)
    df = viz.memory_table(conv_costs.im2col_memory())
    assert df.loc["VGG conv1_2 (3x3, 224x224)", "cols (MiB)"] == 7056.0  # 64*64*9*224*224*4 bytes in MiB
    assert df.loc["ResNet 3x3, 128 ch, S=2", "cols / input"] == 2.25 == df.loc["ResNet 3x3, 128 ch, S=2", "KH*KW / S^2"]
    assert "VGG conv1_2" in df.to_string() and "7056.0" in df.to_string()
    fig = viz.plot_im2col_memory(conv_costs.im2col_memory())
    _assert_labelled(fig)
    assert "float32" in fig.axes[0].get_xlabel()
    assert "float64" in viz.plot_im2col_memory(conv_costs.im2col_memory(itemsize=8)).axes[0].get_xlabel()


def test_median_seconds_takes_the_median_after_warm_up(monkeypatch):
    """A fake clock: each call of fn takes a programmed time, so median, mean and max all differ."""
    from types import SimpleNamespace
    now = [0.0]                                 # seconds on the fake clock
    durations = iter([100.0, 1.0, 2.0, 50.0, 3.0])  # one warm-up, then 4 timed calls with an outlier
    monkeypatch.setattr(conv_costs, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def fn():
        now[0] += next(durations)

    syncs = []
    seconds = conv_costs.median_seconds(fn, repeats=4, warmup=1, sync=lambda: syncs.append(1))
    assert next(durations, None) is None        # fn ran 5 times: 1 warm-up + 4 timed
    assert len(syncs) == 5  # once after the warm-up, then once inside each timed call
    # median of [1, 2, 50, 3] = 2.5; the mean would be 14, the max 50, and with the warm-up 3
    assert seconds == 2.5, seconds


def test_conv_timings_checks_results_and_skips_a_long_naive_loop():
    cases = [("tiny", (1, 2, 6, 6), (3, 2, 3, 3), 1, 1), ("wide", (1, 2, 9, 9), (3, 2, 3, 3), 2, 0)]
    rows = conv_costs.conv_timings(cases, repeats=1, warmup=0, naive_max_windows=50)
    got = {(r["case"], r["implementation"]): r["seconds"] for r in rows}
    assert math.isnan(got[("tiny", "conv2d_naive")])                    # 1*3*6*6 = 108 > 50
    assert got[("wide", "conv2d_naive")] > 0                             # 1*3*4*4 = 48: timed
    assert math.isnan(got[("wide", "PyTorch GPU")])                      # no device given
    assert all(got[(c, i)] > 0 for c in ("tiny", "wide") for i in ("conv2d", "PyTorch CPU"))
    table = viz.timings_table(rows)
    assert math.isnan(table.loc["tiny", "conv2d_naive (ms)"])           # skipped: shown as not timed
    assert table.loc["wide", "conv2d_naive (ms)"] > 0
    assert not any("PyTorch GPU" in column for column in table.columns)  # never timed: no column
    ratio = got[("wide", "conv2d")] / got[("wide", "PyTorch CPU")]
    assert table.loc["wide", "conv2d / PyTorch CPU"] == pytest.approx(ratio, abs=0.006)  # rounded to 2 digits
    _assert_labelled(viz.plot_timings(rows))


def test_conv_timings_refuses_to_time_a_wrong_implementation(monkeypatch):
    monkeypatch.setattr(conv_costs, "conv2d", lambda x, w, b, stride, padding, workspace=None:
                        np.zeros((1, 3, 6, 6), np.float32))
    with pytest.raises(AssertionError, match="conv2d differs from F.conv2d on tiny"):
        conv_costs.conv_timings([("tiny", (1, 2, 6, 6), (3, 2, 3, 3), 1, 1)], repeats=1, warmup=0)


def test_im2col_gemm_timings_count_the_copy_and_the_flops_and_time_each_step():
    layers = [conv_costs.ConvLayer("same", 2, 3, 8, 8, 4, 3, 3, P=1),          # "same" padding: cols = 9 x input
              conv_costs.ConvLayer("strided", 2, 2, 9, 7, 3, 3, 2, S=2)]
    rows = conv_costs.im2col_gemm_timings(layers, repeats=1, warmup=0)
    for layer, row in zip(layers, rows):
        x = np.zeros((layer.N, layer.C, layer.H, layer.W), dtype=np.float32)
        cols = im2col(x, (layer.KH, layer.KW), layer.S, layer.P)              # (N, C*KH*KW, L)
        assert row["cols_bytes"] == cols.nbytes and row["input_bytes"] == x.nbytes
        assert row["flops"] == 2 * layer.K * cols.size, row                   # 2*K*C*KH*KW*N*L
        assert all(row[key] > 0 for key in ("copy_s", "gemm_s", "torch_s")), row
    assert rows[0]["ratio"] == 9.0 and rows[0]["cols_bytes"] == 9 * rows[0]["input_bytes"]


def test_im2col_gemm_timings_refuse_to_time_a_wrong_product(monkeypatch):
    real = conv_costs.unfold_batched
    monkeypatch.setattr(conv_costs, "unfold_batched", lambda *args: real(*args) * 0)   # columns of zeros
    with pytest.raises(AssertionError, match=r"im2col \+ GEMM differs from F.conv2d on tiny"):
        conv_costs.im2col_gemm_timings([conv_costs.ConvLayer("tiny", 1, 2, 6, 6, 3, 3, 3)], repeats=1, warmup=0)


def test_im2col_gemm_table_and_figure_show_the_rows():
    row = {**conv_costs.im2col_memory([conv_costs.ConvLayer("lenet", 64, 1, 32, 32, 6, 5, 5)])[0],
           "flops": 2 * 6 * 25 * 64 * 28 * 28, "copy_s": 0.5e-3, "gemm_s": 0.4e-3, "torch_s": 0.45e-3}
    df = viz.im2col_gemm_table([row])
    assert df.loc["lenet", "copy (ms)"] == 0.5 and df.loc["lenet", "GEMM (ms)"] == 0.4
    assert df.loc["lenet", "F.conv2d (ms)"] == 0.45
    assert df.loc["lenet", "GEMM (GFLOP/s)"] == pytest.approx(row["flops"] / 0.4e-3 / 1e9, abs=0.06)
    fig = viz.plot_im2col_gemm([row, dict(row, layer="other", torch_s=2e-3)])
    assert len(fig.axes) == 2
    bars = sorted((p.get_x() + p.get_width() / 2, p.get_y(), p.get_height()) for p in fig.axes[0].patches)
    assert bars == [(0, 0, pytest.approx(0.4)), (0, pytest.approx(0.4), pytest.approx(0.5)),  # GEMM, copy on top
                    (1, 0, pytest.approx(0.45))], bars                                        # PyTorch
    assert "2x F.conv2d" in fig.axes[0].get_title()                   # (0.5 + 0.4) / 0.45
    assert all("(ms)" in ax.get_ylabel() for ax in fig.axes)
    _assert_labelled(fig)


# ---------------------------------------------------------------- helpers

def _assert_labelled(fig) -> None:
    """Every figure: a title, and x and y labels on each of its axes."""
    try:
        for ax in fig.axes:
            assert ax.get_title() or fig._suptitle is not None, "missing title"
            assert ax.get_xlabel() and ax.get_ylabel(), f"unlabelled axes {ax.get_title()!r}"
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- the two lessons' stored notebooks

@pytest.mark.parametrize("name", ["01_convolution.ipynb", "02_im2col.ipynb"])
def test_lesson_is_stored_with_outputs_and_ends_with_check_yourself(root, name):
    import nbformat

    nb = nbformat.read(root / "notebooks" / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name}: run tools/execute_notebooks.py"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name} is stored with an error: {errors[0].ename}: {errors[0].evalue}"
    last = nb.cells[-1]
    if last.cell_type == "markdown" and last.source.startswith("## Further reading"):
        last = nb.cells[-2]       # the one cell allowed after "Check yourself": the lesson's reading list
    assert last.cell_type == "markdown" and "Check yourself" in last.source and "<details>" in last.source
    for cell in code:  # figures are drawn by course_lib.viz and shown explicitly
        if "viz.plot_" in cell.source:
            assert cell.source.rstrip().endswith("plt.show()"), cell.source
