"""Run the lecture's collectives on real processes from a notebook: ``allreduce`` and ``launch``.

``allreduce(arrays, algorithm="ring", transport="shm")`` takes P arrays (one
per rank), starts P worker processes, each of which runs the all-reduce on its
array, and returns every rank's output, the bytes each rank sent and received,
and how long each rank took. ``launch(fn, world_size, args=...)`` runs any
worker function ``fn(pg, *args)`` (defined in course_lib) on P processes with a
``ProcessGroup`` and returns what each returned.

The collectives themselves (``ring_allreduce_``, ``ps_allreduce_``,
``ProcessGroup``) are the lecture's, in ``course_lib.distributed.collectives``;
this module only starts them (``procs.run_processes``) on a transport
(``transport.py``). Inputs and outputs travel through one shared-memory
segment the parent creates (and unlinks in ``finally``); the collective itself
uses only the transport. Every input is checked before any process starts.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context, shared_memory

import numpy as np

from course_lib.checks import MAX_WORLD_SIZE, check_arrays, check_int, check_positive

from course_lib.distributed.collectives import ALGORITHMS, ProcessGroup

from .procs import CollectiveError, run_processes  # noqa: F401  (CollectiveError re-exported)
from .transport import PipeTransport, ShmTransport

TRANSPORTS = {                    # name -> factory(world_size, capacity, dtype, timeout=, ctx=)
    "shm": ShmTransport,
    "pipe": PipeTransport,        # raw bytes, sending and receiving overlapped (a sender thread)
    "pipe-pickle": partial(PipeTransport, mode="pickle"),        # for the lesson: pickled messages
    "pipe-oddeven": partial(PipeTransport, mode="odd-even"),     # for the lesson: half-duplex
    "pipe-sendfirst": partial(PipeTransport, mode="send-first"), # for the lesson: deadlocks > 1 MiB
}


def _check_transport(transport) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}, got {transport!r}")


def _check_options(algorithm, transport, world_size, shards, local_size, timeout, repeats) -> None:
    """``allreduce``'s options (timeout in seconds), before any process starts; the arrays: ``check_arrays``."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
    _check_transport(transport)
    check_int(shards, "shards", 1, world_size, why=f"world_size = {world_size}: shard s is served by rank s")
    if algorithm != "ps" and shards != 1:
        raise ValueError("shards only applies to algorithm='ps'")
    if (algorithm == "two_level") != (local_size is not None):
        raise ValueError("local_size (ranks per node) is needed by algorithm='two_level', and only by it")
    if local_size is not None and world_size % check_int(local_size, "local_size", 1, world_size):
        raise ValueError(f"local_size = {local_size} must divide world_size = {world_size} (nodes of equal size)")
    check_positive(timeout, "timeout")
    check_positive(repeats, "repeats", integer=True)


def _group_worker(rank, transport, fault, fn, args):
    """In a worker: attach to the transport, wrap it in a ProcessGroup, run fn(pg, *args).

    What fn returns may hold views of ``pg.endpoint.buffer`` (shared memory). Closing the
    endpoint unmaps that memory, and numpy does not stop it: a view read afterwards (when
    the result is pickled for the parent) crashes the worker with SIGSEGV. So the result
    is copied out first, by a pickle round trip: what sending it to the parent does anyway.
    """
    endpoint = transport.endpoint(rank, fault)
    try:
        result = fn(ProcessGroup(endpoint), *args)
        return pickle.loads(pickle.dumps(result))   # a copy that shares no memory with the endpoint
    finally:
        endpoint.close()


def _progress_report(transport, late: list[int]) -> tuple[int | None, str]:
    """Who hung: among unfinished ranks, the one not waiting on a peer (else the one furthest behind)."""
    table = transport.progress_table()            # [(steps entered, waiting on a peer)] per rank
    busy = [r for r in late if not table[r][1]]
    state = "; ".join(f"rank {r} {'waiting in' if table[r][1] else 'busy in'} step {max(table[r][0] - 1, 0)}"
                      for r in late)
    if len(busy) == 1:
        return busy[0], f"rank {busy[0]} stopped responding; the others were waiting for it ({state})."
    if not busy:
        steps = {table[r][0] for r in late}
        behind = min(late, key=lambda r: table[r][0]) if len(steps) > 1 else None
        return behind, ("every unfinished rank was waiting on a peer: a deadlock (or a lost message)"
                        + (f"; rank {behind} is furthest behind" if behind is not None else "") + f" ({state}).")
    return None, f"({state})."


def launch(fn, world_size: int, *, args: tuple = (), transport: str = "shm", capacity: int = 1,
           dtype=np.float32, timeout: float = 60.0, start_method: str | None = None, _fault=None) -> list:
    """Run ``fn(pg, *args)`` on ``world_size`` processes; return the P return values, by rank.

    Parameters
    ----------
    fn : a function of a course_lib module taking a ``ProcessGroup`` first
    world_size : number of processes (the lecture's P)
    args : extra arguments, the same for every rank (picklable)
    transport : a name in ``TRANSPORTS`` ("shm", "pipe", ...), what ``pg.allreduce_`` runs over
    capacity : the most elements one collective carries; dtype: their dtype
    timeout : seconds for the whole run; after it, every worker is stopped and
        ``CollectiveError`` names the rank that hung
    start_method : "fork", "spawn", "forkserver" or None (the platform's default)
    _fault : tests only, ``(rank, step, "kill" | "hang" | "raise")``
    """
    ctx = get_context(start_method)
    world_size = check_int(world_size, "world_size", 1, MAX_WORLD_SIZE,
                           why=f"this kit starts at most {MAX_WORLD_SIZE} processes on one machine")
    _check_transport(transport)
    if getattr(fn, "__module__", None) == "__main__" and ctx.get_start_method() != "fork":
        raise TypeError(f"{getattr(fn, '__name__', fn)} is defined in __main__ (a notebook or script): under "
                        f"the {ctx.get_start_method()} start method a worker cannot import it. Put it in a "
                        f"course_lib module and import it from there")
    carrier = TRANSPORTS[transport](world_size, max(1, capacity), dtype, timeout=timeout, ctx=ctx)
    try:
        rank_args = [(carrier, _fault[1:] if _fault and _fault[0] == r else None, fn, tuple(args))
                     for r in range(world_size)]
        return run_processes(_group_worker, rank_args, timeout=timeout, start_method=start_method,
                             after_start=carrier.after_start, diagnose=lambda late: _progress_report(carrier, late))
    finally:
        carrier.close()


@dataclass
class AllreduceResult:
    """What ``allreduce`` returns.

    outputs : list of P ndarrays, each of the input shape: every rank's result (the sum)
    bytes_sent, bytes_received : int64 ndarrays, shape (P,), in one collective
    elapsed : ndarray, shape (repeats, P), seconds each rank spent in each collective
    """
    outputs: list
    bytes_sent: np.ndarray
    bytes_received: np.ndarray
    elapsed: np.ndarray
    algorithm: str
    transport: str
    shards: int = 1
    start_method: str = ""
    nbytes: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return len(self.outputs)

    @property
    def time(self) -> float:
        """Median over repeats of the slowest rank's time: one collective's duration, in seconds."""
        return float(np.median(self.elapsed.max(axis=1)))


def _allreduce_worker(pg, io_name, N, dtype, algorithm, option, repeats):
    """In a worker: copy my input into the transport buffer, run the collective ``repeats`` times."""
    io = shared_memory.SharedMemory(name=io_name)
    try:
        rows = np.ndarray((pg.world_size, N), np.dtype(dtype), io.buf)       # (P, N) inputs, then outputs
        x, buf, ep = rows[pg.rank], pg.endpoint.buffer, pg.endpoint
        run = ALGORITHMS[algorithm]
        elapsed = []
        for _ in range(repeats):
            buf[:N] = x
            ep.bytes_sent = ep.bytes_received = 0
            pg.barrier()                                   # start together
            start = time.perf_counter()
            run(ep, N, *option)                            # option: (shards,), (local_size,) or ()
            elapsed.append(time.perf_counter() - start)
        x[...] = buf[:N]
        return elapsed, ep.bytes_sent, ep.bytes_received
    finally:
        rows = x = buf = None
        io.close()


def through_shared_rows(arrays: list[np.ndarray], run) -> tuple[list[np.ndarray], object]:
    """Put P same-shape arrays in one shared-memory block of P rows, call ``run(name)``, copy the rows back.

    arrays : P arrays of one shape and dtype (checked by the caller)
    run : starts the workers, which attach to the block by ``name`` and leave rank r's result in row r
    returns : (the P rows, each reshaped to the input shape, as new arrays; what ``run`` returned)
    The block is unlinked on every path, errors included.
    """
    P, shape, dtype = len(arrays), arrays[0].shape, arrays[0].dtype
    N = int(np.prod(shape))
    io = shared_memory.SharedMemory(create=True, size=max(1, P * N * dtype.itemsize))
    try:
        rows = np.ndarray((P, N), dtype, io.buf)                                  # (P, N)
        for r, a in enumerate(arrays):
            rows[r] = a.reshape(-1)
        returned = run(io.name)
        outputs = [rows[r].reshape(shape).copy() for r in range(P)]
        rows = None                                # release the view before the block is closed
    finally:
        io.close()
        io.unlink()
    return outputs, returned


def allreduce(arrays, *, algorithm: str = "ring", transport: str = "shm", timeout: float = 60.0,
              shards: int = 1, local_size: int | None = None, start_method: str | None = None,
              repeats: int = 1, _fault=None) -> AllreduceResult:
    """Sum P arrays across P real processes; every rank gets the sum.

    Parameters
    ----------
    arrays : list of P ndarrays of one shape and dtype (integer or float); arrays[r] is rank r's
    algorithm : "ring" (scatter-reduce + allgather), "ps" (parameter server, ``shards`` servers) or
        "two_level" (rings inside nodes of ``local_size`` ranks, then between nodes)
    transport : "shm" (shared memory) or "pipe" (messages through pipes); for the lesson also
        "pipe-pickle", "pipe-oddeven" and "pipe-sendfirst" (see ``transport.PipeTransport``)
    timeout : seconds; a worker that dies or hangs raises ``CollectiveError`` naming its rank
    shards : number of parameter-server shards (algorithm="ps"), 1 .. P
    start_method : "fork", "spawn", "forkserver" or None (the platform's default)
    repeats : run the collective this many times back to back (for timing); outputs are from the last

    Returns
    -------
    AllreduceResult with ``outputs`` (P arrays), ``bytes_sent`` / ``bytes_received`` (P,),
    ``elapsed`` (repeats, P) seconds and ``time`` (median seconds of one collective).
    """
    arrays = check_arrays(arrays)
    P, shape, dtype = len(arrays), arrays[0].shape, arrays[0].dtype
    _check_options(algorithm, transport, P, shards, local_size, timeout, repeats)
    N = int(np.prod(shape))
    option = {"ps": (shards,), "two_level": (local_size,)}.get(algorithm, ())
    outputs, results = through_shared_rows(arrays, lambda io_name: launch(
        _allreduce_worker, P, args=(io_name, N, dtype.str, algorithm, option, repeats), transport=transport,
        capacity=N, dtype=dtype, timeout=timeout, start_method=start_method, _fault=_fault))
    elapsed = np.array([res[0] for res in results]).T                              # (repeats, P)
    return AllreduceResult(outputs, np.array([res[1] for res in results], dtype=np.int64),
                           np.array([res[2] for res in results], dtype=np.int64), elapsed,
                           algorithm, transport, shards,
                           start_method or get_context().get_start_method(), N * dtype.itemsize)
