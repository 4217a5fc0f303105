"""The plain functions behind lessons 06-08's figures and widgets.

References are independent of the code under test: the lecture's formulas
written out here, ``simulate_ring_allreduce``'s recorded states, and numpy
sums. (Real all-reduces beside the formulas: ``tests/test_experiments_allreduce.py``.)
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from course_lib.distributed.cost import cost_rows
from course_lib.distributed.simulate import simulate_ring_allreduce
from course_lib.experiments.ddp_overlap import overlap_summary
from course_lib.scaling import Timeline
from course_lib.viz import distributed as viz


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labelled(fig):
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), (ax.get_title(), ax.get_xlabel())


# ---------------------------------------------------------------- lesson 06

@pytest.mark.parametrize("P", [2, 4, 7])
def test_topologies_draw_every_rank_and_the_formulas(P):
    fig = viz.plot_topologies(P)
    _labelled(fig)
    left, right = fig.axes
    assert sum(1 for t in left.texts if "rank" in t.get_text()) == P        # the PS reads "PS\nrank 0"
    assert sum(1 for t in right.texts if t.get_text().startswith("rank")) == P
    assert f"{2 * (P - 1)}N elements through rank 0" in left.get_title()
    assert f"{2 * (P - 1)}N/{P} elements sent per rank" in right.get_title()
    assert sum(1 for t in right.texts if t.get_text() == f"{2 * (P - 1)} x N/{P}") == P   # one label per link
    with pytest.raises(ValueError):
        viz.plot_topologies(1)


@pytest.mark.parametrize("P", [3, 4, 7])
def test_topology_labels_sit_beside_the_ps_arrows(P):
    """Each "N" sits beside its spoke, clear of both arrows and their heads (review: rank 3's
    label covered the arrowheads at the PS): along the spoke inside the arrows' span
    (0.25 to 0.8 of the way out), and well off the spoke line, where the arcs are."""
    left = viz.plot_topologies(P).axes[0]
    labels = [t.get_position() for t in left.texts if t.get_text() == "N"]
    assert len(labels) == P - 1
    spokes = np.pi / 2 - 2 * np.pi * np.arange(P - 1) / (P - 1)
    for (x, y), a in zip(labels, spokes):
        along = x * np.cos(a) + y * np.sin(a)
        across = abs(-x * np.sin(a) + y * np.cos(a))
        assert 0.4 < along < 0.7 and across > 0.12, (P, a, along, across)


def test_cost_table_and_report_show_the_numbers():
    df = viz.cost_table(cost_rows(1024, [2, 4], itemsize=4))
    assert df.index.name == "P" and list(df.columns) == [
        "PS server, 2N(P-1) (KiB)", "ring per rank, 2N(P-1)/P (KiB)", "ratio PS / ring"], df.columns
    assert df["PS server, 2N(P-1) (KiB)"].tolist() == [8.0, 24.0]          # 2 * 1024 * (P-1) * 4 bytes
    assert df["ring per rank, 2N(P-1)/P (KiB)"].tolist() == [4.0, 6.0]     # 2 * 1024 * (P-1)/P * 4 bytes
    assert df.loc[4, "ratio PS / ring"] == 4.0
    resnet = viz.cost_table(cost_rows(25_557_032, [2, 256]))            # one unit per table: MiB here
    assert resnet.loc[2, "ring per rank, 2N(P-1)/P (MiB)"] == 97.5
    assert resnet.loc[256, "PS server, 2N(P-1) (MiB)"] == round(2 * 25_557_032 * 255 * 4 / 2 ** 20, 1)
    report = viz.cost_report(1000, 4)
    assert "2 * 1,000 * 3 elements = 23.4 KiB" in report, report
    assert "ratio PS / ring = 4.00 (= P)" in report
    uneven = viz.cost_report(10, 4, itemsize=1)
    assert "exactly 14 to 16 bytes: uneven chunks" in uneven, uneven   # 2*10 - |c_r+1| - |c_r+2|, chunks 3,3,2,2


def test_measured_bytes_table_writes_each_rank_and_compares():
    rows = [{"N": 1001, "P": 4, "algorithm": "ring", "measured": np.array([6008, 6008, 6004, 6004]),
             "formula": np.array([6008, 6008, 6004, 6004])},
            {"N": 4096, "P": 8, "algorithm": "ps", "measured": np.array([114688] + [16384] * 7),
             "formula": np.array([114688] + [16384] * 7)},
            {"N": 10, "P": 3, "algorithm": "ps", "measured": np.array([80, 40, 40]), "formula": np.array([80, 40, 41])}]
    df = viz.measured_bytes_table(rows)
    assert list(df.columns) == ["N", "P", "algorithm", "bytes sent per rank (B)", "formula (B)", "equal"]
    assert df["bytes sent per rank (B)"].tolist() == ["[6008] * 2 + [6004] * 2", "[114688] + [16384] * 7",
                                                      "[80] + [40] * 2"]
    assert df["formula (B)"][2] == "[80] + [40] + [41]"
    assert df["equal"].tolist() == [True, True, False]
    for text in df["bytes sent per rank (B)"]:                              # as Python builds the list
        assert len(text) <= 50                                              # pandas' display.max_colwidth
    assert eval(df["bytes sent per rank (B)"][1]) == rows[1]["measured"].tolist()


def test_cost_explorer_sliders_drive_the_report(capsys):
    box = viz.cost_explorer(N=1000, P=4)
    from course_lib.viz import INITIAL_NOTE                     # initial rendering, marked as such
    assert capsys.readouterr().out.strip() == INITIAL_NOTE + "\n" + viz.cost_report(1000, 4).strip()
    box.sliders["P"].value = 8
    assert "ratio PS / ring = 8.00" in box.report.value
    box.sliders["N"].value = 100
    assert "N = 100 elements" in box.report.value


def test_cost_plot_draws_the_formulas():
    fig = viz.plot_cost_vs_P(N=1000, P_max=8)
    _labelled(fig)
    ps_line = fig.axes[0].lines[0]
    assert list(ps_line.get_xdata()) == list(range(2, 9))
    np.testing.assert_allclose(ps_line.get_ydata() * 2 ** 20, [2 * 1000 * (p - 1) * 4 for p in range(2, 9)])
    ratio_large = fig.axes[1].lines[0].get_ydata()
    assert np.all(np.diff(ratio_large) > 0) and ratio_large[-1] <= 8   # grows with P, at most P


# ---------------------------------------------------------------- lesson 07

def _trace(P=3, N=7):
    return simulate_ring_allreduce([np.arange(N, dtype=np.float64) + 100 * r for r in range(P)])


def test_state_text_follows_the_contributions():
    trace = _trace()
    start, end = viz.ring_state_text(trace, 0), viz.ring_state_text(trace, 4)
    assert "state 0 of 4: start" in start and "complete chunks: none" in start
    assert "rank 0  0:3 1:3 2:3   complete chunks: [0, 1, 2]" in end, end
    after_sr = viz.ring_state_text(trace, 2)            # end of scatter-reduce: rank r has chunk r+1
    for r in range(3):
        assert f"rank {r}" in after_sr and f"complete chunks: [{(r + 1) % 3}]" in after_sr.splitlines()[2 + r]
    assert "rank 0 -> rank 1: chunk 0" in viz.ring_state_text(trace, 1)
    with pytest.raises(ValueError, match="2\\(P-1\\) \\+ 1 = 5 states"):
        viz.ring_state_text(trace, 5)


@pytest.mark.parametrize("t", [0, 1, 2, 3, 4])
def test_ring_step_colours_are_the_contribution_counts(t):
    trace = _trace()
    fig = viz.plot_ring_step(trace, t)
    _labelled(fig)
    counts = fig.axes[0].images[0].get_array()                       # (P, N)
    for c, (a, b) in enumerate(trace.bounds):
        np.testing.assert_array_equal(counts[:, a:b], np.repeat(trace.contributions[t, :, c][:, None], b - a, 1))
    assert trace.labels[t] in fig.axes[0].get_title()
    numbers = [float(x.get_text()) for x in fig.axes[0].texts if x.get_text()]
    np.testing.assert_array_equal(numbers, trace.buffers[t].reshape(-1))   # values written row by row
    annotations = [x for x in fig.axes[0].get_children() if type(x).__name__ == "Annotation"]
    assert len(annotations) == (0 if t == 0 else 3)                  # one arrow per rank per step


def test_all_steps_figure_has_a_panel_per_state():
    trace = _trace(P=4, N=10)
    fig = viz.plot_ring_steps(trace)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 7 and fig._suptitle.get_text()
    assert np.all(panels[-1].images[0].get_array() == 4)             # every chunk holds all 4 ranks


def test_stepper_prints_its_start_and_follows_the_slider(capsys):
    trace = _trace(P=4, N=9)
    box = viz.ring_stepper(trace)
    out = capsys.readouterr().out
    from course_lib.viz import INITIAL_NOTE
    assert out.strip() == INITIAL_NOTE + "\n" + viz.ring_state_text(trace, 0).strip()
    first = box.image.value
    assert first[:4] == b"\x89PNG"
    box.slider.value = 6
    assert "allgather step 2" in box.report.value and "complete chunks: [0, 1, 2, 3]" in box.report.value
    assert box.image.value != first and box.slider.max == 6


@pytest.mark.parametrize("P", [2, 5])
def test_duplex_figure_is_labelled(P):
    fig = viz.plot_duplex(P)
    assert fig.axes[0].get_ylabel() == "rank" and all(ax.get_xlabel() and ax.get_title() for ax in fig.axes)
    assert fig.axes[1].get_title().endswith(f"the step takes {2 if P % 2 == 0 else 3}")


def _rows():
    rows = []
    for method, speed in (("ring/shm", 2e9), ("gloo", 1e9)):
        for nbytes in (1 << 20, 4096, 1 << 16):
            t = nbytes / speed
            rows.append(dict(method=method, P=2, nbytes=nbytes, time=t, algbw=nbytes / t, busbw=nbytes / t))
            rows.append(dict(method=method, P=4, nbytes=nbytes, time=t, algbw=nbytes / t, busbw=nbytes / t * 1.5))
    return rows


def test_schedule_table_reads_like_the_schedule():
    from course_lib.distributed.schedule import ring_schedule
    df = viz.schedule_table(ring_schedule(3))
    assert df.index.name == "phase" and list(df.columns) == [
        "step", "rank", "sends chunk", "to rank", "receives chunk", "from rank"]
    assert len(df) == 2 * 2 * 3                                            # 2(P-1) steps x P ranks
    assert df.iloc[0].tolist() == [0, 0, 0, 1, 2, 2]        # scatter-reduce step 0: rank 0 sends chunk 0 to 1
    assert df.index[-1] == "allgather" and df.iloc[-1].tolist() == [1, 2, 2, 0, 1, 1]
    assert "receives chunk" in df.to_string().splitlines()[0]


def test_bandwidth_table_in_microseconds_and_gb_per_s():
    rows = [dict(method="ring/shm", P=3, nbytes=48, time=1e-3, algbw=48e3, busbw=64e3, max_error=0.0,
                 identical=True)]
    df = viz.bandwidth_table(rows)
    assert list(df.columns) == ["size (B)", "P", "method", "time (us)", "algbw (GB/s)", "busbw (GB/s)"]
    assert df.iloc[0].tolist()[:4] == [48, 3, "ring/shm", 1000.0]                        # microseconds
    assert viz.bandwidth_table([dict(rows[0], algbw=2.34567e9)]).loc[0, "algbw (GB/s)"] == 2.346
    assert len(viz.bandwidth_table(rows * 3)) == 3                                       # one row per run


def test_bandwidth_series_sorts_by_size_and_keeps_one_P():
    series = viz.bandwidth_series(_rows(), 4)
    assert list(series) == ["ring/shm", "gloo"]
    np.testing.assert_array_equal(series["gloo"]["nbytes"], [4096, 1 << 16, 1 << 20])
    np.testing.assert_allclose(series["ring/shm"]["busbw"], 3e9)
    np.testing.assert_array_equal(series["gloo"]["time_q25"], series["gloo"]["time"])   # no quartiles: the median
    fig = viz.plot_bandwidth(_rows(), 2)
    assert "time per all-reduce" in fig.axes[0].get_ylabel() and fig.axes[1].get_ylabel() == "bandwidth (GB/s)"
    assert fig.axes[1].get_title() == "busbw = algbw * 2(P-1)/P = algbw at P = 2"
    gloo = fig.axes[1].containers[1]                                     # (data line, caps, bars) per method
    np.testing.assert_allclose(gloo.lines[0].get_ydata(), 1.0)           # gloo at 1 GB/s
    assert viz.plot_bandwidth(_rows(), 4).axes[1].get_title() == "busbw = algbw * 2(P-1)/P"


def test_plot_bandwidth_bars_span_the_quartiles():
    rows = [dict(method="ring/shm", P=4, nbytes=1 << 20, time=2e-3, time_q25=1e-3, time_q75=4e-3,
                 algbw=(1 << 20) / 2e-3, busbw=(1 << 20) / 2e-3 * 1.5)]
    fig = viz.plot_bandwidth(rows, 4)
    time_bars, busbw_bars = (ax.containers[0].lines[2][0].get_segments()[0] for ax in fig.axes)
    np.testing.assert_allclose(time_bars[:, 1], [1e3, 4e3])                       # q25 .. q75, in us
    busbw = (1 << 20) * 1.5 / np.array([4e-3, 1e-3]) / 1e9                        # slow end .. fast end
    np.testing.assert_allclose(busbw_bars[:, 1], busbw)


# ---------------------------------------------------------------- lesson 08

EVENTS = [("grad", "out.bias", 0.001), ("grad", "out.weight", 0.002),
          ("allreduce", 0, ["out.bias", "out.weight"], 0.0021),
          ("grad", "c1.weight", 0.004), ("grad", "c1.bias", 0.005), ("allreduce", 1, ["c1.weight", "c1.bias"], 0.0051),
          ("done", 0, 0.006), ("done", 1, 0.007)]
SIZES = {"out.bias": 10, "out.weight": 840, "c1.weight": 150, "c1.bias": 6}


def test_buckets_and_overlap_from_a_log():
    rows = viz.bucket_rows(EVENTS, SIZES)
    assert [(r["bucket"], r["elements"]) for r in rows] == [(0, 850), (1, 156)]
    df = viz.bucket_table(rows)
    assert df.index.name == "bucket" and list(df.columns) == [
        "elements", "gradients (KiB)", "parameters (in the order DDP adds them)"]
    assert df.loc[0, "elements"] == 850 and df.loc[0, "gradients (KiB)"] == 3.3          # 850 * 4 bytes
    assert df.loc[0, "parameters (in the order DDP adds them)"] == "out.bias, out.weight"
    assert viz.bucket_table(rows, itemsize=8).loc[0, "gradients (KiB)"] == 6.6           # float64
    summary = overlap_summary(EVENTS)
    assert summary == {"grad_order": ["out.bias", "out.weight", "c1.weight", "c1.bias"],
                       "launched_before_last_grad": [0], "buckets": 2}
    one_bucket = [e for e in EVENTS if e[0] == "grad"] + [("allreduce", 0, list(SIZES), 0.0052)]
    assert overlap_summary(one_bucket)["launched_before_last_grad"] == []


def _timeline(shift=0.0):
    """Two layers and two buckets; ``shift`` s later (a second rank)."""
    return Timeline(0.0, [("out", shift, 0.001 + shift), ("c1", 0.001 + shift, 0.004 + shift)],
                    [("bucket 0", 0.001, 0.003), ("bucket 1", 0.004 + shift, 0.005 + shift)], 0.006 + shift)


def _bar_x(collection):
    """(start, width) in ms of a broken_barh bar."""
    x = collection.get_paths()[0].vertices[:, 0]
    return x.min(), x.max() - x.min()


def test_overlap_figure_draws_every_rank_above_the_model():
    fig = viz.plot_overlap([_timeline(), _timeline(0.001)], _timeline(), "measured", "model")
    _labelled(fig)
    top, bottom = fig.axes
    assert len(top.collections) == 2 * 2 + 2 and len(bottom.collections) == 2 + 2   # ranks x layers + buckets
    assert _bar_x(top.collections[0]) == pytest.approx((0, 1))                        # rank 0's out, in ms
    assert _bar_x(top.collections[3]) == pytest.approx((2, 3))                        # rank 1's c1
    assert _bar_x(top.collections[4]) == pytest.approx((1, 2))                        # bucket 0 (rank 0's)
    assert [line.get_xdata()[0] for line in top.lines] == pytest.approx([5, 7])      # slower rank's end; return
    assert [line.get_xdata()[0] for line in bottom.lines] == pytest.approx([4, 6])
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    assert legend[:3] == ["rank 0 backprop", "rank 1 backprop", "all-reduce (rank 0)"], legend
    assert "last gradient, slower rank: 5.0 ms" in legend and "backward() returned, both ranks: 7.0 ms" in legend
    assert [t.get_text() for t in top.texts] == ["0 ", "1 "]                          # bucket numbers
    assert [t.get_text() for t in top.get_yticklabels()] == ["out backprop", "c1 backprop", "all-reduce\n(bucket no.)"]


def test_overlap_table_shows_each_pass_in_ms():
    rows = [{"pass": 0, "backprop": 0.0381, "returned": 0.04412, "exposed": 0.00602, "skew": 0.0042, "held": True,
             "compute": 0.0366}, {"pass": 1, "backprop": 0.05, "returned": 0.07, "exposed": 0.02, "skew": 0.0,
                                  "held": False, "compute": 0.04}]
    df = viz.overlap_table(rows)
    assert df.index.name == "pass" and list(df.columns) == [
        "last gradient (ms)", "backward() returned (ms)", "exposed (ms)", "rank skew (ms)", "overlap held",
        "no_sync alone (ms)"]
    assert df.loc[0, "backward() returned (ms)"] == 44.1 and df.loc[0, "exposed (ms)"] == 6.0
    assert df["overlap held"].tolist() == [True, False]


def test_ddp_losses_are_labelled():
    fig = viz.plot_ddp_losses([2.3, 2.2, 2.0], {"rank 0": [2.3, 2.2, 2.0]})
    _labelled(fig)
    assert len(fig.axes[0].lines) == 2
    fig = viz.plot_ddp_losses([2.3, 2.2], {f"rank {r}": [2.3, 2.2] for r in range(3)})
    assert "DDP over P = 3 processes" in fig.axes[0].get_title()
    fig = viz.plot_ddp_losses([2.3, 2.2], {"rank 0": [2.3, 2.2]}, world_size=4)   # one rank of four shown
    assert "P = 4" in fig.axes[0].get_title()
