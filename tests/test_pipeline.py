"""Pipeline (model) parallelism, lesson 13: the GPipe schedule, its bubble, the alpha-beta time model,
the per-stage step against the one-process model, in one process and on S gloo processes; a dying stage."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from procfs import leaves_nothing_behind  # noqa: F401  (autouse: no process left behind)

from course_lib.distributed.pipeline import (bubble_fraction, format_schedule, gpipe_schedule, idle_fraction,
                                             micro_batches, mlp_layers, pipeline_time, run_in_schedule_order,
                                             speedup_curve, split_layers, whole_model_step)
from course_lib.machinery.pipeline_processes import run_pipeline
from course_lib.machinery.procs import CollectiveError

FEW = settings(max_examples=40, deadline=None)
LOSS = torch.nn.functional.cross_entropy
WIDTHS = [6, 10, 10, 10, 10, 10, 4]                       # 6 Linear layers: 2 or 3 per stage for S = 2, 3


def slots(S, M):
    """{(stage, m, phase): tick} of the schedule, checking that no slot appears twice."""
    where = {}
    for t, tick in enumerate(gpipe_schedule(S, M)):
        for slot in tick:
            assert slot not in where, f"{slot} runs twice: ticks {where[slot]} and {t}"
            where[slot] = t
    return where


# ---------------------------------------------------------------- the schedule

def test_the_schedule_by_hand():
    """S = 3, M = 4: forwards on the diagonal, backwards in reverse; 4 idle slots per stage of 12."""
    assert format_schedule(gpipe_schedule(3, 4)).splitlines() == [
        "tick      0   1   2   3   4   5   6   7   8   9  10  11",
        "stage 0  F0  F1  F2  F3   .   .   .   .  B3  B2  B1  B0",
        "stage 1   .  F0  F1  F2  F3   .   .  B3  B2  B1  B0   .",
        "stage 2   .   .  F0  F1  F2  F3  B3  B2  B1  B0   .   .",
    ]


@FEW
@given(S=st.integers(1, 8), M=st.integers(1, 12))
def test_every_forward_once_before_its_backward_and_dependencies_respected(S, M):
    where = slots(S, M)
    assert len(where) == 2 * S * M, f"{len(where)} slots, expected 2 S M = {2 * S * M}"
    for s in range(S):
        for m in range(M):
            f, b = where[s, m, "F"], where[s, m, "B"]
            assert f == s + m, f"F of micro-batch {m} on stage {s} at tick {f}, expected s + m = {s + m}"
            assert f < b, f"B before F for (stage {s}, micro-batch {m})"
            if s > 0:
                assert where[s - 1, m, "F"] < f, f"stage {s} ran F{m} before stage {s - 1} sent it"
            if s < S - 1:
                assert where[s + 1, m, "B"] < b, f"stage {s} ran B{m} before stage {s + 1} sent its gradient"
    for tick in gpipe_schedule(S, M):
        stages = [s for s, _, _ in tick]
        assert len(stages) == len(set(stages)), f"a stage runs two slots in one tick: {tick}"


@FEW
@given(S=st.integers(1, 8), M=st.integers(1, 12))
def test_each_phase_lasts_M_plus_S_minus_1_ticks(S, M):
    ticks = gpipe_schedule(S, M)
    T = M + S - 1
    assert len(ticks) == 2 * T
    assert all(phase == "F" for tick in ticks[:T] for _, _, phase in tick)
    assert all(phase == "B" for tick in ticks[T:] for _, _, phase in tick)
    assert ticks[0] == [(0, 0, "F")] and ticks[T - 1] == [(S - 1, M - 1, "F")]
    assert ticks[T] == [(S - 1, M - 1, "B")] and ticks[-1] == [(0, 0, "B")]


@FEW
@given(S=st.integers(1, 8), M=st.integers(1, 12))
def test_the_bubble_formula_counts_the_schedules_idle_slots(S, M):
    counted, formula = idle_fraction(gpipe_schedule(S, M)), bubble_fraction(S, M)
    assert np.isclose(counted, formula), f"idle slots {counted} vs (S-1)/(M+S-1) = ({S}-1)/({M}+{S}-1) = {formula}"


def test_bad_sizes_say_why():
    with pytest.raises(ValueError, match="M \\(micro-batches\\) = 0 must be >= 1"):
        gpipe_schedule(2, 0)
    with pytest.raises(ValueError, match="6 layers"):
        split_layers(list(range(6)), 7)
    with pytest.raises(ValueError, match="N = 3 rows"):
        micro_batches(np.zeros((3, 2)), np.zeros(3), 4)


# ---------------------------------------------------------------- the time model

@FEW
@given(S=st.integers(1, 16), M=st.integers(1, 32), t=st.floats(1e-4, 1.0))
def test_the_time_model_without_messages_is_the_schedule(S, M, t):
    """With alpha = beta = 0 each stage is busy 1 - bubble of the time: t(S) = (t(1) / S) / (1 - bubble)."""
    t1, tS = pipeline_time(1, M, t, 0, 0, 0), pipeline_time(S, M, t, 0, 0, 0)
    assert np.isclose(t1, M * t)
    assert np.isclose(tS, (t1 / S) / (1 - bubble_fraction(S, M)))
    assert np.isclose(speedup_curve([S], M, t, 0, 0, 0)[0], S * M / (M + S - 1))


def test_messages_make_the_speedup_flatten_and_fall():
    """Dean et al.'s shape: gains that flatten, then fall, as each tick's message stops shrinking."""
    S = np.arange(1, 65)
    free = speedup_curve(S, 32, 1e-2, 0, 0, 0)
    costly = speedup_curve(S, 32, 1e-2, 5e-5, 1e-9, 1e5)
    assert np.all(np.diff(free) > 0) and np.all(costly <= free + 1e-12)
    peak = int(np.argmax(costly))
    assert 0 < peak < len(S) - 1 and costly[-1] < costly[peak], "the costly curve must peak inside the range"
    bigger_model = speedup_curve(S, 32, 1e-1, 5e-5, 1e-9, 1e5)      # 10x the compute, the same messages
    assert bigger_model.max() > costly.max(), "more compute per message must scale further"


@FEW
@given(S=st.integers(1, 8), M=st.integers(1, 12), alpha=st.floats(0, 1e-3))
def test_the_formula_is_the_sum_over_the_schedules_ticks(S, M, alpha):
    """With as many cores as stages, summing tick by tick over gpipe_schedule gives the closed form."""
    assert np.isclose(pipeline_time(S, M, 0.1, alpha, 1e-9, 1e4, cores=S), pipeline_time(S, M, 0.1, alpha, 1e-9, 1e4))


def test_shared_cores_slow_only_the_ticks_where_more_stages_than_cores_work():
    """4 stages on 2 cores: M = 1 never has two stages busy at once (no slower); with M = 64 almost every
    tick has 4 busy stages (about twice as slow); 2 stages on 2 cores are never slowed."""
    assert np.isclose(pipeline_time(4, 1, 1.0, 0, 0, 0, cores=2), pipeline_time(4, 1, 1.0, 0, 0, 0))
    ratio = pipeline_time(4, 64, 1.0, 0, 0, 0, cores=2) / pipeline_time(4, 64, 1.0, 0, 0, 0)
    assert 1.9 < ratio < 2.0, f"4 stages on 2 cores, M = 64: {ratio:.3f}x the time with 4 cores"
    assert np.isclose(pipeline_time(2, 8, 1.0, 0, 0, 0, cores=2), pipeline_time(2, 8, 1.0, 0, 0, 0))


# ---------------------------------------------------------------- the per-stage step, in one process

@pytest.mark.parametrize("S", [1, 2, 3, 6])
@pytest.mark.parametrize("M", [1, 3, 4, 10])
def test_stages_in_schedule_order_equal_the_whole_model(S, M, rng):
    """N = 10 rows: M = 3 and 4 give micro-batches of unequal size, weighted n_m / N."""
    X = torch.from_numpy(rng.standard_normal((10, WIDTHS[0])))
    y = torch.from_numpy(rng.integers(0, WIDTHS[-1], 10))
    out_ref, grads_ref = whole_model_step(WIDTHS, X, y, LOSS, dtype=torch.float64)
    blocks = [torch.nn.Sequential(*group) for group in split_layers(mlp_layers(WIDTHS, dtype=torch.float64), S)]
    out = torch.cat(run_in_schedule_order(blocks, X, y, M, LOSS))
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-14)
    grads = [p.grad for block in blocks for p in block.parameters()]
    assert len(grads) == len(grads_ref) == 12
    for i, (g, ref) in enumerate(zip(grads, grads_ref)):
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-13, msg=lambda m, i=i: f"parameter {i}: {m}")


# ---------------------------------------------------------------- on S processes (gloo send/recv)

@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("S", [2, 3])
def test_stages_on_processes_equal_the_whole_model(S, rng):
    X, y = rng.standard_normal((12, WIDTHS[0])), rng.integers(0, WIDTHS[-1], 12)
    out_ref, grads_ref = whole_model_step(WIDTHS, torch.from_numpy(X), torch.from_numpy(y), LOSS,
                                          dtype=torch.float64)
    run = run_pipeline(WIDTHS, X, y, S, (1, 4), repeats=1, timeout=120)
    for M in (1, 4):
        np.testing.assert_allclose(run.outputs[M], out_ref.numpy(), rtol=1e-12, atol=1e-14,
                                   err_msg=f"outputs, S = {S}, M = {M}")
        assert len(run.grads[M]) == len(grads_ref)
        for i, (g, ref) in enumerate(zip(run.grads[M], grads_ref)):
            np.testing.assert_allclose(g, ref.numpy(), rtol=1e-10, atol=1e-13,
                                       err_msg=f"gradient of parameter {i}, S = {S}, M = {M}")
        assert run.times[M].shape == (1,) and run.times[M][0] > 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_stage_that_dies_is_named_and_nothing_is_left_behind(rng):
    X, y = rng.standard_normal((8, WIDTHS[0])), rng.integers(0, WIDTHS[-1], 8)
    start = time.monotonic()
    with pytest.raises(CollectiveError, match="rank 1 died") as info:
        run_pipeline(WIDTHS, X, y, 3, (2,), timeout=60, die_stage=1)
    assert info.value.rank == 1 and info.value.reason == "died" and info.value.exitcode == -9
    assert time.monotonic() - start < 30, "the death must be seen at once, not at the timeout"


# ---------------------------------------------------------------- the lesson's figures and widget

def test_the_gantt_chart_shows_the_bubble_and_is_labelled():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from course_lib.viz.pipeline import plot_schedule
    fig = plot_schedule(3, 4)
    ax = fig.axes[0]
    assert "bubble (S-1)/(M+S-1) = 33%" in ax.get_title() and "tick" in ax.get_xlabel() and ax.get_ylabel()
    grey = [c for c in ax.collections if tuple(c.get_facecolor()[0][:3]) == (0.9, 0.9, 0.9)]
    assert len(grey) == 3 * 12 - 2 * 3 * 4, "one grey box per idle (stage, tick) slot"
    plt.close(fig)


def test_the_widget_redraws_its_report_when_a_slider_moves(capsys):
    import matplotlib
    matplotlib.use("Agg")

    from course_lib.viz.pipeline import schedule_explorer, schedule_report
    box = schedule_explorer(S=2, M=2)
    assert "bubble (S-1)/(M+S-1) = 1/3 = 33.3%" in capsys.readouterr().out      # printed once, for the notebook
    first = box.image.value
    box.micro.value = 6
    assert "bubble (S-1)/(M+S-1) = 1/7 = 14.3%" in box.report.value and box.image.value != first
    assert "B5" in schedule_report(2, 6) and "too wide" in schedule_report(8, 16)
