"""Time all-reduce implementations the way nccl-tests reports them: algbw and busbw.

nccl-tests (``all_reduce_perf``) prints, for a message of S bytes reduced in t seconds,

    algbw = S / t                         what the application sees
    busbw = algbw * 2(P - 1)/P            the bytes each rank's link really carried per second

The factor 2(P-1)/P is the ring's (lecture 5: each process sends 2N(P-1)/P),
so busbw is comparable across P and with the hardware's peak bandwidth.

``sweep`` runs every method at every size and world size, all in one run
(ratios between methods are only meaningful within one run), interleaving
the methods, and checks each output against the float64 sum as it goes.
"""

from __future__ import annotations

import numpy as np

from .runner import allreduce

METHODS = ("ring/shm", "ring/pipe", "ps/shm", "ps/pipe", "gloo")


def bus_bandwidth(nbytes: int, seconds: float, world_size: int) -> tuple[float, float]:
    """(algbw, busbw) in bytes per second: ``S / t`` and ``S / t * 2(P-1)/P``."""
    algbw = nbytes / seconds
    return algbw, algbw * 2 * (world_size - 1) / world_size


def default_repeats(nbytes: int) -> int:
    """Enough back-to-back collectives for a stable median without a slow sweep."""
    return int(np.clip(2 ** 24 // max(nbytes, 1), 5, 200))


def run_method(method: str, arrays, repeats: int, timeout: float = 120.0):
    """One method ("ring/shm", ..., "gloo") on ``arrays``; returns the AllreduceResult."""
    if method == "gloo":
        from .torch_dist import torch_allreduce
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

    Returns a list of dicts with keys method, P, nbytes, time (s), algbw, busbw (bytes/s),
    max_error (vs the float64 sum) and identical (all ranks bit-identical).
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
                seconds = float(np.median(samples[method]))
                algbw, busbw = bus_bandwidth(N * itemsize, seconds, P)
                rows.append(dict(method=method, P=P, nbytes=N * itemsize, time=seconds, algbw=algbw,
                                 busbw=busbw, max_error=errors[method], identical=identical[method]))
    return rows


def format_table(rows) -> str:
    """The sweep as an nccl-tests-like text table (sizes in bytes, time in microseconds, GB/s)."""
    lines = [f"{'bytes':>10} {'P':>2} {'method':<10} {'time (us)':>11} {'algbw (GB/s)':>13} {'busbw (GB/s)':>13}"]
    for r in rows:
        lines.append(f"{r['nbytes']:>10} {r['P']:>2} {r['method']:<10} {r['time'] * 1e6:>11.1f} "
                     f"{r['algbw'] / 1e9:>13.3f} {r['busbw'] / 1e9:>13.3f}")
    return "\n".join(lines)
