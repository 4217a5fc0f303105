"""course_lib.distributed's pure parts: the ring schedule, the simulator, the cost formulas.

No processes here: these run in well under a second.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from course_lib.distributed.cost import (cost_rows, duplex_timeline, ps_bytes_at_server, ps_bytes_per_rank,
                                         ps_ring_ratio, ps_time, ring_bytes_per_rank, ring_time)
from course_lib.distributed.schedule import allgather_step, chunk_bounds, ring_schedule, scatter_reduce_step
from course_lib.distributed.simulate import simulate_ring_allreduce

FEW = settings(max_examples=30, deadline=None)


# ---------------------------------------------------------------- chunk_bounds

def test_chunk_bounds_by_hand():
    assert chunk_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert chunk_bounds(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert chunk_bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]   # N < P: empty chunks at the end
    assert chunk_bounds(5, 1) == [(0, 5)]


@FEW
@given(N=st.integers(0, 1000), P=st.integers(1, 16))
def test_chunk_bounds_cover_and_balance(N, P):
    bounds = chunk_bounds(N, P)
    sizes = [b - a for a, b in bounds]
    assert len(bounds) == P and bounds[0][0] == 0 and bounds[-1][1] == N
    assert all(bounds[c][1] == bounds[c + 1][0] for c in range(P - 1)), "chunks must be contiguous"
    assert max(sizes) - min(sizes) <= 1, f"sizes {sizes} differ by more than one"
    assert sizes == [len(part) for part in np.array_split(np.arange(N), P)]


@pytest.mark.parametrize("args, error", [((-1, 2), ValueError), ((4, 0), ValueError),
                                         ((4.0, 2), TypeError), ((4, True), TypeError)])
def test_chunk_bounds_errors(args, error):
    with pytest.raises(error):
        chunk_bounds(*args)


# ---------------------------------------------------------------- the schedule

def test_steps_by_hand_P4():
    # scatter-reduce: rank r sends chunk r - k, receives r - k - 1 (mod 4)
    assert [scatter_reduce_step(r, 0, 4) for r in range(4)] == [(0, 3), (1, 0), (2, 1), (3, 2)]
    assert [scatter_reduce_step(r, 2, 4) for r in range(4)] == [(2, 1), (3, 2), (0, 3), (1, 0)]
    # allgather: step 0 sends the chunk completed by scatter-reduce, r + 1
    assert [allgather_step(r, 0, 4) for r in range(4)] == [(1, 0), (2, 1), (3, 2), (0, 3)]
    assert [allgather_step(r, 2, 4) for r in range(4)] == [(3, 2), (0, 3), (1, 0), (2, 1)]


@FEW
@given(P=st.integers(2, 12), data=st.data())
def test_each_step_is_a_ring_shift(P, data):
    k = data.draw(st.integers(0, P - 2))
    for step_fn in (scatter_reduce_step, allgather_step):
        sends = [step_fn(r, k, P)[0] for r in range(P)]
        recvs = [step_fn(r, k, P)[1] for r in range(P)]
        assert sorted(sends) == list(range(P)), "every chunk is sent by exactly one rank per step"
        for r in range(P):     # what r receives is what its left neighbour sends
            assert recvs[r] == sends[(r - 1) % P]


@pytest.mark.parametrize("rank, step, P", [(4, 0, 4), (0, 3, 4), (0, 0, 1), (-1, 0, 3)])
def test_step_errors(rank, step, P):
    with pytest.raises(ValueError):
        scatter_reduce_step(rank, step, P)
    with pytest.raises(ValueError):
        allgather_step(rank, step, P)


def test_ring_schedule_table():
    rows = ring_schedule(4)
    assert len(rows) == 2 * 3 * 4
    assert rows[0].phase == "scatter-reduce" and rows[-1].phase == "allgather"
    assert all(r.dst == (r.rank + 1) % 4 and r.src == (r.rank - 1) % 4 for r in rows)
    text = str(rows).splitlines()
    assert len(text) == 1 + 24 and "sends chunk" in text[0]
    assert ring_schedule(1) == []


# ---------------------------------------------------------------- the simulator

def _exact_sum(arrays):
    return np.sum(np.stack(arrays).astype(np.float64), axis=0)


@FEW
@given(P=st.integers(1, 8), N=st.integers(0, 40), seed=st.integers(0, 2**32 - 1))
def test_simulator_sums_float_and_matches_torch(P, N, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(N).astype(np.float32) for _ in range(P)]
    trace = simulate_ring_allreduce(arrays)
    reference = torch.stack([torch.from_numpy(a) for a in arrays]).sum(0).numpy()
    for r in range(P):
        np.testing.assert_allclose(trace.outputs[r], _exact_sum(arrays), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(trace.outputs[r], reference, rtol=1e-5, atol=1e-5)
        assert np.array_equal(trace.outputs[r], trace.outputs[0]), f"rank {r} differs from rank 0 in its bits"


@FEW
@given(P=st.integers(1, 8), N=st.integers(0, 40), seed=st.integers(0, 2**32 - 1))
def test_simulator_contributions(P, N, seed):
    arrays = [np.random.default_rng(seed).integers(-5, 5, N) for _ in range(P)]
    trace = simulate_ring_allreduce(arrays)
    T = 2 * (P - 1) + 1
    assert trace.buffers.shape == (T, P, N) and trace.contributions.shape == (T, P, P) and len(trace.labels) == T
    assert (trace.contributions[0] == 1).all() and (trace.contributions[-1] == P).all()
    after_scatter = trace.contributions[P - 1]                 # rank r owns the complete chunk r + 1
    for r in range(P):
        assert after_scatter[r, (r + 1) % P] == P
    assert (np.diff(trace.contributions, axis=0) >= 0).all(), "a chunk never loses contributions"
    for t in range(T):    # a chunk holding all P contributions holds the exact sum (integers: exact)
        for r, c in zip(*np.nonzero(trace.contributions[t] == P)):
            a, b = trace.bounds[c]
            assert np.array_equal(trace.buffers[t, r, a:b], np.sum(arrays, axis=0)[a:b])


def test_simulator_first_step_by_hand():
    arrays = [np.full(3, 10.0 ** r) for r in range(3)]     # rank r holds 10^r: 1, 10, 100
    trace = simulate_ring_allreduce(arrays)
    # scatter-reduce step 0: rank 1 receives chunk 0 from rank 0 and adds: 10 + 1
    assert trace.buffers[1, 1].tolist() == [11.0, 10.0, 10.0]
    assert trace.transfers[1] == [(2, 0, 2), (0, 1, 0), (1, 2, 1)]
    assert trace.outputs.tolist() == [[111.0] * 3] * 3


def test_simulator_rejects_bad_input():
    with pytest.raises(ValueError, match="rank 1 has"):
        simulate_ring_allreduce([np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="empty"):
        simulate_ring_allreduce([])


# ---------------------------------------------------------------- cost formulas

@FEW
@given(N=st.integers(0, 10_000), P=st.integers(1, 16), itemsize=st.sampled_from([1, 4, 8]))
def test_ring_bytes_exact(N, P, itemsize):
    sent = ring_bytes_per_rank(N, P, itemsize)
    assert sent.shape == (P,)
    assert sent.sum() == 2 * N * (P - 1) * itemsize            # mean is exactly 2N(P-1)/P
    if N % P == 0:
        assert (sent == 2 * N * (P - 1) // P * itemsize).all()
    assert sent.max() - sent.min() <= 2 * itemsize


@FEW
@given(N=st.integers(0, 60), P=st.integers(1, 8))
def test_ring_bytes_equal_the_simulated_transfers(N, P):
    trace = simulate_ring_allreduce([np.zeros(N)] * P)
    sent = np.zeros(P, dtype=np.int64)
    for moves in trace.transfers:
        for src, _, chunk in moves:
            a, b = trace.bounds[chunk]
            sent[src] += b - a
    assert np.array_equal(sent, ring_bytes_per_rank(N, P))


def test_ps_bytes():
    assert ps_bytes_at_server(1000, 4, itemsize=4) == 2 * 1000 * 3 * 4
    sent, received = ps_bytes_per_rank(1000, 4)
    assert sent.tolist() == [3000, 1000, 1000, 1000]
    assert sent[0] + received[0] == ps_bytes_at_server(1000, 4)
    sent, received = ps_bytes_per_rank(10, 4, shards=4)       # shards 3, 3, 2, 2
    assert sent.tolist() == [3 * 3 + 7, 3 * 3 + 7, 3 * 2 + 8, 3 * 2 + 8]
    with pytest.raises(ValueError, match=r"shards = 3 must be <= 2 \(world_size = 2: shard s is served by rank s\)"):
        ps_bytes_per_rank(10, 2, shards=3)


@FEW
@given(N=st.integers(1, 10_000), P=st.integers(2, 64), itemsize=st.sampled_from([1, 4, 8]))
def test_cost_rows_follow_the_lecture(N, P, itemsize):
    (row,) = cost_rows(N, [P], itemsize)
    assert row["ps_server"] == 2 * N * (P - 1) * itemsize                     # 2N(P-1)
    assert row["ring_per_rank"] == pytest.approx(2 * N * (P - 1) / P * itemsize)   # 2N(P-1)/P
    assert row["ratio"] == pytest.approx(P)


@pytest.mark.parametrize("P", [2, 3, 4, 5, 8])
def test_duplex_timeline_is_consistent(P):
    for mode, length in (("overlapped", 1), ("send-then-receive", 2 if P % 2 == 0 else 3)):
        rows = duplex_timeline(P, mode)
        send = {r: (s, e) for r, kind, s, e in rows if kind == "send"}
        recv = {r: (s, e) for r, kind, s, e in rows if kind == "recv"}
        for r in range(P):
            assert recv[(r + 1) % P] == send[r], (mode, r)            # my send is my right neighbour's receive
            if mode == "send-then-receive":                            # one thing at a time
                assert send[r][1] <= recv[r][0] or recv[r][1] <= send[r][0], (P, r, send[r], recv[r])
        assert max(e for *_, e in rows) == length
    with pytest.raises(ValueError, match="world_size = 1 must be >= 2"):
        duplex_timeline(1, "overlapped")
    with pytest.raises(ValueError, match="mode must be"):
        duplex_timeline(4, "half")


def test_time_models():
    N, alpha, beta = 1_000_000, 1e-5, 1e-9
    assert ring_time(N, 4, alpha, beta) == pytest.approx(6 * (alpha + N / 4 * 4 * beta))
    assert ps_time(N, 4, alpha, beta) == pytest.approx(6 * (alpha + N * 4 * beta))
    assert ps_time(N, 4, alpha, beta, shards=4) == pytest.approx(ring_time(N, 4, alpha, beta))
    P = np.arange(2, 65)
    np.testing.assert_allclose(ps_ring_ratio(N, P, 0.0, beta), P)   # bandwidth-bound: ratio = P
    assert ps_ring_ratio(1, 64, 1.0, 1e-12) == pytest.approx(1.0, rel=1e-6)   # latency-bound: 1
    assert ps_ring_ratio(N, 8, alpha, beta) == pytest.approx(ps_time(N, 8, alpha, beta) / ring_time(N, 8, alpha, beta))
    with pytest.raises(ValueError, match="world_size >= 2"):
        ps_ring_ratio(N, 1, alpha, beta)


# --------------------------------------------------------------------------
# ---- behaviour pinned down by mutation testing
# --------------------------------------------------------------------------

def test_ring_schedule_prints_the_documented_table():
    # the table of ring_schedule's docstring, row by row: rank 0 before rank 1, send before receive
    expected = """phase           step  rank   sends chunk -> to   receives chunk <- from
                  scatter-reduce     0     0        0   ->   1            1   <-   1
                  scatter-reduce     0     1        1   ->   0            0   <-   0
                  allgather          0     0        1   ->   1            0   <-   1
                  allgather          0     1        0   ->   0            1   <-   0"""
    assert [row.split() for row in str(ring_schedule(2)).splitlines()] == [row.split() for row in expected.splitlines()]


def test_ring_schedule_rows_are_plain_dicts_of_its_steps():
    schedule = ring_schedule(2)
    assert schedule.rows()[0] == {"phase": "scatter-reduce", "step": 0, "rank": 0, "send_chunk": 0, "dst": 1,
                                  "recv_chunk": 1, "src": 1}
    assert [tuple(row.values()) for row in schedule.rows()] == [tuple(step) for step in schedule]
    assert ring_schedule(1).rows() == []


def test_ring_schedule_rows_come_from_the_step_functions():
    rows = ring_schedule(4)
    assert [(r.phase, r.step, r.rank) for r in rows[:5]] == \
        [("scatter-reduce", 0, r) for r in range(4)] + [("scatter-reduce", 1, 0)]
    for row in rows:
        step_fn = scatter_reduce_step if row.phase == "scatter-reduce" else allgather_step
        assert (row.send_chunk, row.recv_chunk) == step_fn(row.rank, row.step, 4), row


def test_simulator_labels_name_each_step():
    trace = simulate_ring_allreduce([np.zeros(3)] * 3)
    assert trace.labels == ["start", "scatter-reduce step 0", "scatter-reduce step 1",
                            "allgather step 0", "allgather step 1"]


def test_cost_functions_check_their_inputs():
    with pytest.raises(ValueError, match="world_size = 0"):
        ring_bytes_per_rank(10, 0)
    with pytest.raises(TypeError, match="N must be an int"):
        ring_bytes_per_rank(10.5, 2)
    with pytest.raises(ValueError, match="world_size = 0"):
        ring_time(1000, 0, 1e-6, 1e-9)
    with pytest.raises(ValueError, match="shards = 0"):
        ps_time(1000, 4, 1e-6, 1e-9, shards=0)
    assert isinstance(ps_ring_ratio(1000, 4, 1e-6, 1e-9), float)        # one P: a plain float
