"""Transports: move bytes between ranks; they know nothing of rings or servers.

Not the lecture: the lecture's collectives (``course_lib.distributed.collectives``)
are written once against the ``step`` below; this module carries them out, with
the fault injection the tests use and the progress tables that name a rank that hung.

A collective is a sequence of *steps*. In each step every rank calls
``endpoint.step(sends, recvs)`` once (all ranks the same number of times):

    sends : list of (dst, start, stop)   send ``endpoint.buffer[start:stop]`` to rank dst
    recvs : list of (src, count)         receive ``count`` elements from rank src

and gets back one array per receive, valid until its next ``step``: treat it as
read-only (the shared-memory transport's arrays are the sender's memory and are
marked read-only; the pipe transport's are private scratch buffers).
At most one message per (src, dst) pair per step. The contract that makes
zero-copy possible: a region you sent in step k stays unchanged until your
step k + 1 has returned (the receiver may still be reading it); after a
collective's last step call ``endpoint.fence()`` before changing the buffer.

Two transports carry the same steps:

``PipeTransport``  explicit messages through ``multiprocessing`` pipes, one
    one-way pipe per ordered pair of ranks. Data go as raw bytes
    (``send_bytes(memoryview)`` / ``recv_bytes_into``), never pickled, in
    segments of at most 1 MiB. A persistent sender thread sends while the main
    thread receives, so every rank sends and receives at once (a rank that sends
    its whole message before receiving deadlocks as soon as the message is larger
    than the pipe's kernel buffer: 64 KiB by default, 1 MiB here where Linux
    allows it, see ``_grow_pipe``). The receiver reads whichever
    pipe has data (``multiprocessing.connection.wait``), so no order of
    messages can deadlock.
``ShmTransport``  every rank's buffer lives in one shared-memory segment that all
    ranks map. "Sending" a region is publishing its (start, stop) in a small
    shared table; after a barrier the receiver reads the sender's memory
    directly: no copy through the kernel, no scratch buffer.

Both count the bytes they send and receive, and record each rank's progress
(steps entered, waiting or not) in shared memory so that the parent can tell
which rank hung. The parent creates a transport (and every shared object) and
must ``close()`` it in a ``finally``; each worker calls ``endpoint(rank)``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from multiprocessing import shared_memory
from multiprocessing.connection import wait as wait_for_ready

import numpy as np

SEGMENT = 1 << 20  # bytes per pipe message; larger single messages are slower and may fail


class DisseminationBarrier:
    """A barrier for ``world_size`` processes made of semaphores, faster than ``mp.Barrier`` (docs/benchmarks.md).

    Round j (of ceil(log2 P)): rank r signals rank (r + 2^j) mod P and waits for
    rank (r - 2^j) mod P. After all rounds every rank has heard, directly or
    through others, from every rank, so nobody leaves before everyone arrived.
    Each semaphore has one signaller, so counts from the next barrier cannot be
    mistaken for this one's.
    """

    def __init__(self, world_size: int, ctx):
        self.world_size = world_size
        self.rounds = math.ceil(math.log2(world_size)) if world_size > 1 else 0
        self._sems = [[ctx.Semaphore(0) for _ in range(self.rounds)] for _ in range(world_size)]

    def wait(self, rank: int, timeout: float) -> None:
        P = self.world_size
        for j in range(self.rounds):
            self._sems[(rank + (1 << j)) % P][j].release()
            if not self._sems[rank][j].acquire(timeout=timeout):
                raise TimeoutError(f"rank {rank}: barrier not reached by rank {(rank - (1 << j)) % P} "
                                   f"(or a rank before it) within {timeout:g} s")


class Endpoint:
    """One rank's end of a transport (in a worker process). Subclasses implement ``_exchange``."""

    def __init__(self, transport, rank: int, fault=None):
        self.rank, self.world_size = rank, transport.world_size
        self.timeout, self._progress, self._barrier = transport.timeout, transport.progress, transport.barrier
        self._fault = fault                  # tests only: (step, "kill" | "hang" | "raise")
        self.steps = self.bytes_sent = self.bytes_received = 0

    def step(self, sends=(), recvs=()) -> list[np.ndarray]:
        """Send regions of ``self.buffer`` and receive arrays, all at once (see the module docstring)."""
        self._check(sends, recvs)
        self._progress[2 * self.rank] = self.steps = self.steps + 1
        if self._fault is not None and self._fault[0] == self.steps - 1:
            _inject(self._fault[1], self.rank, self.steps - 1)
        self._progress[2 * self.rank + 1] = 1   # waiting on peers
        received = self._exchange([s for s in sends if s[2] > s[1]], [r for r in recvs if r[1] > 0])
        self._progress[2 * self.rank + 1] = 0
        self.bytes_sent += sum(stop - start for _, start, stop in sends) * self.itemsize
        self.bytes_received += sum(count for _, count in recvs) * self.itemsize
        it = iter(received)
        return [next(it) if count > 0 else self.buffer[:0] for _, count in recvs]

    def barrier(self) -> None:
        """Wait until every rank has called ``barrier`` (used to start timings together)."""
        self._progress[2 * self.rank + 1] = 1
        self._barrier.wait(self.rank, self.timeout)
        self._progress[2 * self.rank + 1] = 0

    def fence(self) -> None:
        """After a collective: wait until peers no longer read this buffer (no-op for pipes)."""

    def _check(self, sends, recvs) -> None:
        check_step(self, sends, recvs)


def check_step(endpoint, sends, recvs) -> None:
    """Raise ValueError unless one step's ``sends`` and ``recvs`` fit ``endpoint`` (its rank,
    world_size, capacity): each peer at most once, never itself, send regions inside the buffer."""
    rank, world_size, capacity = endpoint.rank, endpoint.world_size, endpoint.capacity
    dsts, srcs = [d for d, _, _ in sends], [s for s, _ in recvs]
    for name, peers in (("send to", dsts), ("receive from", srcs)):
        if len(set(peers)) != len(peers) or any(p == rank or not 0 <= p < world_size for p in peers):
            raise ValueError(f"rank {rank}: one step may {name} each other rank at most once, "
                             f"got {peers} (world_size {world_size})")
    for d, start, stop in sends:
        if not 0 <= start <= stop <= capacity:
            raise ValueError(f"rank {rank}: send region [{start}:{stop}] to rank {d} is outside "
                             f"the buffer of {capacity} elements")


def _inject(action: str, rank: int, step: int) -> None:
    """Test-only faults: die, hang, or raise in the middle of a collective."""
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "hang":
        time.sleep(3600)
    raise RuntimeError(f"injected fault on rank {rank} at step {step}")


class _Transport:
    """What both transports share: world size, dtype, capacity, barrier, progress table."""

    def __init__(self, world_size: int, capacity: int, dtype, *, timeout: float = 60.0, ctx=None):
        ctx = ctx or mp.get_context()
        self.world_size, self.capacity = int(world_size), int(capacity)
        self.dtype, self.timeout = np.dtype(dtype), float(timeout)
        self.barrier = DisseminationBarrier(self.world_size, ctx)
        self.progress = ctx.Array("q", 2 * self.world_size, lock=False)  # [steps, waiting] per rank

    def progress_table(self) -> list[tuple[int, bool]]:
        """(steps entered, waiting on a peer) for every rank, read by the parent."""
        return [(self.progress[2 * r], bool(self.progress[2 * r + 1])) for r in range(self.world_size)]

    def after_start(self) -> None:
        """The parent calls this once every worker has started."""

    def close(self) -> None:
        """The parent calls this in ``finally``."""


class ShmTransport(_Transport):
    """Every rank's buffer in one shared-memory segment, plus a (2, P, P, 2) table of posted sends."""
    name = "shm"

    def __init__(self, world_size, capacity, dtype, *, timeout=60.0, ctx=None):
        super().__init__(world_size, capacity, dtype, timeout=timeout, ctx=ctx)
        P = self.world_size
        self._data_bytes = -(-P * self.capacity * self.dtype.itemsize // 64) * 64
        table_bytes = 2 * P * P * 2 * 8
        self.shm = shared_memory.SharedMemory(create=True, size=self._data_bytes + table_bytes)
        self.shm_name = self.shm.name

    def __getstate__(self):       # a worker re-attaches by name
        state = self.__dict__.copy()
        state["shm"] = None
        return state

    def endpoint(self, rank: int, fault=None) -> "ShmEndpoint":
        return ShmEndpoint(self, rank, fault)

    def close(self) -> None:
        if self.shm is not None:
            self.shm.close()
            self.shm.unlink()
            self.shm = None


class ShmEndpoint(Endpoint):
    def __init__(self, transport: ShmTransport, rank: int, fault=None):
        super().__init__(transport, rank, fault)
        P, C = self.world_size, transport.capacity
        self.capacity, self.itemsize = C, transport.dtype.itemsize
        self._shm = shared_memory.SharedMemory(name=transport.shm_name)
        self._buffers = np.ndarray((P, C), transport.dtype, self._shm.buf)          # (P, capacity)
        self._table = np.ndarray((2, P, P, 2), np.int64, self._shm.buf, offset=transport._data_bytes)
        self.buffer = self._buffers[rank]                                           # (capacity,)

    def _exchange(self, sends, recvs):
        # Post (start, stop) for each destination in this step's half of the table
        # (two halves: a slow receiver may still read the previous step's half).
        table = self._table[self.steps % 2]                 # (P src, P dst, 2)
        table[self.rank] = -1
        for dst, start, stop in sends:
            table[self.rank, dst] = (start, stop)
        self._barrier.wait(self.rank, self.timeout)          # everyone has posted
        views = []
        for src, count in recvs:
            start, stop = (int(v) for v in table[src, self.rank])
            if stop - start != count:
                raise RuntimeError(f"rank {self.rank} expected {count} elements from rank {src} at step "
                                   f"{self.steps - 1}, rank {src} posted [{start}:{stop}]")
            view = self._buffers[src, start:stop]            # the sender's memory, no copy
            view.flags.writeable = False
            views.append(view)
        return views

    def fence(self) -> None:
        self.barrier()

    def close(self) -> None:
        """Unmap the segment. Any numpy array still viewing it (``buffer``, a received array)
        is left dangling: numpy arrays hold no buffer export, so ``SharedMemory.close`` does not
        refuse, and reading such an array afterwards is a segmentation fault. Copy what you keep."""
        self.buffer = self._buffers = self._table = None
        try:
            self._shm.close()
        except BufferError:   # only a live memoryview of shm.buf refuses; the mapping goes at exit
            pass


class PipeTransport(_Transport):
    """One ``Pipe(duplex=False)`` per ordered pair (src, dst): ``pipes[src][dst] = (reader, writer)``.

    ``mode`` says how a step sends and receives (the lesson compares them):

    ``"overlap"``     (default) raw bytes; a sender thread sends while the main thread receives.
    ``"pickle"``      the same, but each message is a pickled ndarray (``conn.send(array)``):
                      extra copies into and out of a bytes object.
    ``"odd-even"``    no thread: even ranks send then receive, odd ranks receive then send.
                      Correct, but each pipe carries data in one direction at a time.
    ``"send-first"``  no thread: every rank sends, then receives. Deadlocks as soon as a
                      message is larger than the pipe's kernel buffer (64 KiB by default,
                      1 MiB here): every rank blocks in send, nobody receives.
    """
    name = "pipe"
    MODES = ("overlap", "pickle", "odd-even", "send-first")

    def __init__(self, world_size, capacity, dtype, *, timeout=60.0, ctx=None, mode: str = "overlap"):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        ctx = ctx or mp.get_context()
        super().__init__(world_size, capacity, dtype, timeout=timeout, ctx=ctx)
        P, self.mode = self.world_size, mode
        self.pipes = [[ctx.Pipe(duplex=False) if s != d else None for d in range(P)] for s in range(P)]
        for row in self.pipes:
            for pair in row:
                if pair is not None:
                    _grow_pipe(pair[1])

    def endpoint(self, rank: int, fault=None) -> "PipeEndpoint":
        return PipeEndpoint(self, rank, fault)

    def after_start(self) -> None:
        self.close()   # the workers hold their ends now; a dead peer then shows as end-of-file

    def close(self) -> None:
        for row in self.pipes:
            for pair in row:
                if pair is not None:
                    pair[0].close()
                    pair[1].close()


def _grow_pipe(conn) -> None:
    """Linux: let the kernel buffer one whole segment (default 64 KiB), so a 1 MiB message
    moves in one write and one read instead of 16 context switches. Elsewhere: no-op."""
    try:
        import fcntl
        fcntl.fcntl(conn.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), SEGMENT)
    except (ImportError, OSError):
        pass   # not Linux, or above /proc/sys/fs/pipe-max-size: the default size still works


class PipeEndpoint(Endpoint):
    def __init__(self, transport: PipeTransport, rank: int, fault=None):
        super().__init__(transport, rank, fault)
        P = self.world_size
        self.capacity, self.itemsize = transport.capacity, transport.dtype.itemsize
        self.mode = transport.mode
        self.buffer = np.zeros(transport.capacity, transport.dtype)                 # (capacity,) private
        self._writers = {d: transport.pipes[rank][d][1] for d in range(P) if d != rank}
        self._readers = {s: transport.pipes[s][rank][0] for s in range(P) if s != rank}
        for s in range(P):          # close every end that is not ours (inherited under fork)
            for d in range(P):
                if s != d and s != rank:
                    transport.pipes[s][d][1].close()
                if s != d and d != rank:
                    transport.pipes[s][d][0].close()
        self._scratch = {s: np.empty(0, transport.dtype) for s in self._readers}
        self._jobs, self._sender = queue.Queue(), None

    def _send_all(self, sends) -> None:
        """Send each region of the buffer: raw bytes in <= 1 MiB segments, or one pickled array."""
        for dst, start, stop in sends:
            conn = self._writers[dst]
            if self.mode == "pickle":
                conn.send(self.buffer[start:stop])            # pickle.dumps: a copy into bytes
                continue
            data = memoryview(self.buffer[start:stop]).cast("B")
            for i in range(0, len(data), SEGMENT):
                conn.send_bytes(data[i:i + SEGMENT])

    def _send_loop(self) -> None:
        """The sender thread: runs each job's sends, then signals done."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            sends, done, errors = job
            try:
                self._send_all(sends)
            except Exception as exc:   # BrokenPipeError when the peer died
                errors.append(exc)
            done.set()

    def _exchange(self, sends, recvs):
        if self.mode in ("odd-even", "send-first"):           # one thing at a time, no thread
            if self.mode == "send-first" or self.rank % 2 == 0:
                self._send_all(sends)
                return self._receive(recvs)
            views = self._receive(recvs)
            self._send_all(sends)
            return views
        done, errors = threading.Event(), []
        if sends:
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_loop, daemon=True)
                self._sender.start()
            self._jobs.put((sends, done, errors))
        views = self._receive(recvs)                          # while the thread sends
        if sends and not done.wait(self.timeout):
            raise TimeoutError(f"rank {self.rank}: could not send to rank(s) {[d for d, _, _ in sends]} "
                               f"within {self.timeout:g} s")
        if errors:
            raise ConnectionError(f"rank {self.rank}: sending to rank(s) {[d for d, _, _ in sends]} "
                                  f"failed ({errors[0]!r}); did a peer die?")
        return views

    def _receive(self, recvs):
        """Fill one scratch buffer per source, reading whichever pipe has data first."""
        pending, views = {}, []
        for src, count in recvs:
            if self._scratch[src].size < count:
                self._scratch[src] = np.empty(count, self.buffer.dtype)
            view = self._scratch[src][:count]
            views.append(view)
            pending[self._readers[src]] = (src, view, 0)
        while pending:
            ready = wait_for_ready(list(pending), timeout=self.timeout)
            if not ready:
                waiting = sorted(src for src, _, _ in pending.values())
                raise TimeoutError(f"rank {self.rank}: no data from rank(s) {waiting} for {self.timeout:g} s")
            for conn in ready:
                src, view, offset = pending.pop(conn)
                try:
                    if self.mode == "pickle":                 # pickle.loads: a new array, copied in
                        view[...] = conn.recv()
                        continue
                    offset += conn.recv_bytes_into(memoryview(view).cast("B"), offset)
                except EOFError:
                    raise ConnectionError(f"rank {self.rank}: rank {src} closed its pipe "
                                          f"mid-message (it died?)") from None
                if offset < view.nbytes:
                    pending[conn] = (src, view, offset)
        return views

    def close(self) -> None:
        if self._sender is not None:
            self._jobs.put(None)
            self._sender.join(timeout=1)   # daemon: a send blocked on a hung peer must not hold us
        for conn in list(self._writers.values()) + list(self._readers.values()):
            conn.close()
