"""Downpour's trade-offs (lesson 9, sections 7 and 8).

The throughput model (``course_lib.distributed.downpour_throughput``), the
emulated compute and service times of ``train_on_processes``, ``simulate``'s
``target_loss``, the sweeps of ``course_lib.experiments.downpour`` and their
figures. Nothing here times anything: the sleeps are counted, not measured.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import types

import numpy as np
import pytest
from hypothesis import given, strategies as st

from course_lib.data import load_digits
from course_lib.distributed.downpour import DownpourResult, simulate
from course_lib.distributed.downpour_throughput import (replica_bound, runtime_and_resources, server_bound,
                                                        shards_needed, throughput_bound)
from course_lib.experiments.downpour import (measured_throughput, runtime_resource, steps_to_target,
                                             steps_to_target_over_seeds, throughput_sweep)
from course_lib.experiments.seeds import summarize
from course_lib.machinery import downpour_processes
from course_lib.machinery.downpour_processes import replica_worker, shard_worker, train_on_processes
from course_lib.models import TinyNet


@pytest.fixture(scope="module")
def digits():
    d = load_digits(size=8)
    return d.x_train.reshape(len(d.x_train), -1).astype(np.float64), d.y_train


def _result(curve) -> DownpourResult:
    curve = np.array(curve, dtype=float)
    return DownpourResult(np.zeros(1), curve, np.zeros((0, 2), np.int64), [int(curve[-1, 0])])


# ---- the model: by hand, and its knee -------------------------------------

def test_throughput_bounds_by_hand():
    # t_compute 10 ms, t_service 5 ms, 2 requests a step: a shard of 2 is busy 2 * 5 / 2 = 5 ms a step
    assert replica_bound(4, 2, 0.010, 0.005) == pytest.approx(4 / (0.010 + 0.005))        # 266.7 steps/s
    assert server_bound(2, 0.005) == pytest.approx(2 / (2 * 0.005))                        # 200 steps/s
    assert throughput_bound(4, 2, 0.010, 0.005) == pytest.approx(200)                       # server-bound
    assert throughput_bound(1, 2, 0.010, 0.005) == pytest.approx(1 / 0.015)                 # replica-bound
    assert server_bound(3, 0.0) == np.inf and throughput_bound(5, 1, 0.010, 0.0) == pytest.approx(500)
    assert server_bound(2, 0.005, requests=1.0) == pytest.approx(400), "pushing half as often"
    assert shards_needed(4, 0.010, 0.005) == 3 and shards_needed(1, 0.010, 0.005) == 1
    assert runtime_and_resources(1000, 4, 2, 200.0) == pytest.approx((5.0, 30.0))


@given(R=st.integers(1, 64), t_compute=st.floats(1e-4, 1.0), t_service=st.floats(1e-5, 1.0))
def test_shards_needed_is_where_the_bounds_meet(R, t_compute, t_service):
    n_shards = shards_needed(R, t_compute, t_service)
    assert replica_bound(R, n_shards, t_compute, t_service) <= server_bound(n_shards, t_service) * (1 + 1e-9), \
        f"{n_shards} shards keep {R} replicas replica-bound"
    if n_shards > 1:
        assert replica_bound(R, n_shards - 1, t_compute, t_service) > server_bound(n_shards - 1, t_service), \
            f"and {n_shards - 1} would not: the fewest"


@given(R=st.integers(1, 64), n_shards=st.integers(1, 64), t_compute=st.floats(1e-4, 1.0),
       t_service=st.floats(0.0, 1.0))
def test_throughput_grows_with_replicas_and_shards_and_never_beats_either_bound(R, n_shards, t_compute, t_service):
    X = throughput_bound(R, n_shards, t_compute, t_service)
    assert X <= replica_bound(R, n_shards, t_compute, t_service) and X <= server_bound(n_shards, t_service)
    assert throughput_bound(R + 1, n_shards, t_compute, t_service) >= X
    assert throughput_bound(R, n_shards + 1, t_compute, t_service) >= X


@pytest.mark.parametrize("call, error, match", [
    (lambda: replica_bound(0, 1, 0.01, 0.005), ValueError, "n_replicas = 0 must be >= 1"),
    (lambda: server_bound(0, 0.005), ValueError, "n_shards = 0 must be >= 1"),
    (lambda: replica_bound(1, 1, 0.0, 0.005), ValueError, r"t_compute must be positive \(t_compute > 0\)"),
    (lambda: server_bound(1, -0.005), ValueError, r"t_service must be a finite number >= 0, got -0.005 \(seconds"),
    (lambda: server_bound(1, float("nan")), ValueError, "t_service must be a finite number >= 0"),
    (lambda: throughput_bound(2, 1, "10 ms", 0.005), TypeError, "t_compute must be a number, got '10 ms'"),
    (lambda: shards_needed(2, 0.01, 0.005, requests=0), ValueError, "requests must be positive"),
    (lambda: runtime_and_resources(100, 2, 1, 0.0), ValueError, "throughput must be positive"),
])
def test_the_model_refuses_bad_inputs_with_a_message_that_teaches(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- the emulation on processes ---------------------------------------------

@pytest.mark.parametrize("bad, error, match", [
    (dict(service_time=-0.001), ValueError, r"service_time must be a finite number >= 0, got -0.001 \(emulated"),
    (dict(compute_time=float("inf")), ValueError, "compute_time must be a finite number >= 0"),
    (dict(compute_time="10ms"), TypeError, "compute_time must be a number"),
])
def test_emulated_times_are_checked_before_any_process(digits, monkeypatch, bad, error, match):
    monkeypatch.setattr(downpour_processes, "run_processes", lambda *a, **k: pytest.fail("processes were started"))
    with pytest.raises(error, match=match):
        train_on_processes(TinyNet(), *digits, n_replicas=2, n_shards=2, total_steps=10, **bad)


def test_each_shard_spends_its_share_of_the_service_time(digits, monkeypatch):
    """service_time is for a server holding all N parameters; shard s of w[lo:hi] gets (hi - lo) / N of it."""
    seen = {}

    def capture(member, ranks, **kwargs):
        seen["ranks"] = ranks
        raise RuntimeError("captured")
    monkeypatch.setattr(downpour_processes, "run_processes", capture)
    with pytest.raises(RuntimeError, match="captured"):
        train_on_processes(TinyNet(), *digits, n_replicas=2, n_shards=3, total_steps=10, service_time=0.006,
                           compute_time=0.002)
    shards, replicas = seen["ranks"][:3], seen["ranks"][3:]
    N = TinyNet().n_params                                               # 2,410 = 804 + 803 + 803
    assert [args[-1] for args in shards] == pytest.approx([0.006 * (hi - lo) / N for _, _, lo, hi, *_ in shards])
    assert sum(args[-1] for args in shards) == pytest.approx(0.006), "the shares add up to the whole server"
    assert all(args[5]["compute_time"] == 0.002 for args in replicas)   # replica_worker's settings


def test_a_shard_sleeps_for_replicas_requests_not_for_the_parents_fetch(monkeypatch):
    slept = []
    monkeypatch.setattr(downpour_processes, "time", types.SimpleNamespace(sleep=slept.append))
    ctx = mp.get_context("fork")
    (replica, shard_end), (control, control_end) = ctx.Pipe(), ctx.Pipe()
    replica.send(("push", np.ones(3), 0))
    replica.send(("fetch",))
    control.send(("fetch",))
    worker = threading.Thread(target=shard_worker, args=(0, 0, 3, np.zeros(3), dict(optimizer="sgd", lr=0.1),
                                                         [shard_end], control_end, None, 0.004))
    worker.start()
    try:
        assert replica.poll(10) and replica.recv()[0] == 1, "the fetch comes after the push: version 1"
        assert control.poll(10) and control.recv()[0] in (0, 1)
        control.send(("stop",))
        worker.join(10)
        assert not worker.is_alive()
    finally:
        for end in (replica, shard_end, control, control_end):
            end.close()
    assert slept == [0.004, 0.004], "one emulated service time per replica request (push, fetch), none for the parent"


def test_a_replica_sleeps_its_compute_time_every_step(monkeypatch):
    slept = []
    monkeypatch.setattr(downpour_processes, "time", types.SimpleNamespace(sleep=slept.append))
    ctx = mp.get_context("fork")
    pipes = [ctx.Pipe() for _ in range(2)]                              # two shards
    model, n = TinyNet(), TinyNet().n_params
    bounds = [(0, n // 2), (n // 2, n)]
    for (_, shard_end), (lo, hi) in zip(pipes, bounds):
        for _ in range(3):                                              # the answers to three fetches
            shard_end.send((0, np.zeros(hi - lo)))
    settings = dict(batch=4, n_fetch=1, n_push=1, seed=0, total_steps=3, timeout=5, compute_time=0.01)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 64)), rng.integers(0, 10, 20)
    try:
        steps = replica_worker(0, model, x, y, settings, [a for a, _ in pipes], bounds, ctx.Value("q", 0),
                               ctx.Array("q", 1), threading.Barrier(1), None)
    finally:
        for pair in pipes:
            for end in pair:
                end.close()
    assert steps == 3 and slept == [0.01] * 3


# ---- the runtime-resource trade-off -----------------------------------------

def test_simulate_stops_at_the_target_loss_and_is_a_prefix_of_the_full_run(digits):
    kw = dict(n_replicas=4, n_shards=2, total_steps=600, optimizer="adagrad", lr=0.03, eval_every=20, seed=3)
    full = simulate(TinyNet(), *digits, **kw)
    target = float(full.curve[len(full.curve) // 2, 2])                  # a loss the full run passes on its way
    short = simulate(TinyNet(), *digits, target_loss=target, **kw)
    assert short.curve[-1, 2] <= target < short.curve[:-1, 2].min()
    assert sum(short.steps_per_replica) == short.curve[-1, 0] == steps_to_target(full, target) < 600
    np.testing.assert_array_equal(short.curve, full.curve[:len(short.curve)])
    assert short.final_loss == short.curve[-1, 2]


def test_steps_to_target_and_measured_throughput_by_hand():
    res = _result([(0, 0.01, 2.3), (10, 0.11, 0.9), (30, 0.31, 0.5), (40, 0.40, 0.4), (40, 0.45, 0.35)])
    assert steps_to_target(res, 0.5) == 30 and steps_to_target(res, 0.1) == np.inf
    assert measured_throughput(res) == pytest.approx((30 - 10) / (0.31 - 0.11)), "while steps were claimed"
    assert measured_throughput(_result([(5, 0.1, 1.0), (40, 0.5, 0.4)])) == pytest.approx(40 / 0.5), "too few"


def test_runtime_resource_divides_steps_by_throughput_seed_by_seed():
    steps = summarize([[100, 300], [200, 500]])                          # 2 seeds x (R = 1, R = 4)
    out = runtime_resource(steps, [1, 4], [1, 2], [50.0, 100.0])
    np.testing.assert_allclose(out["seconds"]["all"], [[2.0, 3.0], [4.0, 5.0]])
    np.testing.assert_allclose(out["machine_seconds"]["all"], [[4.0, 18.0], [8.0, 30.0]])   # x (R + n_shards)
    np.testing.assert_allclose(out["seconds"]["median"], [3.0, 4.0])


def test_steps_to_target_over_seeds_is_one_simulate_per_seed_and_replica(digits):
    kw = dict(n_shards=2, optimizer="adagrad", lr=0.03, eval_every=20)
    out = steps_to_target_over_seeds(TinyNet(), *digits, [1, 4], 0.6, 400, seeds=[0, 1], **kw)
    assert out["all"].shape == (2, 2)
    one = simulate(TinyNet(), *digits, n_replicas=4, total_steps=400, seed=1, **kw)
    assert out["all"][1, 1] == steps_to_target(one, 0.6)
    never = steps_to_target_over_seeds(TinyNet(), *digits, [2], 1e-6, 40, seeds=[0], **kw)
    assert never["all"][0, 0] == np.inf, "a target not reached within the budget is inf"


@pytest.mark.slow
def test_throughput_sweep_returns_a_run_and_the_model_per_setting(digits):
    out = throughput_sweep(TinyNet(), *digits, [1, 2], [1, 2], compute_time=0.002, service_time=0.001,
                           seconds=0.05, min_steps=10, repeats=2, optimizer="adagrad", lr=0.03, start_method="fork")
    assert {k: out[k].shape for k in ("measured", "bound", "replica_bound", "server_bound")} == \
        dict.fromkeys(("measured", "bound", "replica_bound", "server_bound"), (2, 2))
    for i, n_shards in enumerate([1, 2]):
        for j, R in enumerate([1, 2]):
            res = out["runs"][i][j]
            assert out["bound"][i, j] == throughput_bound(R, n_shards, 0.002, 0.001)
            assert len(res.steps_per_replica) == R and sum(res.steps_per_replica) >= 10
            assert len(np.unique(res.staleness[:, 0])) == n_shards
            assert np.isfinite(out["measured"][i, j]) and out["measured"][i, j] == measured_throughput(res) > 0
    assert not mp.active_children(), "every child was joined"


def test_a_sweep_needs_at_least_one_pass(digits, monkeypatch):
    monkeypatch.setattr("course_lib.experiments.downpour.train_on_processes", lambda *a, **k: pytest.fail("ran"))
    with pytest.raises(ValueError, match="repeats = 0 must be >= 1"):
        throughput_sweep(TinyNet(), *digits, [1], [1], compute_time=0.01, service_time=0.005, repeats=0)


def test_tradeoff_figures_label_everything():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from course_lib.viz import downpour as viz
    sweep = {k: np.array([[40.0, 80.0], [60.0, 120.0]]) for k in ("measured", "bound", "replica_bound", "server_bound")}
    steps = summarize([[100, 300, 900], [200, 500, 1100]])
    arms = {"1 shard": runtime_resource(steps, [1, 2, 4], [1] * 3, [50.0, 100.0, 100.0]),
            "4 shards": runtime_resource(steps, [1, 2, 4], [4] * 3, [80.0, 160.0, 320.0])}
    sub = summarize(steps["all"][:, :2])
    figs = [viz.plot_throughput([1, 2], [1, 2], sweep, 0.01, 0.005),
            viz.plot_runtime_resource([1, 2, 4], arms, 0.3,
                                      {"1 shard": ([1, 2], runtime_resource(sub, [1, 2], [1, 1], [45.0, 90.0]))})]
    for fig in figs:
        assert all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    assert "steps per second" in figs[0].axes[0].get_ylabel() and "10 ms" in figs[0].axes[0].get_title()
    labels = figs[1].axes[0].get_legend_handles_labels()[1]
    assert labels == ["1 shard: model throughput", "4 shards: model throughput", "1 shard: measured throughput"]
    assert "(s)" in figs[1].axes[0].get_ylabel() and "machines" in figs[1].axes[1].get_ylabel()
    for fig in figs:
        plt.close(fig)
