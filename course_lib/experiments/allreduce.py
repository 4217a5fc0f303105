"""Lessons 06 and 07's experiments: all-reduces on real processes, counted and timed.

``measured_bytes`` runs the ring and the parameter server on P processes and
puts the bytes each rank sent beside the lecture's formulas (lesson 06).
``sweep`` times every implementation the way nccl-tests reports them, algbw
and busbw (lesson 07, ``make bench``). Both return rows (dicts), which
``course_lib.viz.distributed`` shows as tables. nccl-tests (``all_reduce_perf``)
prints, for a message of ``nbytes`` bytes reduced in t seconds,

    algbw = nbytes / t                    what the application sees
    busbw = algbw * 2(P - 1)/P            the bytes each rank's link really carried per second

The factor 2(P-1)/P is the ring's (lecture 5: each process sends 2N(P-1)/P),
so busbw is comparable across P and with the hardware's peak bandwidth.

``sweep`` runs every method at every size and world size, all in one run
(ratios between methods are only meaningful within one run), interleaving
the methods, and checks each output against the float64 sum as it goes.
"""

from __future__ import annotations

import time

import numpy as np

from course_lib.distributed.collectives import ring_allreduce_, two_level_allreduce_
from course_lib.distributed.cost import ps_bytes_per_rank, ring_bytes_per_rank, ring_time, two_level_time
from course_lib.machinery.launch import allreduce
from course_lib.machinery.links import with_links
from course_lib.machinery.recording import run_recorded

METHODS = ("ring/shm", "ring/pipe", "ps/shm", "ps/pipe", "gloo")


def measured_bytes(cases, transport: str = "shm", seed: int = 0) -> list[dict]:
    """Run real all-reduces and put the bytes each process sent beside the formulas.

    cases : iterable of (N, P); each runs algorithm "ring" and "ps" on P processes
    Returns rows with N, P, algorithm, ``measured`` and ``formula`` (int64 arrays (P,)
    of bytes sent per rank) and ``server`` (PS: bytes through rank 0, sent + received).
    """
    rng, rows = np.random.default_rng(seed), []
    for N, P in cases:
        arrays = [rng.standard_normal(N).astype(np.float32) for _ in range(P)]
        for algorithm in ("ring", "ps"):
            res = allreduce(arrays, algorithm=algorithm, transport=transport)
            formula = (ring_bytes_per_rank(N, P, 4) if algorithm == "ring"
                       else ps_bytes_per_rank(N, P, 1, 4)[0])
            rows.append({"N": N, "P": P, "algorithm": algorithm, "measured": res.bytes_sent,
                         "formula": formula, "server": int(res.bytes_sent[0] + res.bytes_received[0]),
                         "outputs_ok": all(np.allclose(o, np.sum(arrays, axis=0), rtol=1e-5, atol=1e-5)
                                           for o in res.outputs)})
    return rows


def bus_bandwidth(nbytes: int, seconds: float, world_size: int) -> tuple[float, float]:
    """(algbw, busbw) in bytes per second: ``nbytes / t`` and ``nbytes / t * 2(P-1)/P``."""
    algbw = nbytes / seconds
    return algbw, algbw * 2 * (world_size - 1) / world_size


def default_repeats(nbytes: int) -> int:
    """Enough back-to-back collectives for a stable median without a slow sweep."""
    return int(np.clip(2 ** 24 // max(nbytes, 1), 5, 200))


def run_method(method: str, arrays, repeats: int, timeout: float = 120.0):
    """One method ("ring/shm", ..., "gloo") on ``arrays``; returns the AllreduceResult."""
    if method == "gloo":
        from course_lib.machinery.torch_launch import torch_allreduce
        return torch_allreduce(arrays, backend="gloo", repeats=repeats, timeout=timeout)
    algorithm, transport = method.split("/")
    return allreduce(arrays, algorithm=algorithm, transport=transport, repeats=repeats, timeout=timeout)


def sweep(sizes, world_sizes, methods=METHODS, *, seed: int = 0, repeats=None, rounds: int = 3,
          dtype=np.float32) -> list[dict]:
    """Median time, algbw and busbw of every method, size (bytes) and world size.

    Each (size, P) runs the methods in turn, ``rounds`` times, each time for
    about ``repeats / rounds`` back-to-back collectives after one warm-up; a
    method's time is the median over all of them of the slowest rank's time. Interleaving keeps a
    burst of load on a shared machine from falling on one method only.

    Returns a list of dicts with keys method, P, nbytes, time (s, the median), time_q25 and
    time_q75 (s, the interquartile range of the samples: where two methods' ranges overlap,
    their order is noise), samples, algbw, busbw (bytes/s), max_error (vs the float64 sum)
    and identical (all ranks bit-identical).
    """
    rng, itemsize = np.random.default_rng(seed), np.dtype(dtype).itemsize
    rows = []
    for P in world_sizes:
        for nbytes in sizes:
            N = nbytes // itemsize
            arrays = [rng.standard_normal(N, dtype=np.float64).astype(dtype) for _ in range(P)]
            exact = np.sum(np.stack(arrays).astype(np.float64), axis=0)          # (N,)
            per_round = max(3, -(-(repeats or default_repeats(nbytes)) // rounds))
            samples = {m: [] for m in methods}
            errors = {m: 0.0 for m in methods}
            identical = {m: True for m in methods}
            for _ in range(rounds):
                for method in methods:
                    res = run_method(method, arrays, per_round + 1)     # the first one warms up
                    samples[method].extend(res.elapsed[1:].max(axis=1))
                    errors[method] = max(errors[method], *(float(np.abs(o - exact).max(initial=0))
                                                           for o in res.outputs))
                    identical[method] &= all(np.array_equal(o, res.outputs[0]) for o in res.outputs)
            for method in methods:
                q25, seconds, q75 = (float(q) for q in np.percentile(samples[method], [25, 50, 75]))
                algbw, busbw = bus_bandwidth(N * itemsize, seconds, P)
                rows.append(dict(method=method, P=P, nbytes=N * itemsize, time=seconds, time_q25=q25,
                                 time_q75=q75, samples=len(samples[method]), algbw=algbw, busbw=busbw,
                                 max_error=errors[method], identical=identical[method]))
    return rows



def flat_vs_two_level(N: int, world_size: int, local_size: int, intra: tuple[float, float],
                      inter: tuple[float, float], repeats: int = 3, seed: int = 0) -> list[dict]:
    """The flat ring and the two-level all-reduce on emulated links (lesson 7, section 5).

    Runs both on ``world_size`` threads (``run_recorded``) whose steps sleep for their messages'
    alpha-beta cost (``machinery.links``): ``intra`` = (alpha, beta) inside a node of
    ``local_size`` ranks, ``inter`` between nodes. Checks every rank's sum against the float64
    sum; counts the bytes each rank sent inside its node and across; times ``repeats`` runs.

    Returns
    -------
    rows : one dict per method: method, nbytes (4N), measured_s (median), model_s, and the largest
        intra_bytes / inter_bytes a rank sent (float32 elements)
    """
    arrays = list(np.random.default_rng(seed).standard_normal((world_size, N)).astype(np.float32))
    expected = np.sum(np.array(arrays, dtype=np.float64), axis=0)
    methods = {"flat ring": (ring_allreduce_, (), ring_time(N, world_size, *inter)),
               "two-level": (two_level_allreduce_, (local_size,),
                             two_level_time(N, world_size, local_size, intra, inter))}
    rows = []
    for name, (fn, args, model) in methods.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            outputs, log = run_recorded(with_links(fn, local_size, intra, inter), arrays, *args, timeout=60)
            times.append(time.perf_counter() - start)
        if not all(np.allclose(out, expected, rtol=1e-4, atol=1e-4 * world_size) for out in outputs):
            raise AssertionError(f"{name}: a rank's result differs from the float64 sum")
        within, across = log.sent_within_and_across(local_size)
        rows.append({"method": name, "nbytes": 4 * N, "measured_s": float(np.median(times)), "model_s": model,
                     "intra_bytes": int(within.max()), "inter_bytes": int(across.max())})
    return rows
