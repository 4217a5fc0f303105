"""The recording transport: collectives on P threads of one process, and a log of every transfer.

``course_lib.machinery.recording.run_recorded`` must run the kit's collectives
unchanged, with the results the simulator and the real transports give (bit for
bit), count exactly the bytes ``cost.py`` predicts, and report, never hang on,
what goes wrong: ranks that disagree about a step, different step counts, an
exception on one rank, a rank that never arrives.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from course_lib.distributed.collectives import ps_allreduce_, ring_allreduce_
from course_lib.distributed.cost import ps_bytes_per_rank, ring_bytes_per_rank
from course_lib.distributed.simulate import simulate_ring_allreduce
from course_lib.machinery.recording import StepMismatch, Transfer, TransferLog, run_recorded

pytestmark = pytest.mark.timeout(60)


def _arrays(P, N, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [(10 * rng.standard_normal(N)).astype(dtype) for _ in range(P)]


# ---------------------------------------------------------------- the kit's collectives, unchanged

@settings(max_examples=25, deadline=None)
@given(P=st.integers(1, 7), N=st.integers(1, 40), dtype=st.sampled_from([np.float32, np.float64, np.int64]))
def test_ring_gives_the_simulators_bits_and_the_formulas_bytes(P, N, dtype):
    arrays = _arrays(P, N, dtype, seed=P * 100 + N)
    outputs, log = run_recorded(ring_allreduce_, arrays)
    expected = simulate_ring_allreduce(arrays).outputs
    for out in outputs:
        assert out.dtype == arrays[0].dtype and np.array_equal(out, expected[0])
    assert log.steps == 2 * (P - 1)
    itemsize = np.dtype(dtype).itemsize
    assert np.array_equal(log.sent_per_rank(), ring_bytes_per_rank(N, P, itemsize))
    assert np.array_equal(log.received_per_rank(), np.roll(log.sent_per_rank(), 1))   # from the left
    assert all(t.dst == (t.src + 1) % P for t in log)                                  # only to the right
    assert all(t.nbytes == (t.stop - t.start) * itemsize > 0 for t in log)


@pytest.mark.parametrize("P, N, shards", [(1, 5, 1), (2, 9, 1), (4, 10, 1), (4, 10, 2), (5, 3, 5)])
def test_parameter_server_bytes_per_rank(P, N, shards):
    arrays = _arrays(P, N)
    outputs, log = run_recorded(ps_allreduce_, arrays, shards=shards)
    exact = np.sum(np.stack(arrays).astype(np.float64), axis=0)
    assert all(np.allclose(out, exact, atol=1e-4) for out in outputs)
    sent, received = ps_bytes_per_rank(N, P, shards, itemsize=4)
    assert np.array_equal(log.sent_per_rank(), sent) and np.array_equal(log.received_per_rank(), received)
    assert log.steps == (2 if P > 1 else 0)


def test_inputs_are_not_modified_and_outputs_are_copies():
    arrays = _arrays(3, 7)
    before = [a.copy() for a in arrays]
    outputs, _ = run_recorded(ring_allreduce_, arrays)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, before))
    assert all(not np.shares_memory(out, a) for out in outputs for a in arrays)


def test_one_rank_sends_nothing():
    outputs, log = run_recorded(ring_allreduce_, [np.arange(4.0)])
    assert np.array_equal(outputs[0], np.arange(4.0)) and log.steps == 0 and log == []
    assert log.sent_per_rank().tolist() == [0]


def test_the_log_is_sorted_and_prints_as_a_table():
    _, log = run_recorded(ring_allreduce_, [np.arange(5.0)] * 3)
    assert log == sorted(log) and isinstance(log[0], Transfer)
    assert [(t.step, t.src, t.dst) for t in log.at(0)] == [(0, 0, 1), (0, 1, 2), (0, 2, 0)]
    text = str(log)
    assert text.splitlines()[0] == "4 steps, 12 transfers, P = 3"
    assert "   0    0 -> 1         16   [0:2]" in text


def test_transfer_log_counts_by_rank():
    log = TransferLog([Transfer(1, 0, 1, 8, 0, 2), Transfer(0, 1, 0, 4, 2, 3)], steps=2, world_size=2)
    assert log[0].step == 0 and log.sent_per_rank().tolist() == [8, 4]
    assert log.received_per_rank().tolist() == [4, 8]


# ---------------------------------------------------------------- what a step carries

def test_received_arrays_are_read_only_copies_of_what_was_sent():
    seen = {}

    def swap(endpoint, count):
        other = 1 - endpoint.rank
        (got,) = endpoint.step(sends=[(other, 0, count)], recvs=[(other, count)])
        endpoint.buffer[:] = -1                    # changing my buffer does not change what I sent
        seen[endpoint.rank] = got
    run_recorded(swap, [np.zeros(3), np.ones(3)])
    assert seen[0].tolist() == [1, 1, 1] and seen[1].tolist() == [0, 0, 0]
    assert not seen[0].flags.writeable


def test_empty_regions_are_skipped_and_zero_counts_return_empty_arrays():
    def empty(endpoint, count):
        other = 1 - endpoint.rank
        got = endpoint.step(sends=[(other, 2, 2)], recvs=[(other, 0)])
        assert got[0].size == 0 and endpoint.bytes_sent == 0
    _, log = run_recorded(empty, [np.zeros(3)] * 2)
    assert log == [] and log.steps == 1


def test_byte_counters_on_the_endpoint():
    counts = {}

    def ring(endpoint, count):
        ring_allreduce_(endpoint, count)
        counts[endpoint.rank] = (endpoint.steps, endpoint.bytes_sent, endpoint.bytes_received)
    _, log = run_recorded(ring, _arrays(4, 10))
    assert [counts[r][1] for r in range(4)] == log.sent_per_rank().tolist()
    assert [counts[r][2] for r in range(4)] == log.received_per_rank().tolist()
    assert {counts[r][0] for r in range(4)} == {6}


# ---------------------------------------------------------------- what goes wrong is reported

def test_a_send_nobody_receives_is_a_mismatch():
    def one_way(endpoint, count):
        right = (endpoint.rank + 1) % endpoint.world_size
        endpoint.step(sends=[(right, 0, 2)], recvs=[(right, 2)])     # receives from the wrong side
    with pytest.raises(StepMismatch, match=r"step 0: rank 0 sends \[0:2\] \(2 elements\) to rank 1, "
                                           r"which receives nothing from rank 0"):
        run_recorded(one_way, [np.zeros(4)] * 3)


def test_sizes_that_differ_are_a_mismatch():
    def sizes(endpoint, count):
        other = 1 - endpoint.rank
        endpoint.step(sends=[(other, 0, 2)], recvs=[(other, 3)])
    with pytest.raises(StepMismatch, match=r"rank 1 expects 3 elements from rank 0, which sends \[0:2\]"):
        run_recorded(sizes, [np.zeros(4)] * 2)


def test_a_receive_without_its_send_is_a_mismatch():
    def deaf(endpoint, count):
        endpoint.step(recvs=[(1, 2)] if endpoint.rank == 0 else [])
    with pytest.raises(StepMismatch, match=r"rank 0 expects 2 elements from rank 1, which sends it nothing"):
        run_recorded(deaf, [np.zeros(4)] * 2)


def test_different_step_counts_are_a_mismatch_with_the_counts():
    def uneven(endpoint, count):
        for _ in range(2 + (endpoint.rank == 1)):
            endpoint.step()
    start = time.monotonic()
    with pytest.raises(StepMismatch, match=r"called it \[2, 3, 2\] times"):
        run_recorded(uneven, [np.zeros(2)] * 3, timeout=5.0)
    assert time.monotonic() - start < 2.0          # released at once, not after the time-out


def test_an_exception_on_one_rank_is_raised_with_its_type_and_rank():
    def fails(endpoint, count):
        endpoint.step()
        if endpoint.rank == 2:
            raise IndexError("rank two fails")
        endpoint.step()
    start = time.monotonic()
    with pytest.raises(IndexError, match="rank two fails") as info:
        run_recorded(fails, [np.zeros(2)] * 4, timeout=5.0)
    if sys.version_info >= (3, 11):                # exceptions have notes from 3.11 on
        assert "(raised on rank 2 of 4)" in info.value.__notes__
    assert time.monotonic() - start < 2.0


def test_the_lowest_failing_rank_is_reported():
    def fails(endpoint, count):
        raise ValueError(f"rank {endpoint.rank}")
    with pytest.raises(ValueError, match="rank 0"):
        run_recorded(fails, [np.zeros(2)] * 3)


def test_except_exception_in_the_collective_does_not_swallow_the_release():
    def stubborn(endpoint, count):
        if endpoint.rank == 0:
            raise KeyError("gone")
        try:
            endpoint.step()
        except Exception:                          # noqa: BLE001 - what a student might write
            pass
    with pytest.raises(KeyError):
        run_recorded(stubborn, [np.zeros(2)] * 2, timeout=5.0)


@pytest.mark.parametrize("sends, recvs, match", [
    ([(0, 0, 1)], [], "send to each other rank at most once"),       # to itself
    ([(5, 0, 1)], [], "send to each other rank at most once"),       # no such rank
    ([], [(1, 1), (1, 1)], "receive from each other rank at most once"),
    ([(1, 2, 9)], [], "outside the buffer of 4 elements"),
])
def test_bad_arguments_raise_value_errors(sends, recvs, match):
    def bad(endpoint, count):
        endpoint.step(sends=sends if endpoint.rank == 0 else [], recvs=recvs if endpoint.rank == 0 else [])
    with pytest.raises(ValueError, match=match):
        run_recorded(bad, [np.zeros(4)] * 2)


def test_a_rank_that_never_steps_times_out():
    release = threading.Event()

    def late(endpoint, count):
        if endpoint.rank == 1:
            release.wait(10)                       # ends once the test is done
        endpoint.step()
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match=r"rank\(s\) \[1\]"):
            run_recorded(late, [np.zeros(2)] * 3, timeout=0.3)
    finally:
        release.set()
    assert time.monotonic() - start < 5.0


def test_inputs_must_match():
    with pytest.raises(ValueError, match="one shape and dtype"):
        run_recorded(ring_allreduce_, [np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="P >= 1 arrays"):
        run_recorded(ring_allreduce_, [])
