"""The PyTorch twin (course_lib.distributed.torch_dist) and its launcher (course_lib.machinery.torch_launch):
the same all-reduce through torch.distributed (gloo on CPU), and DDP on launch_torch."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.distributed as dist

from course_lib.distributed.torch_dist import ddp_linear_worker, default_backend, linear_reference
from course_lib.machinery import torch_launch
from course_lib.machinery.launch import allreduce
from course_lib.machinery.procs import CollectiveError
from course_lib.machinery.torch_launch import failing_worker, launch_torch, torch_allreduce

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_default_backend_is_gloo_without_gpus():
    import torch
    if torch.cuda.device_count() < 2:
        assert default_backend(2) == "gloo"


@pytest.mark.parametrize("P", [2, 3])
def test_gloo_allreduce_equals_the_sum_and_ours(P, rng):
    arrays = [rng.standard_normal((7, 13)).astype(np.float32) for _ in range(P)]
    res = torch_allreduce(arrays, backend="gloo", repeats=3, timeout=120)
    exact = np.sum(np.stack(arrays).astype(np.float64), axis=0)
    ours = allreduce(arrays, timeout=30)
    assert res.transport == "gloo" and res.elapsed.shape == (3, P)
    for out in res.outputs:
        assert out.shape == (7, 13) and out.dtype == np.float32
        np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out, ours.outputs[0], rtol=1e-5, atol=1e-5)


def test_gloo_allreduce_integers_exact(rng):
    arrays = [rng.integers(-10**6, 10**6, 50) for _ in range(2)]        # int64
    res = torch_allreduce(arrays, backend="gloo", timeout=120)
    assert all(np.array_equal(out, arrays[0] + arrays[1]) for out in res.outputs)


def test_ddp_matches_single_process_training(rng):
    X = rng.standard_normal((64, 5))
    y = X @ rng.standard_normal(5) + 0.1 * rng.standard_normal(64)
    weights = launch_torch(ddp_linear_worker, 2, args=(X, y, 20, 0.1), backend="gloo", timeout=120)
    reference = linear_reference(X, y, 20, 0.1)
    for w in weights:
        np.testing.assert_allclose(w, reference, rtol=1e-10, atol=1e-12)
    assert np.array_equal(weights[0], weights[1]), "DDP replicas drifted apart"


def test_linear_reference_leaves_the_callers_torch_rng_alone(rng):
    """STYLE rule 6: the same seeded initial weights, without reseeding the caller's generator."""
    import torch
    X, y = rng.standard_normal((8, 3)), rng.standard_normal(8)
    with torch.random.fork_rng(devices=[]):          # this test's seeding stays in this test too
        torch.manual_seed(7)
        first = torch.nn.Linear(3, 1, dtype=torch.float64)                  # what seed=7 must give
        torch.manual_seed(1234)
        expected = torch.randn(5)
        torch.manual_seed(1234)
        untrained = linear_reference(X, y, 0, 0.1, seed=7)
        assert torch.initial_seed() == 1234, f"linear_reference reseeded torch with {torch.initial_seed()}"
        assert torch.equal(torch.randn(5), expected), "linear_reference moved the caller's torch RNG"
    np.testing.assert_array_equal(untrained, np.r_[first.weight.detach().numpy().ravel(), first.bias.item()])


def test_a_failing_rank_is_named():
    start = time.monotonic()
    with pytest.raises(CollectiveError, match="rank 1 raised") as info:
        launch_torch(failing_worker, 2, args=(1,), backend="gloo", timeout=60)
    assert info.value.rank == 1 and "told to fail" in str(info.value)
    assert time.monotonic() - start < 30


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        launch_torch(failing_worker, 2, args=(0,), backend="mpi")
    with pytest.raises(ValueError, match="world_size"):
        launch_torch(failing_worker, 0, args=(0,))
    with pytest.raises(ValueError, match="rank 1 has"):
        torch_allreduce([np.zeros(2), np.zeros(3)])


# ---- behaviour pinned down by mutation testing

@pytest.mark.parametrize("cuda, gpus, nccl, expected", [
    (True, 2, True, "nccl"), (True, 3, True, "nccl"), (True, 1, True, "gloo"),
    (False, 2, True, "gloo"), (True, 2, False, "gloo"),
])
def test_default_backend_wants_nccl_and_one_gpu_per_rank(monkeypatch, cuda, gpus, nccl, expected):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: nccl)
    assert default_backend(2) == expected
    monkeypatch.setenv("COURSE_DEVICE", "cpu")          # a GPU machine told to behave like a laptop
    assert default_backend(2) == "gloo"


def test_launch_torch_spawns_for_nccl_and_passes_the_backend_on(monkeypatch):
    calls = []
    monkeypatch.setattr(torch_launch, "run_processes",
                        lambda worker, rank_args, timeout, start_method: calls.append((rank_args, start_method)) or [])
    launch_torch(failing_worker, 2, args=(0,), backend="nccl")
    launch_torch(failing_worker, 2, args=(0,), backend="nccl", start_method="forkserver")
    launch_torch(failing_worker, 2, args=(0,), backend="gloo")
    assert [method for _, method in calls] == ["spawn", "forkserver", None]   # CUDA cannot fork
    assert [rank_args[0][2] for rank_args, _ in calls] == ["nccl", "nccl", "gloo"]
    assert all(len(rank_args) == 2 for rank_args, _ in calls)


def test_torch_allreduce_uses_the_default_backend_and_validates_repeats(monkeypatch):
    seen = []
    monkeypatch.setattr(torch_launch, "default_backend", lambda P: "nccl")
    monkeypatch.setattr(torch_launch, "launch_torch",
                        lambda fn, P, args, backend, timeout, start_method: seen.append(backend) or [[0.1, 0.2]] * P)
    result = torch_allreduce([np.zeros(4, np.float32)] * 3, repeats=2)
    assert seen == ["nccl"] and result.transport == "nccl"
    assert np.asarray(result.elapsed).shape == (2, 3)                 # (repeats, P)
    assert result.nbytes == 4 * 4                                     # N * itemsize of one rank's array
    with pytest.raises(ValueError, match="repeats = 0 must be >= 1"):
        torch_allreduce([np.zeros(2)] * 2, repeats=0)
    with pytest.raises(TypeError, match="repeats must be an int"):
        torch_allreduce([np.zeros(2)] * 2, repeats=2.0)


@pytest.mark.parametrize("backend", [None, "mpi"])
def test_torch_allreduce_checks_the_backend_before_creating_shared_memory(monkeypatch, backend):
    def no_gpu(P):               # what get_device() raises for COURSE_DEVICE=cuda on a machine without one
        raise ValueError("COURSE_DEVICE=cuda but torch.cuda.is_available() is False")
    created = []
    monkeypatch.setattr(torch_launch, "default_backend", no_gpu)
    monkeypatch.setattr(torch_launch.shared_memory, "SharedMemory",
                        lambda *a, **k: created.append(k) or pytest.fail("a segment was created"))
    with pytest.raises(ValueError, match="COURSE_DEVICE=cuda" if backend is None else "'gloo' or 'nccl'"):
        torch_allreduce([np.zeros(4, np.float32)] * 2, backend=backend)
    assert created == [], "no shared-memory segment to leak"

