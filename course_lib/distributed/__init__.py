"""course_lib.distributed: how P learners sum their gradients (lecture 5, second half).

Reading order
-------------
1. ``schedule``     the ring schedule as pure functions: ``chunk_bounds``,
                    ``scatter_reduce_step``, ``allgather_step``, ``ring_schedule``.
2. ``simulate``     ``simulate_ring_allreduce``: the ring replayed in one process,
                    every rank's buffer after every step (the step-through widget).
3. ``cost``         the lecture's formulas: ring 2N(P-1)/P bytes per rank, PS
                    2N(P-1) at the server, alpha-beta times and their ratio.
4. ``transport``    pipes and shared memory; carry bytes, know no algorithm.
5. ``collectives``  ``ring_allreduce_`` and ``ps_allreduce_`` written once on a
                    transport; ``ProcessGroup`` for worker functions.
6. ``procs``        start, watch and always clean up P processes (errors name the rank).
7. ``runner``       ``allreduce(arrays, ...)`` and ``launch(fn, P, ...)`` from a notebook.
8. ``workers``      worker functions: data-parallel least squares on a ProcessGroup.
9. ``torch_dist``   the same collective through ``torch.distributed`` (gloo/NCCL),
                    ``launch_torch`` and a DistributedDataParallel worker.
10. ``measure``     algbw/busbw as nccl-tests reports them; a sweep over sizes and P.
11. ``downpour``    Downpour SGD: sharded PS with per-shard Adagrad, asynchronous
                    replicas, staleness; a seeded simulation and real processes.
12. ``compression`` sign / threshold / top-k with error feedback; bytes through ring and PS.

Symbols: ``world_size`` is the lecture's P, ``rank`` is 0 .. P-1, N is the
number of elements (model parameters) being summed.

API summary (for notebook authors)
----------------------------------
Pure, in-process (fast, deterministic)::

    chunk_bounds(N, P) -> [(start, stop)] * P           sizes differ by at most 1
    scatter_reduce_step(rank, step, P) -> (send_chunk, recv_chunk)      step in 0..P-2
    allgather_step(rank, step, P) -> (send_chunk, recv_chunk)
    print(ring_schedule(P))                              table of every step (RingStep rows)
    trace = simulate_ring_allreduce(arrays)              arrays: P same-shape ndarrays
        trace.buffers (T, P, N), trace.contributions (T, P, P) ints in 1..P (colour of chunk c
        on rank r after step t), trace.labels (T,), trace.transfers[t] = [(src, dst, chunk)],
        trace.bounds, trace.outputs (P, N);  T = 2(P-1) + 1 (t = 0 is the input)
    ring_bytes_per_rank(N, P, itemsize) -> (P,) ints     exact; mean = 2N(P-1)/P * itemsize
    ps_bytes_at_server(N, P, itemsize) -> 2N(P-1) * itemsize
    ps_bytes_per_rank(N, P, shards, itemsize) -> (sent (P,), received (P,))
    ring_time / ps_time(N, P, alpha, beta, itemsize[, shards]);  ps_ring_ratio(N, P_or_array, alpha, beta)

Real processes (each call starts P processes; fork ~10 ms, spawn ~0.5 s)::

    res = allreduce(arrays, algorithm="ring"|"ps", transport="shm"|"pipe",
                    timeout=60.0, shards=1, start_method=None, repeats=1)
        res.outputs (P arrays, the sum, bit-identical across ranks),
        res.bytes_sent / res.bytes_received (P,) for one collective: ring: bytes_sent ==
        ring_bytes_per_rank(N, P, itemsize); ps: bytes_sent[0] + bytes_received[0] == 2N(P-1)*itemsize,
        res.elapsed (repeats, P) seconds, res.time (median over repeats of the slowest rank), res.nbytes
    transports for the pipe lesson: "pipe-pickle" (pickled messages), "pipe-oddeven" (send then
        receive, half-duplex: slow), "pipe-sendfirst" (deadlocks above 1 MiB messages; the
        CollectiveError says "deadlock"). ``runner.TRANSPORTS`` lists them all.
    launch(fn, P, args=(...), transport="shm", capacity=n, dtype=np.float32) -> [fn's return] * P
        fn(pg, *args) must live in course_lib; pg.rank, pg.world_size,
        pg.allreduce_(x, algorithm="ring"), pg.broadcast_(x, root=0), pg.barrier(), pg.bytes_sent
        e.g. launch(workers.data_parallel_least_squares, 2, args=(X, y, steps, lr),
                    capacity=D, dtype=np.float64)  ==  workers.least_squares_reference(X, y, steps, lr)
    Failures raise CollectiveError (.rank, .reason in "raised" | "died" | "timeout"); no process
    or shared memory is left behind.

torch.distributed (``from course_lib.distributed.torch_dist import ...``; imports torch)::

    res = torch_allreduce(arrays, backend=None, repeats=1, timeout=120.0)
        same fields as allreduce (bytes_* are zeros: torch does not count them); res.transport
        is the backend: gloo on CPU, nccl with >= P GPUs (gloo if COURSE_DEVICE=cpu)
    launch_torch(fn, P, args=(...), backend=None) -> [fn(rank, world_size, *args)] * P
        with torch.distributed initialised in each process (fn lives in course_lib)
    ddp_linear_worker(rank, P, X, y, steps, lr) / linear_reference(X, y, steps, lr): DDP on P
        processes equals one process on the whole batch
    with seeded_torch(seed): model = ...   seeded initial weights; the caller's torch RNG is untouched

Measuring (``from course_lib.distributed.measure import ...``)::

    bus_bandwidth(nbytes, seconds, P) -> (algbw, busbw)  busbw = algbw * 2(P-1)/P (nccl-tests)
    rows = sweep(sizes_in_bytes, world_sizes, methods=("ring/shm", "ring/pipe", "ps/shm",
                 "ps/pipe", "gloo"), repeats=None)        list of dicts: method, P, nbytes, time,
                 algbw, busbw, max_error, identical;  print(format_table(rows))
    (a full sweep to 64 MiB takes minutes: in a notebook use sizes up to ~4 MiB and P = 2)
"""

from .schedule import allgather_step, chunk_bounds, ring_schedule, scatter_reduce_step
from .simulate import RingTrace, simulate_ring_allreduce
from .cost import (ps_bytes_at_server, ps_bytes_per_rank, ps_ring_ratio, ps_time,
                   ring_bytes_per_rank, ring_time)
from .collectives import ProcessGroup, ps_allreduce_, ring_allreduce_
from .procs import CollectiveError
from .runner import AllreduceResult, allreduce, launch, TRANSPORTS

__all__ = [
    "chunk_bounds", "scatter_reduce_step", "allgather_step", "ring_schedule",
    "RingTrace", "simulate_ring_allreduce",
    "ring_bytes_per_rank", "ps_bytes_at_server", "ps_bytes_per_rank", "ring_time", "ps_time",
    "ps_ring_ratio", "ProcessGroup", "ring_allreduce_", "ps_allreduce_", "CollectiveError",
    "AllreduceResult", "allreduce", "launch", "TRANSPORTS",
]
