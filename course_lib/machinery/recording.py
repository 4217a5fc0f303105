"""A transport in one process that records every transfer: to grade *what moved*, not only the sums.

Not the lecture. A collective written against ``endpoint.step`` (lesson 7,
``course_lib.distributed.collectives``) runs here unchanged, on P in-memory
arrays, one thread per rank::

    from course_lib.distributed.collectives import ring_allreduce_
    outputs, log = run_recorded(ring_allreduce_, arrays)
    log.steps              # 2(P-1) calls of endpoint.step on every rank
    log.sent_per_rank()    # bytes each rank sent: cost.ring_bytes_per_rank(N, P, itemsize)
    print(log)             # one row per transfer: step, src -> dst, bytes, region

``run_recorded(fn, arrays)`` gives rank r an endpoint whose ``buffer`` is a copy
of ``arrays[r]`` and calls ``fn(endpoint, N)`` in P threads. Each
``endpoint.step(sends, recvs)`` is one step of the collective: the regions a
rank sends are copied at once (so ``fence`` has nothing to wait for), every
rank waits until all P ranks have posted the same step (a barrier per step),
then the step is checked as a whole, each receive ``(src, count)`` against
the send of ``src`` to this rank, and every receiver gets its message (a
read-only array). Empty regions are not sent and not logged (as the kit's
transports skip them); a zero-count receive returns an empty array.

What goes wrong is reported, never hung on: a receive that no send matches, or
a send that nobody receives, raises ``StepMismatch`` naming the step and the
ranks; ranks that call ``step`` different numbers of times raise
``StepMismatch`` with the counts; an exception raised by ``fn`` on a rank is
re-raised in the caller (same type, with a note naming the rank from Python
3.11 on; the others are released); a rank that neither steps nor returns within ``timeout``
seconds raises ``TimeoutError`` (its thread cannot be stopped: it is a daemon
and ends with the interpreter).

The bytes move between threads of one process: nothing here is fast, and
nothing starts a process. Real processes: ``course_lib.machinery.launch``.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import numpy as np

from course_lib.machinery.transport import check_step


class StepMismatch(RuntimeError):
    """The ranks disagree about a step: a receive without its send, sizes that differ, or step counts."""


class _Released(BaseException):
    """Raised inside a rank's ``step`` when another rank failed or returned: not the rank's own error
    (a BaseException, so that an ``except Exception`` in the collective does not swallow it)."""


class Transfer(NamedTuple):
    """One message: at ``step``, rank ``src`` sent ``buffer[start:stop]`` (``nbytes`` bytes) to ``dst``."""
    step: int
    src: int
    dst: int
    nbytes: int
    start: int
    stop: int


class TransferLog(list):
    """Every ``Transfer`` of one collective, sorted by (step, src, dst); ``steps``: calls of
    ``endpoint.step`` each rank made; ``world_size``: P."""

    def __init__(self, transfers=(), steps: int = 0, world_size: int = 1):
        super().__init__(sorted(transfers))
        self.steps, self.world_size = steps, world_size

    def sent_per_rank(self) -> np.ndarray:
        """Bytes each rank sent, int64 (P,)."""
        sent = np.zeros(self.world_size, dtype=np.int64)
        for t in self:
            sent[t.src] += t.nbytes
        return sent

    def received_per_rank(self) -> np.ndarray:
        """Bytes each rank received, int64 (P,)."""
        received = np.zeros(self.world_size, dtype=np.int64)
        for t in self:
            received[t.dst] += t.nbytes
        return received

    def sent_within_and_across(self, local_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Bytes each rank sent inside its node and to other nodes, int64 (P,) each; rank r is in node
        r // local_size (lesson 7's two levels)."""
        within, across = np.zeros(self.world_size, dtype=np.int64), np.zeros(self.world_size, dtype=np.int64)
        for t in self:
            (within if t.src // local_size == t.dst // local_size else across)[t.src] += t.nbytes
        return within, across

    def at(self, step: int) -> list[Transfer]:
        """The transfers of one step."""
        return [t for t in self if t.step == step]

    def __str__(self) -> str:
        lines = [f"{self.steps} steps, {len(self)} transfers, P = {self.world_size}",
                 f"{'step':>4}  {'src':>3} -> {'dst':<3} {'bytes':>8}   region"]
        lines += [f"{t.step:>4}  {t.src:>3} -> {t.dst:<3} {t.nbytes:>8}   [{t.start}:{t.stop}]" for t in self]
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython shows the table
        p.text(str(self))


def _mismatch(step: int, posted: dict) -> str | None:
    """The first disagreement of one step, or None. ``posted[rank] = (sends, recvs, messages)``."""
    for r in sorted(posted):
        sends, recvs, _ = posted[r]
        for dst, start, stop in sends:
            wanted = dict(posted[dst][1]).get(r)
            if wanted is None:
                return (f"step {step}: rank {r} sends [{start}:{stop}] ({stop - start} elements) to rank {dst}, "
                        f"which receives nothing from rank {r} at this step")
            if wanted != stop - start:
                return (f"step {step}: rank {dst} expects {wanted} elements from rank {r}, which sends "
                        f"[{start}:{stop}] ({stop - start} elements)")
        for src, count in recvs:
            if r not in {d for d, _, _ in posted[src][0]}:
                targets = sorted(d for d, _, _ in posted[src][0])
                return (f"step {step}: rank {r} expects {count} elements from rank {src}, which sends it "
                        f"nothing at this step (it sends to {targets})")
    return None


class _Exchange:
    """What the P rank threads share: the posted steps, the log, who returned, who failed."""

    def __init__(self, world_size: int, timeout: float):
        self.world_size, self.timeout = world_size, timeout
        self.cond = threading.Condition()
        self.posted: dict[int, dict] = {}      # step -> rank -> (sends, recvs, messages)
        self.transfers: list[Transfer] = []
        self.returned: dict[int, int] = {}     # rank -> steps it made before returning
        self.failed = False
        self.last_progress = time.monotonic()  # a rank posted a step or returned

    def _complete_or_stuck(self, step: int) -> bool:
        gone = self.failed or any(made <= step for made in self.returned.values())
        return len(self.posted[step]) == self.world_size or gone

    def swap(self, rank: int, step: int, sends, recvs, messages) -> list[np.ndarray]:
        """Post this rank's step, wait for all P, check the step, return what this rank receives."""
        with self.cond:
            if self.failed:
                raise _Released()
            self.posted.setdefault(step, {})[rank] = (sends, recvs, messages)
            self.transfers += [Transfer(step, rank, dst, messages[dst].nbytes, start, stop)
                               for dst, start, stop in sends]
            self.last_progress = time.monotonic()
            if len(self.posted[step]) == self.world_size:
                self.posted.pop(step - 1, None)  # everyone has read it: each rank left step - 1 to post this one
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self._complete_or_stuck(step), self.timeout):
                late = sorted(set(range(self.world_size)) - set(self.posted[step]))
                raise TimeoutError(f"step {step}: rank(s) {late} did not call endpoint.step within "
                                   f"{self.timeout:g} s (rank {rank} waited)")
            if len(self.posted[step]) < self.world_size:
                raise _Released()
            posted = self.posted[step]
        problem = _mismatch(step, posted)
        if problem:
            raise StepMismatch(problem)
        return [posted[src][2][rank] for src, _ in recvs]

    def finish(self, rank: int, steps: int, failed: bool) -> None:
        with self.cond:
            self.returned[rank] = steps
            self.failed = self.failed or failed
            self.last_progress = time.monotonic()
            self.cond.notify_all()


class RecordingEndpoint:
    """Rank ``rank``'s end: ``buffer`` (its own copy of the input), ``step``, ``fence``, byte counters."""

    def __init__(self, exchange: _Exchange, rank: int, array: np.ndarray):
        self._exchange, self.rank, self.world_size = exchange, rank, exchange.world_size
        self.buffer = np.array(array, copy=True).reshape(-1)         # (N,) this rank's data
        self.capacity, self.itemsize = self.buffer.size, self.buffer.itemsize
        self.steps = self.bytes_sent = self.bytes_received = 0

    def step(self, sends=(), recvs=()) -> list[np.ndarray]:
        """Send regions ``(dst, start, stop)`` of ``buffer`` and receive ``(src, count)`` elements, all at once."""
        sends = [(int(d), int(a), int(b)) for d, a, b in sends]
        recvs = [(int(s), int(c)) for s, c in recvs]
        self._check(sends, recvs)
        step, self.steps = self.steps, self.steps + 1
        sends = [s for s in sends if s[2] > s[1]]
        messages = {dst: self.buffer[a:b].copy() for dst, a, b in sends}
        for message in messages.values():
            message.flags.writeable = False
        got = iter(self._exchange.swap(self.rank, step, sends, [r for r in recvs if r[1] > 0], messages))
        self.bytes_sent += sum(b - a for _, a, b in sends) * self.itemsize
        self.bytes_received += sum(c for _, c in recvs) * self.itemsize
        return [next(got) if count > 0 else self.buffer[:0].copy() for _, count in recvs]

    def fence(self) -> None:
        """Nothing to wait for: every message was copied when it was sent."""

    def _check(self, sends, recvs) -> None:
        check_step(self, sends, recvs)   # the process transports' checks, plus one of its own
        for s, count in recvs:
            if count < 0:
                raise ValueError(f"rank {self.rank}: cannot receive {count} elements from rank {s}")


def _run_rank(fn, endpoint: RecordingEndpoint, exchange: _Exchange, errors: dict, args, kwargs) -> None:
    """One rank's thread: fn(endpoint, N, ...), then tell the others it returned (or failed)."""
    failed = False
    try:
        fn(endpoint, endpoint.capacity, *args, **kwargs)
    except BaseException as err:   # noqa: BLE001 - reported by run_recorded, in the caller's thread
        errors[endpoint.rank], failed = err, True
    exchange.finish(endpoint.rank, endpoint.steps, failed)


def _first_error(errors: dict, endpoints: list) -> BaseException | None:
    """What to raise: fn's own exception on the lowest rank, else a step mismatch, else a time-out."""
    for kind in (lambda e: not isinstance(e, (_Released, StepMismatch, TimeoutError)),
                 lambda e: isinstance(e, StepMismatch), lambda e: isinstance(e, TimeoutError)):
        found = sorted((r, e) for r, e in errors.items() if kind(e))
        if found:
            rank, err = found[0]
            if not isinstance(err, (StepMismatch, TimeoutError)) and hasattr(err, "add_note"):   # Python >= 3.11
                err.add_note(f"(raised on rank {rank} of {len(endpoints)})")
            return err
    calls = [ep.steps for ep in endpoints]
    if len(set(calls)) > 1:
        return StepMismatch(f"every rank must call endpoint.step the same number of times; "
                            f"ranks 0..{len(calls) - 1} called it {calls} times")
    return None


def _join(threads: list[threading.Thread], exchange: _Exchange) -> None:
    """Wait for every rank; a TimeoutError when none has stepped or returned for ``exchange.timeout`` s."""
    while any(thread.is_alive() for thread in threads):
        next(thread for thread in threads if thread.is_alive()).join(0.02)
        with exchange.cond:
            idle = time.monotonic() - exchange.last_progress
        if idle > exchange.timeout + 1.0:   # the waiting ranks time out at timeout: give them a second
            stuck = [r for r, thread in enumerate(threads) if thread.is_alive()]
            raise TimeoutError(f"rank(s) {stuck} neither called endpoint.step nor returned for "
                               f"{exchange.timeout:g} s: an endless loop?")


def run_recorded(fn, arrays, *args, timeout: float = 10.0, **kwargs) -> tuple[list[np.ndarray], TransferLog]:
    """Run the collective ``fn(endpoint, N, *args, **kwargs)`` on P threads; return every rank's result and the log.

    Parameters
    ----------
    fn : a collective written against ``endpoint.step`` (``ring_allreduce_``, ``ps_allreduce_``, ...)
    arrays : P arrays of one shape and dtype (flattened to N elements); rank r's buffer is a copy
        of ``arrays[r]``: the inputs are never modified
    timeout : seconds a rank may wait for its peers at one step, and for the last rank to return

    Returns
    -------
    outputs : list of P ndarrays (N,), each rank's buffer after ``fn`` returned
    log : TransferLog, one Transfer per non-empty message, and ``log.steps``
    """
    arrays = [np.asarray(a) for a in arrays]
    if not arrays or any(a.shape != arrays[0].shape or a.dtype != arrays[0].dtype for a in arrays):
        raise ValueError(f"run_recorded needs P >= 1 arrays of one shape and dtype, got "
                         f"{[(a.shape, str(a.dtype)) for a in arrays]}")
    exchange = _Exchange(len(arrays), float(timeout))
    endpoints = [RecordingEndpoint(exchange, r, a) for r, a in enumerate(arrays)]
    errors: dict[int, BaseException] = {}
    threads = [threading.Thread(target=_run_rank, args=(fn, ep, exchange, errors, args, kwargs), daemon=True,
                                name=f"recorded-rank-{ep.rank}") for ep in endpoints]
    for thread in threads:
        thread.start()
    _join(threads, exchange)
    error = _first_error(errors, endpoints)
    if error is not None:
        raise error
    return [ep.buffer for ep in endpoints], TransferLog(exchange.transfers, endpoints[0].steps, len(arrays))
