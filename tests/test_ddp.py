"""Data-parallel LeNet-5 (course_lib.ddp): DDP over gloo equals single-process training.

The reference for DDP is the single-process twin on the whole global batch;
the twin itself is checked against a plain torch loop written out here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT
from course_lib import ddp
from course_lib.data import load_digits
from course_lib.lenet import TorchLeNet5
from course_lib.machinery import ddp_cli
from course_lib.experiments.ddp_overlap import overlap_summary

SETTINGS = settings(max_examples=30, deadline=None)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@SETTINGS
@given(n=st.integers(1, 200), data=st.data())
def test_global_batches_cover_each_epoch_without_repeats(n, data):
    batch_size = data.draw(st.integers(1, n))
    steps = data.draw(st.integers(1, 3 * (n // batch_size) + 2))
    idx = ddp.global_batches(n, batch_size, steps, seed=3)
    assert idx.shape == (steps, batch_size) and idx.min() >= 0 and idx.max() < n
    per_epoch = n // batch_size                               # the ragged end of an epoch is dropped
    for e in range(0, steps, per_epoch):
        epoch = idx[e:e + per_epoch].reshape(-1)
        assert len(np.unique(epoch)) == len(epoch), "an index repeats within one epoch"
    np.testing.assert_array_equal(idx, ddp.global_batches(n, batch_size, steps, seed=3))


def test_bad_batches_are_explained():
    with pytest.raises(ValueError, match="not divisible by world_size = 2.*multiple of 2"):
        ddp._check_batch(63, 2)
    with pytest.raises(ValueError, match="larger than the data set"):
        ddp.global_batches(10, 11, 1)
    with pytest.raises(ValueError, match="not divisible by world_size = 4"):
        ddp.train_ddp(np.zeros((8, 1, 32, 32), np.float32), np.zeros(8, np.int64), 1, 6, world_size=4)


def test_single_process_twin_is_plain_sgd(digits):
    x, y = digits.x_train, digits.y_train
    out = ddp.train_single(x, y, steps=3, batch_size=16, lr=0.1, momentum=0.9, seed=1)
    torch.manual_seed(1)
    model = TorchLeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for idx in ddp.global_batches(len(x), 16, 3, seed=1):
        loss = F.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    np.testing.assert_allclose(out["losses"], losses, rtol=1e-6)
    np.testing.assert_allclose(out["params"], ddp.flat_parameters(model), rtol=0, atol=1e-6)
    assert out["params"].shape == (61_706,)


def test_training_leaves_the_callers_torch_rng_alone(digits):
    """STYLE rule 6: train_single seeds its model's weights without reseeding the caller's generator."""
    with torch.random.fork_rng(devices=[]):          # this test's seeding stays in this test too
        torch.manual_seed(1234)
        expected = torch.randn(5)
        torch.manual_seed(1234)
        ddp.train_single(digits.x_train, digits.y_train, steps=1, batch_size=8, seed=0)
        assert torch.initial_seed() == 1234, f"train_single reseeded torch with {torch.initial_seed()}"
        assert torch.equal(torch.randn(5), expected), "train_single moved the caller's torch RNG"


@pytest.mark.slow
def test_ddp_on_two_processes_equals_single_process_and_overlaps(digits):
    x, y = digits.x_train, digits.y_train
    ranks = ddp.train_ddp(x, y, steps=6, batch_size=32, world_size=2, lr=0.1,
                          bucket_cap_mb=0.01, record_step=2, dtype="float64")
    single = ddp.train_single(x, y, steps=6, batch_size=32, lr=0.1, dtype="float64")
    assert np.array_equal(ranks[0]["params"], ranks[1]["params"]), "the replicas drifted apart"
    gap = np.abs(ranks[0]["params"] - single["params"]).max()
    assert gap < 1e-12, f"DDP differs from single-process training by {gap:.2e}"
    np.testing.assert_allclose(ranks[0]["losses"], single["losses"], rtol=1e-12)
    initial = ddp.flat_parameters(ddp._new_model(0, torch.float64))
    assert np.abs(single["params"] - initial).max() > 1e-3                     # it trained
    summary = overlap_summary(ranks[0]["events"])
    assert summary["grad_order"][:2] == ["out.bias", "out.weight"] and "c1.weight" in summary["grad_order"][-2:]
    assert summary["buckets"] >= 3 and 0 in summary["launched_before_last_grad"], summary
    names = sorted(n for b in ranks[0]["buckets"] for n in b)
    assert names == sorted(n for n, _ in TorchLeNet5().named_parameters())      # every parameter, once


@pytest.mark.slow
def test_default_buckets_hold_all_of_lenet_so_nothing_overlaps_float32_close(digits):
    x, y = digits.x_train, digits.y_train
    ranks = ddp.train_ddp(x, y, steps=3, batch_size=8, world_size=2, record_step=1)
    single = ddp.train_single(x, y, steps=3, batch_size=8)
    np.testing.assert_allclose(ranks[0]["params"], single["params"], rtol=0, atol=1e-5)       # float32
    summary = overlap_summary(ranks[1]["events"])
    assert summary["buckets"] == 1 and summary["launched_before_last_grad"] == [], summary


@pytest.mark.slow
def test_ddp_works_under_spawn(digits):
    x, y = digits.x_train[:64], digits.y_train[:64]
    ranks = ddp.train_ddp(x, y, steps=2, batch_size=16, world_size=2, dtype="float64", start_method="spawn")
    single = ddp.train_single(x, y, steps=2, batch_size=16, dtype="float64")
    for out in ranks:
        np.testing.assert_allclose(out["params"], single["params"], rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_same_script_runs_under_torchrun(digits, capsys):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node=2",
           "-m", "course_lib.ddp", "--steps", "3", "--batch-size", "16"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    single = ddp.train_single(digits.x_train, digits.y_train, 3, 16)
    line = [text for text in done.stdout.splitlines() if text.startswith("rank 0 of 2")]
    assert line, done.stdout
    checksum = float(line[0].rsplit(" ", 1)[1])
    assert checksum == pytest.approx(single["params"].sum(), abs=1e-4), (line, single["params"].sum())
    assert ddp_cli.main(["--steps", "2", "--batch-size", "8"]) == 0          # alone: starts 2 local ranks
    assert "largest parameter difference" in capsys.readouterr().out


# --------------------------------------------------------------------------
# ---- behaviour pinned down by mutation testing
# --------------------------------------------------------------------------

def test_batch_size_must_be_a_positive_int():
    for bad in (True, 8.0):
        with pytest.raises(TypeError, match="batch_size must be an int"):
            ddp._check_batch(bad, 2)
    with pytest.raises(ValueError, match="batch_size = 0 must be >= 1"):
        ddp._check_batch(0, 2)
    with pytest.raises(ValueError, match="batch_size = 0 must be >= 1"):  # the twin checks it too
        ddp.train_single(np.zeros((8, 1, 32, 32), np.float32), np.zeros(8, np.int64), 1, 0)


def test_global_batches_reshuffle_every_epoch_from_the_seed():
    idx = ddp.global_batches(10, 5, 4, seed=0)                     # two epochs of two batches
    first, second = idx[:2].ravel(), idx[2:].ravel()
    assert sorted(first) == sorted(second) == list(range(10))
    assert not np.array_equal(first, np.arange(10)), "the first epoch is not shuffled"
    assert not np.array_equal(first, second), "the second epoch repeats the first one's order"
    assert not np.array_equal(ddp.global_batches(100, 10, 3, seed=0), ddp.global_batches(100, 10, 3, seed=1))


def test_flat_parameters_are_float64_whatever_the_model_dtype():
    model = TorchLeNet5()                                           # float32
    flat = ddp.flat_parameters(model)
    assert flat.dtype == np.float64 and flat.shape == (61_706,)
    assert flat[0] == np.float64(next(model.parameters()).reshape(-1)[0].item())


def test_ddp_worker_passes_its_hyperparameters_on(digits, tmp_path):
    # one rank, in this process (gloo, world_size = 1): DDP on a single rank is the single-process
    # twin, so every setting ddp_worker is given (here a momentum other than the default) must reach SGD
    import torch.distributed as dist
    x, y = digits.x_train[:64], digits.y_train[:64]
    threads = torch.get_num_threads()                               # ddp_worker sets 1 for its process
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        out = ddp.ddp_worker(0, 1, x, y, steps=3, batch_size=16, lr=0.1, momentum=0.5, dtype="float64")
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(threads)
    single = ddp.train_single(x, y, steps=3, batch_size=16, lr=0.1, momentum=0.5, dtype="float64")
    np.testing.assert_allclose(out["params"], single["params"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["losses"], single["losses"], rtol=1e-12)


def test_torchrun_is_recognised_by_rank_and_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "0")
    assert not ddp_cli._under_torchrun(), "torchrun sets both RANK and WORLD_SIZE; RANK alone is not it"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert ddp_cli._under_torchrun()


def test_python_m_course_lib_ddp_delegates_to_the_cli():
    done = subprocess.run([sys.executable, "-m", "course_lib.ddp", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage: python -m course_lib.ddp" in done.stdout and "--world-size" in done.stdout


# --------------------------------------------------------------------------
# ---- lesson 08's overlap experiment (course_lib.experiments.ddp_overlap)
# --------------------------------------------------------------------------
# The logs below are written by hand; the real run is checked for its structure only (never a time).

from course_lib.experiments import ddp_overlap as ov                      # noqa: E402
from course_lib.scaling import CommModel, Timeline, ring_allreduce_time    # noqa: E402

LAYER_ORDER = ["out", "f6", "c5", "c3", "c1"]
BUCKETS = [["out.bias", "out.weight", "f6.bias", "f6.weight"], ["c5.weight"], ["c5.bias", "c3.weight"],
           ["c3.bias", "c1.weight", "c1.bias"]]


def _pass_log(dt=0.0, grad_ms=(1, 2, 10, 30, 40), done_ms=(5, 12, 35, 42), returned_ms=43):
    """A backward pass as BackwardLog writes it (ms given, s logged), every time moved by dt seconds:
    the layers' last gradients at ``grad_ms``, bucket b launched at its last gradient, done at done_ms[b]."""
    ready = {}
    for layer, t in zip(LAYER_ORDER, grad_ms):                    # as autograd logs them: a linear layer's
        first, last = ("bias", "weight") if layer in ("out", "f6") else ("weight", "bias")   # bias first
        ready[f"{layer}.{first}"], ready[f"{layer}.{last}"] = t / 1e3 - 1e-5, t / 1e3
    ready["c5.weight"] = grad_ms[2] / 1e3 - 2e-3                            # DDP's bucket 1 is c5.weight alone
    events = [("backward", dt)]
    for name, t in sorted(ready.items(), key=lambda item: item[1]):
        events.append(("grad", name, t + dt))
        for b, names in enumerate(BUCKETS):
            if names[-1] == name:
                events.append(("allreduce", b, names, t + dt))
    events += [("done", b, t / 1e3 + dt) for b, t in enumerate(done_ms)]
    return sorted(events, key=lambda e: e[-1]) + [("returned", returned_ms / 1e3 + dt)]


def test_lenet5_layers_match_torch_lenet5_and_the_flop_formula():
    layers = ov.lenet5_layers()
    per_layer = {}
    for name, p in TorchLeNet5().named_parameters():
        per_layer[name.split(".")[0]] = per_layer.get(name.split(".")[0], 0) + p.numel()
    assert {layer.name: layer.params for layer in layers} == per_layer
    assert sum(layer.params for layer in layers) == 61_706
    assert [layer.name for layer in layers] == LAYER_ORDER[::-1]                       # forward order
    assert layers[0].flops == 2 * 1 * 6 * 5 * 5 * 28 * 28                               # C1 by hand: 235,200
    assert layers[3].flops == 2 * 120 * 84                                               # F6: a 1x1 "convolution"


def test_measured_timeline_reads_layers_buckets_and_the_return():
    tl = ov.measured_timeline(_pass_log())
    assert [name for name, _, _ in tl.backward] == LAYER_ORDER
    np.testing.assert_allclose([(s, e) for _, s, e in tl.backward],
                               [(0, 0.001), (0.001, 0.002), (0.002, 0.010), (0.010, 0.030), (0.030, 0.040)])
    assert [label for label, _, _ in tl.allreduce] == ["bucket 0", "bucket 1", "bucket 2", "bucket 3"]
    np.testing.assert_allclose([(s, e) for _, s, e in tl.allreduce],
                               [(0.002, 0.005), (0.008, 0.012), (0.030 - 1e-5, 0.035), (0.040, 0.042)])
    assert tl.total == pytest.approx(0.043) and tl.forward == 0.0
    late = ov.measured_timeline(_pass_log(dt=0.5))                             # rank 1, half a second later
    assert late.backward[0][1] == pytest.approx(0.5) and late.total == pytest.approx(0.543)
    no_return = ov.measured_timeline(_pass_log()[:-1])                         # an older log: no "returned"
    assert no_return.total == pytest.approx(0.042)


def test_overlap_held_needs_every_bucket_but_the_last_to_end_under_backprop():
    assert ov.overlap_held([ov.measured_timeline(_pass_log())])
    late_bucket_2 = ov.measured_timeline(_pass_log(done_ms=(5, 12, 41, 42)))   # after the last gradient (40 ms)
    assert not ov.overlap_held([late_bucket_2])
    slow_rank = ov.measured_timeline(_pass_log(grad_ms=(1, 2, 10, 30, 45), returned_ms=47))
    assert ov.overlap_held([late_bucket_2, slow_rank]), "rank 1 still computed until 45 ms: 41 ms was hidden"
    assert ov.overlap_held([Timeline(0.0, [("c1", 0.0, 1.0)], [("bucket 0", 1.0, 9.0)], 9.0)])  # one bucket


@pytest.mark.parametrize("P", [2, 4])
def test_fit_comm_model_recovers_alpha_and_bandwidth(P):
    truth = CommModel(alpha=50e-6, bandwidth=1e9)
    sizes = [688, 10_080, 44_056, 192_000]
    lone = {b: (n, ring_allreduce_time(n, P, truth)) for b, n in enumerate(sizes)}
    fit = ov.fit_comm_model(lone, P, bucket_bytes=5242.88)
    assert fit.alpha == pytest.approx(50e-6) and fit.bandwidth == pytest.approx(1e9)
    assert fit.bucket_bytes == 5242.88 and fit.bytes_per_param == 4
    for n in sizes:                                                            # the fit predicts the points
        assert ring_allreduce_time(n, P, fit) == pytest.approx(ring_allreduce_time(n, P, truth))


def test_fit_comm_model_keeps_alpha_and_bandwidth_physical():
    through_origin = ov.fit_comm_model({0: (1000, 0.0), 1: (2000, 3e-6), 2: (4000, 9e-6)}, 2)
    assert through_origin.alpha == 0.0 and through_origin.bandwidth > 0        # a negative intercept refitted
    flat = ov.fit_comm_model({0: (1000, 2e-4), 1: (2000, 1e-4)}, 2)           # bigger was faster: noise
    assert flat.bandwidth == np.inf and flat.alpha == pytest.approx(1.5e-4 / 2)
    one = ov.fit_comm_model({0: (1000, 2e-4)}, 2)
    assert one.bandwidth == np.inf and one.alpha == pytest.approx(1e-4)


def _run(passes=3):
    """A measure_overlap result built by hand: rank 1 5 ms behind; backprop alone 30, 40, 50 ms."""
    return {"ddp": [[_pass_log(), _pass_log(dt=0.005)] for _ in range(passes)],
            "compute": [[_pass_log(grad_ms=(1, 2, 10, 20, ms - 1), done_ms=(), returned_ms=ms)] * 2
                        for ms in (30, 40, 50)[:passes]],
            "lone": {0: (44_056, 1e-4), 1: (192_000, 3e-4), 2: (10_080, 6e-5), 3: (688, 5e-5)},
            "batch_size": 512, "bucket_cap_mb": 0.005, "world_size": 2}


def test_modelled_timeline_is_the_lecture_model_of_the_measured_setting():
    tl, comm = ov.modelled_timeline(_run())
    assert comm.bucket_bytes == 0.005 * 2 ** 20 and comm.alpha > 0
    assert tl.backward[0][1] == pytest.approx(0.0)                             # from backward()'s start
    assert tl.backward[-1][2] == pytest.approx(0.040)                          # the median backprop alone
    assert [name for name, _, _ in tl.backward] == LAYER_ORDER
    assert len(tl.allreduce) == 4, "0.005 MiB buckets: out+f6, c5, c3, c1, as DDP's"
    for (_, start, _), (_, _, layer_end) in zip(tl.allreduce, [tl.backward[1], *tl.backward[2:]]):
        assert start == pytest.approx(layer_end)                               # launched as its layer ends
    assert ov.overlap_held([tl])
    no_overlap = ov.iteration_timeline(ov.lenet5_layers(), 0.060, 2, comm, overlap=False)   # 1.5 x 40 ms
    assert tl.total < no_overlap.total - no_overlap.forward                    # only bucket 3 after backprop


def test_pass_rows_and_median_pass():
    run = _run()
    run["ddp"][1][1] = _pass_log(dt=0.005, returned_ms=60)                     # pass 1 returned last (65 ms),
    run["ddp"][2][0] = _pass_log(returned_ms=50)                               # pass 2 in the middle (50 ms)
    rows = ov.pass_rows(run)
    assert [r["pass"] for r in rows] == [0, 1, 2] and all(r["held"] for r in rows)
    assert rows[0]["backprop"] == pytest.approx(0.045) and rows[0]["skew"] == pytest.approx(0.005)
    assert rows[0]["returned"] == pytest.approx(0.048) and rows[0]["exposed"] == pytest.approx(0.003)
    assert [r["compute"] for r in rows] == pytest.approx([0.030, 0.040, 0.050])
    assert ov.median_pass(run) == 2 and ov.median_pass(_run(passes=2)) == 0    # 48, 48: the lower middle


def test_overlap_study_repeats_the_measurement_and_numbers_the_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(ov, "measure_overlap", lambda x, y, **setting: calls.append(setting) or _run())
    rows = ov.overlap_study(None, None, runs=2, batch_size=64, passes=3)
    assert calls == [dict(batch_size=64, passes=3)] * 2, "the setting goes to every run"
    assert [(r["run"], r["pass"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    without_run = [{k: v for k, v in r.items() if k != "run"} for r in rows]
    assert without_run == ov.pass_rows(_run()) * 2, "each run's rows are pass_rows' of that run"


def test_measure_overlap_refuses_a_batch_the_ranks_cannot_share():
    with pytest.raises(ValueError, match="batch_size = 9 is not divisible by world_size = 2"):
        ov.measure_overlap(np.zeros((16, 1, 32, 32), np.float32), np.zeros(16, np.int64), batch_size=9)


@pytest.mark.slow
def test_measured_overlap_has_ddp_buckets_and_both_ranks_on_one_clock(digits):
    run = ov.measure_overlap(digits.x_train, digits.y_train, batch_size=32, passes=2, warmup=1)
    assert len(run["ddp"]) == len(run["compute"]) == 2 and all(len(p) == 2 for p in run["ddp"])
    assert sorted(run["lone"]) == [0, 1, 2, 3] and run["lone"][1][0] == 48_000 * 4     # bytes of c5.weight
    for ranks in run["ddp"]:
        assert ranks[0][0][0] == "backward" and 0.0 <= ranks[0][0][1] < 0.01     # rank 0's clock starts here
        for events in ranks:
            assert [e[2] for e in events if e[0] == "allreduce"] == BUCKETS
            assert [e[1] for e in events if e[0] == "done"] and events[-1][0] == "returned"
            tl = ov.measured_timeline(events)
            assert [name for name, _, _ in tl.backward] == LAYER_ORDER
            assert all(end >= start for _, start, end in tl.allreduce + tl.backward)
    for ranks in run["compute"]:                                                 # no_sync: no all-reduce
        assert all(not [e for e in events if e[0] == "allreduce"] for events in ranks)
    assert len(ov.pass_rows(run)) == 2


def test_save_writes_rank_0s_weights_and_losses_for_another_run_to_compare(tmp_path):
    out = {"params": np.arange(5, dtype=np.float64), "losses": np.array([2.3, 2.1])}
    ddp_cli._save(str(tmp_path / "final.npz"), out)
    saved = np.load(tmp_path / "final.npz")
    np.testing.assert_array_equal(saved["params"], out["params"])
    np.testing.assert_array_equal(saved["losses"], out["losses"])
    ddp_cli._save(None, out)                                       # no --save: nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.npz"]
    assert ddp_cli._parse(["--save", "w.npz"]).save == "w.npz" and ddp_cli._parse([]).save is None
