"""The two-level all-reduce (Goyal et al. 2017): sums, bytes inside and between nodes, steps, emulated links."""

from __future__ import annotations

import numpy as np
import pytest

from course_lib.distributed.collectives import ring_allreduce_, two_level_allreduce_
from course_lib.distributed.cost import ring_bytes_per_rank, ring_time, two_level_bytes_per_rank, two_level_time
from course_lib.experiments.allreduce import flat_vs_two_level
from course_lib.machinery.launch import allreduce
from course_lib.machinery.links import ChargedEndpoint, with_links
from course_lib.machinery.recording import run_recorded


def _arrays(P, N, seed=0, dtype=np.float64):
    return list(np.random.default_rng(seed).standard_normal((P, N)).astype(dtype))


@pytest.mark.parametrize("P, L, N", [(8, 4, 1000), (8, 2, 37), (6, 3, 5), (6, 2, 4), (4, 2, 1), (9, 3, 100),
                                     (4, 4, 10), (4, 1, 10), (2, 1, 3)])
def test_sums_bytes_and_steps(P, L, N):
    arrays = _arrays(P, N)
    outputs, log = run_recorded(two_level_allreduce_, arrays, L)
    np.testing.assert_allclose(outputs[0], np.sum(arrays, axis=0), rtol=1e-12, atol=1e-12)
    assert all(np.array_equal(out, outputs[0]) for out in outputs), "every rank holds the same bits"
    M = P // L
    assert log.steps == 2 * (L - 1) + 2 * (M - 1)
    intra, inter = log.sent_within_and_across(L)
    want_intra, want_inter = two_level_bytes_per_rank(N, P, L, itemsize=8)
    assert intra.tolist() == want_intra.tolist() and inter.tolist() == want_inter.tolist()
    for t in log:                                   # between nodes: only to the same local rank
        assert t.src // L == t.dst // L or t.src % L == t.dst % L, t


def test_the_formulas_when_every_division_is_exact():
    N, P, L = 4800, 12, 4
    intra, inter = two_level_bytes_per_rank(N, P, L, itemsize=4)
    assert set(intra.tolist()) == {4 * 2 * N * (L - 1) // L}
    assert set(inter.tolist()) == {4 * 2 * (N // L) * (P // L - 1) // (P // L)}
    flat = ring_bytes_per_rank(N, P, itemsize=4)
    assert (intra + inter).sum() < flat.sum() + 1     # never more bytes in total than the flat ring


@pytest.mark.parametrize("P, L", [(4, 4), (4, 1)])
def test_one_node_or_one_rank_per_node_is_the_flat_ring(P, L):
    arrays = _arrays(P, 50, seed=1, dtype=np.float32)
    flat, flat_log = run_recorded(ring_allreduce_, arrays)
    two, two_log = run_recorded(two_level_allreduce_, arrays, L)
    assert all(np.array_equal(a, b) for a, b in zip(flat, two))
    assert [(t.step, t.src, t.dst, t.nbytes) for t in flat_log] == [(t.step, t.src, t.dst, t.nbytes) for t in two_log]


@pytest.mark.parametrize("L", [3, 0, 5])
def test_local_size_must_divide_world_size(L):
    with pytest.raises(ValueError, match="local_size"):
        run_recorded(two_level_allreduce_, _arrays(4, 10), L)


def test_time_model():
    intra, inter = (1e-5, 1e-9), (1e-3, 1e-7)
    N, P, L = 1 << 20, 8, 4
    expected = 2 * 3 * (1e-5 + N / 4 * 4 * 1e-9) + 2 * 1 * (1e-3 + N / 8 * 4 * 1e-7)
    assert two_level_time(N, P, L, intra, inter) == pytest.approx(expected)
    assert two_level_time(N, P, L, intra, inter) < ring_time(N, P, *inter) / 4
    assert two_level_time(N, P, P, intra, inter) == pytest.approx(ring_time(N, P, *intra))


def test_links_charge_each_message_by_where_it_goes():
    class Stub:
        rank, world_size, buffer = 1, 4, np.zeros(100, np.float32)
    ep = ChargedEndpoint(Stub(), 2, intra=(1.0, 0.01), inter=(10.0, 0.1))
    assert ep.cost([(0, 0, 10)]) == pytest.approx(1.0 + 40 * 0.01)          # rank 0: same node
    assert ep.cost([(2, 0, 10), (3, 5, 5)]) == pytest.approx(10.0 + 40 * 0.1)   # empty region: free
    assert with_links(ring_allreduce_, 2, (0, 0), (0, 0)).__name__ == "ring_allreduce__on_links"


def test_on_emulated_links_each_run_takes_at_least_the_model():
    """The sleeps make the model a lower bound; by how much two levels win is shown in lesson 7, not timed here."""
    rows = {r["method"]: r for r in flat_vs_two_level(16384, 8, 4, intra=(0.2e-3, 1e-9), inter=(2e-3, 2e-8),
                                                     repeats=1)}
    flat, two = rows["flat ring"], rows["two-level"]
    assert flat["model_s"] > 4 * two["model_s"]
    assert flat["measured_s"] >= flat["model_s"] and two["measured_s"] >= two["model_s"]   # sleeps at least that
    assert two["inter_bytes"] == two_level_bytes_per_rank(16384, 8, 4, itemsize=4)[1].max()
    assert flat["inter_bytes"] == ring_bytes_per_rank(16384, 8, itemsize=4).max()


@pytest.mark.slow
def test_on_real_processes():
    arrays = _arrays(4, 1001, seed=2, dtype=np.float32)
    result = allreduce(arrays, algorithm="two_level", local_size=2, timeout=60)
    np.testing.assert_allclose(result.outputs[0], np.sum(arrays, axis=0), rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(out, result.outputs[0]) for out in result.outputs)
    intra, inter = two_level_bytes_per_rank(1001, 4, 2, itemsize=4)
    assert result.bytes_sent.tolist() == (intra + inter).tolist()
    with pytest.raises(ValueError, match="local_size"):
        allreduce(arrays, algorithm="two_level", local_size=3)
    with pytest.raises(ValueError, match="local_size"):
        allreduce(arrays, algorithm="ring", local_size=2)
