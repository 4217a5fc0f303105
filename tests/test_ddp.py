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
from course_lib.viz.distributed import overlap_summary

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
    assert ddp.main(["--steps", "2", "--batch-size", "8"]) == 0              # alone: starts 2 local ranks
    assert "largest parameter difference" in capsys.readouterr().out


# --------------------------------------------------------------------------
# ---- behaviour pinned down by mutation testing
# --------------------------------------------------------------------------

def test_batch_size_must_be_a_positive_int():
    for bad in (0, True, 8.0):
        with pytest.raises(ValueError, match="positive int"):
            ddp._check_batch(bad, 2)
    with pytest.raises(ValueError, match="positive int"):                # the twin checks it too
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
    assert not ddp._under_torchrun(), "torchrun sets both RANK and WORLD_SIZE; RANK alone is not it"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert ddp._under_torchrun()
