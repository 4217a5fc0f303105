"""The lecture's collectives on real processes: the sum, the bytes, the process group.

``ring_allreduce_`` and ``ps_allreduce_`` (``course_lib.distributed.collectives``)
run here through ``course_lib.machinery.launch`` on both transports, every
world size from 1 to 8, integer and float dtypes, and every start method; the
reliability of running them (failures, time-outs, clean-up) is
``tests/test_machinery_collectives.py``'s. Every test checks afterwards that no
child process and no shared-memory segment it created is left behind, and
keeps sizes tiny: the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from course_lib.distributed.cost import ps_bytes_at_server, ps_bytes_per_rank, ring_bytes_per_rank
from course_lib.distributed.workers import data_parallel_least_squares, least_squares_reference
from course_lib.machinery.launch import allreduce, launch
from course_lib.machinery.procs import CollectiveError
from procfs import leaves_nothing_behind  # noqa: F401  (autouse: no child, no shared memory left)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _exact(arrays):
    return np.sum(np.stack(arrays).astype(np.float64), axis=0)


def _check_sum(res, arrays, atol=1e-4):
    for r, out in enumerate(res.outputs):
        assert out.shape == arrays[0].shape and out.dtype == arrays[0].dtype
        np.testing.assert_allclose(out, _exact(arrays), rtol=1e-5, atol=atol, err_msg=f"rank {r}")
        assert np.array_equal(out, res.outputs[0]), f"rank {r}'s output differs from rank 0's in its bits"


# ---------------------------------------------------------------- correctness

@pytest.mark.parametrize("transport", ["shm", "pipe"])
@pytest.mark.parametrize("algorithm, shards", [("ring", 1), ("ps", 1), ("ps", 3)])
def test_sum_and_bytes_for_P_1_to_8(transport, algorithm, shards, rng):
    for P in range(1, 9):
        n_shards = min(shards, P)
        arrays = [rng.standard_normal((3, 11)).astype(np.float32) for _ in range(P)]   # N = 33, uneven
        res = allreduce(arrays, algorithm=algorithm, transport=transport, shards=n_shards, timeout=30)
        _check_sum(res, arrays)
        torch_sum = torch.stack([torch.from_numpy(a) for a in arrays]).sum(0).numpy()
        np.testing.assert_allclose(res.outputs[0], torch_sum, rtol=1e-5, atol=1e-5)
        if algorithm == "ring":
            expected = ring_bytes_per_rank(33, P, itemsize=4)
            np.testing.assert_array_equal(res.bytes_sent, expected, err_msg=f"P={P}")
            np.testing.assert_array_equal(res.bytes_received, np.roll(expected, 1), err_msg=f"P={P}")
        else:
            sent, received = ps_bytes_per_rank(33, P, shards=n_shards, itemsize=4)
            np.testing.assert_array_equal(res.bytes_sent, sent, err_msg=f"P={P} n_shards={n_shards}")
            np.testing.assert_array_equal(res.bytes_received, received, err_msg=f"P={P} n_shards={n_shards}")
            if n_shards == 1:
                assert res.bytes_sent[0] + res.bytes_received[0] == ps_bytes_at_server(33, P, itemsize=4)
        assert res.elapsed.shape == (1, P) and (res.elapsed >= 0).all()


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16, np.float64])
@pytest.mark.parametrize("transport", ["shm", "pipe"])
def test_integer_dtypes_exact(dtype, transport, rng):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    P, N = 5, 17
    if info is not None:                      # values that overflow int8: the sum wraps, as numpy's does
        arrays = [rng.integers(info.min, info.max, N, dtype=dtype, endpoint=True) for _ in range(P)]
    else:
        arrays = [rng.integers(-1000, 1000, N).astype(dtype) for _ in range(P)]
    expected = np.sum(np.stack(arrays), axis=0, dtype=dtype)
    for algorithm in ("ring", "ps"):
        res = allreduce(arrays, algorithm=algorithm, transport=transport, timeout=30)
        for out in res.outputs:
            assert out.dtype == dtype and np.array_equal(out, expected)


@settings(max_examples=12, deadline=None)
@given(P=st.integers(1, 6), shape=st.lists(st.integers(0, 9), min_size=0, max_size=3),
       transport=st.sampled_from(["shm", "pipe"]), algorithm=st.sampled_from(["ring", "ps"]),
       seed=st.integers(0, 2**32 - 1))
def test_property_any_shape(P, shape, transport, algorithm, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape) for _ in range(P)]            # float64, any shape, maybe empty
    res = allreduce(arrays, algorithm=algorithm, transport=transport, timeout=30)
    _check_sum(res, arrays, atol=1e-9)


def test_inputs_are_not_modified(rng):
    arrays = [rng.standard_normal(10) for _ in range(3)]
    copies = [a.copy() for a in arrays]
    allreduce(arrays, timeout=30)
    assert all(np.array_equal(a, c) for a, c in zip(arrays, copies))


@pytest.mark.parametrize("transport", ["shm", "pipe"])
def test_many_back_to_back_collectives(transport, rng):
    arrays = [rng.standard_normal(1000).astype(np.float32) for _ in range(4)]
    res = allreduce(arrays, transport=transport, repeats=300, timeout=60)
    assert res.elapsed.shape == (300, 4)
    _check_sum(res, arrays)


# ---------------------------------------------------------------- start methods, process group

@pytest.mark.parametrize("transport, start_method", [("shm", "spawn"), ("pipe", "spawn"), ("pipe", "forkserver")])
def test_spawn_and_forkserver_start_methods(transport, start_method, rng):
    arrays = [rng.standard_normal(101).astype(np.float32) for _ in range(3)]
    res = allreduce(arrays, transport=transport, start_method=start_method, timeout=60)
    assert res.start_method == start_method
    _check_sum(res, arrays)


def test_fork_start_method(rng):
    arrays = [rng.standard_normal(101).astype(np.float32) for _ in range(3)]
    res = allreduce(arrays, algorithm="ps", start_method="fork", timeout=30)
    assert res.start_method == "fork"
    _check_sum(res, arrays)


@pytest.mark.parametrize("transport, algorithm", [("shm", "ring"), ("pipe", "ring"), ("shm", "ps")])
def test_process_group_in_training(transport, algorithm, rng):
    X, y = rng.standard_normal((61, 5)), rng.standard_normal(61)
    weights = launch(data_parallel_least_squares, 3, args=(X, y, 25, 0.2, algorithm),
                     transport=transport, capacity=5, dtype=np.float64, timeout=30)
    np.testing.assert_allclose(weights[0], least_squares_reference(X, y, 25, 0.2), rtol=1e-10, atol=1e-12)
    assert all(np.array_equal(w, weights[0]) for w in weights), "ranks drifted apart"


def test_process_group_misuse_is_reported(rng):
    X, y = rng.standard_normal((10, 5)), rng.standard_normal(10)
    with pytest.raises(CollectiveError, match="capacity"):      # 5 parameters, capacity 3
        launch(data_parallel_least_squares, 2, args=(X, y, 1, 0.1), capacity=3, dtype=np.float64, timeout=20)


# ---------------------------------------------------------------- the lesson's pipe variants

@pytest.mark.parametrize("transport", ["pipe-pickle", "pipe-oddeven", "pipe-sendfirst"])
@pytest.mark.parametrize("algorithm", ["ring", "ps"])
def test_pipe_variants_sum_small_messages(transport, algorithm, rng):
    arrays = [rng.standard_normal(301).astype(np.float32) for _ in range(3)]
    res = allreduce(arrays, algorithm=algorithm, transport=transport, timeout=30)
    _check_sum(res, arrays)


# ---------------------------------------------------------------- the process group's options

def _process_group_checks(pg):
    """In a worker: a sharded PS all-reduce through the ProcessGroup, a broadcast from the
    last rank, and the errors the group must raise for misuse."""
    x = np.full(6, pg.rank + 1.0, np.float32)
    pg.allreduce_(x, algorithm="ps", shards=3)
    sent = pg.bytes_sent
    b = np.full(4, float(pg.rank), np.float32)
    pg.broadcast_(b, root=pg.world_size - 1)
    errors = []
    for arr, kwargs in [(np.ones(6, np.float32), dict(algorithm="ps", shards=pg.world_size + 1)),
                        (np.ones(6, np.float64), {}),
                        (np.ones(6, np.float32), dict(algorithm="tree"))]:
        try:
            pg.allreduce_(arr, **kwargs)
            errors.append("none")
        except (TypeError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return x, sent, b, errors


def test_process_group_allreduce_options_and_misuse():
    results = launch(_process_group_checks, 3, capacity=6, timeout=30, start_method="fork")
    sent_expected, _ = ps_bytes_per_rank(6, 3, shards=3, itemsize=4)
    for rank, (x, sent, b, errors) in enumerate(results):
        np.testing.assert_array_equal(x, np.full(6, 6.0))
        assert sent == sent_expected[rank], f"rank {rank}: shards=3 must reach ps_allreduce_"
        np.testing.assert_array_equal(b, np.full(4, 2.0))
        assert errors[0].startswith("ValueError: shards = 4 must be between 1 and world_size = 3"), errors
        assert errors[1].startswith("TypeError") and "float64" in errors[1], errors
        assert errors[2].startswith("ValueError: algorithm must be one of"), errors


@pytest.mark.parametrize("algorithm", ["ring", "ps"])
def test_bytes_are_counted_per_collective_when_repeated(algorithm, rng):
    arrays = [rng.standard_normal(33).astype(np.float32) for _ in range(3)]
    res = allreduce(arrays, algorithm=algorithm, repeats=3, timeout=30)
    _check_sum(res, arrays)
    sent = ring_bytes_per_rank(33, 3, itemsize=4) if algorithm == "ring" else ps_bytes_per_rank(33, 3, 1, 4)[0]
    np.testing.assert_array_equal(res.bytes_sent, sent)
    assert res.elapsed.shape == (3, 3)
