"""Start P worker processes, watch them, and always clean up: the reliability layer.

``run_processes(target, args_per_rank, timeout=...)`` runs
``target(rank, *args_per_rank[rank])`` in one process per rank and returns the
P return values, or raises ``CollectiveError`` naming the rank that failed:

* a worker that raised: its traceback, at once;
* a worker that died (killed, crashed): its exit signal, as soon as its
  ``Process.sentinel`` fires. Under fork every child inherits every pipe end,
  so a dead peer never shows as end-of-file: the parent watches sentinels;
* nothing finished within ``timeout`` seconds: the ranks that did not finish
  (and, when the caller gives ``diagnose``, which one stopped making progress).

Every way this kit runs processes goes through it: ``launch`` (the kit's
collectives), ``torch_launch`` (``torch.distributed``) and
``downpour_processes`` (whose replicas ``may_die``, and whose parent has work
of its own to do ``while_running``).

In every case, in ``finally``, the parent terminates and joins every child
with a timeout (SIGTERM, then SIGKILL), so no process is left behind. Each
child dies with its parent (``die_with_parent``: ``prctl(PR_SET_PDEATHSIG)`` on
Linux, and a thread watching the parent on Linux and macOS; neither on Windows), so workers never
outlive a killed notebook kernel. Targets must be functions
of an importable module (``course_lib``), never of a notebook: under the
spawn start method a child imports the target by name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from multiprocessing.connection import wait as wait_for_ready

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class CollectiveError(RuntimeError):
    """A worker raised, died or hung. ``rank`` is the culprit (None when unknown); ``reason`` is
    "raised", "died" or "timeout"; ``exitcode`` is the dead worker's (-9: SIGKILL), else None."""

    def __init__(self, message: str, rank: int | None, reason: str, exitcode: int | None = None):
        super().__init__(message)
        self.rank, self.reason, self.exitcode = rank, reason, exitcode


def set_parent_death_signal(parent_pid: int) -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (no-op elsewhere).

    The parent is whoever forked us: the notebook's process, or under the
    forkserver start method the fork server (which exits with the notebook).
    If ``parent_pid`` died before the signal was armed, exit at once.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:                                 # a killed parent stays a zombie ("Z") until reaped
        with open(f"/proc/{parent_pid}/stat") as f:
            parent_alive = f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        parent_alive = False
    if not parent_alive:
        os._exit(1)


def die_with_parent(parent_pid: int) -> None:
    """End this worker when its parent dies (a killed or restarted notebook kernel).

    A killed parent never says "stop", and under fork no pipe shows end-of-file
    (every later child holds a copy of its ends), so nothing else would end a
    worker blocked on a pipe. Linux: the kernel SIGKILLs us
    (``set_parent_death_signal``). On Linux and macOS (which has no prctl) a
    daemon thread also polls every 0.1 s and exits at once, even while the
    main thread is blocked in a pipe, when ``parent_pid`` is gone or we were
    re-parented (``os.getppid()`` changed: our starter, the parent or a fork
    server, died). Not on Windows, where neither happens.
    """
    set_parent_death_signal(parent_pid)
    if os.name == "nt":                                 # there os.kill(pid, 0) would send CTRL_C_EVENT
        return
    ppid = os.getppid()                                 # the process that started us

    def parent_alive() -> bool:
        try:
            os.kill(parent_pid, 0)                      # signal 0: only "does it exist?"
        except ProcessLookupError:
            return False
        except PermissionError:                         # exists, owned by someone else
            pass
        return os.getppid() == ppid

    def watch():
        while parent_alive():
            time.sleep(0.1)
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


# A worker whose peer died sees a broken pipe, an end-of-file or a timeout: a consequence,
# not the cause. The parent reports such errors only when it finds no other failure.
SECONDARY = (ConnectionError, EOFError, TimeoutError)


def exit_now(code: int) -> None:
    """End this process at once with ``code``, after flushing stdout and stderr.

    ``os._exit`` skips the interpreter's shutdown, as multiprocessing's fork start
    method already does for its children. A process that used ``torch.distributed``
    needs that: gloo's worker thread ("pt_gloo_runloop") frees a finished collective's
    tensors a moment after the caller's ``wait()`` returns, and freeing a tensor that
    Python has seen takes the GIL. If the interpreter has begun shutting down by then,
    the thread is stopped while it holds C++ objects and the process aborts with
    "terminate called without an active exception" (SIGABRT), after its work was done.
    Such an abort happens now and then under ``torchrun ... -m course_lib.ddp`` (docs/benchmarks.md).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):    # None, closed or broken
            pass
    os._exit(code)


def _child_main(target, rank: int, parent_pid: int, result_conn, args) -> None:
    die_with_parent(parent_pid)
    try:
        value = target(rank, *args)
        result_conn.send(("ok", value))   # inside the try: a result that cannot be pickled "raised"
    except BaseException as exc:
        result_conn.send(("raised", (traceback.format_exc(), isinstance(exc, SECONDARY), time.time())))
        result_conn.close()
        exit_now(1)
    result_conn.close()
    exit_now(0)                           # under spawn too: see exit_now


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def run_processes(target, args_per_rank: list, *, timeout: float, start_method: str | None = None,
                  after_start=None, diagnose=None, may_die=(), while_running=None,
                  interval: float = 0.1) -> list:
    """Run ``target(rank, *args)`` for each rank's args in its own process; return the results.

    Parameters
    ----------
    target : module-level function (rank, *args) -> picklable value
    args_per_rank : list of P tuples
    timeout : seconds from the first start until every rank must have returned
    start_method : "fork", "spawn", "forkserver" or None (the platform's default)
    after_start : called once all processes have started (e.g. to close the parent's pipe ends)
    diagnose : called on a timeout with the unfinished ranks; returns (culprit rank or None,
        a sentence saying who hung)
    may_die : ranks whose death is no error (Downpour's replicas): their result is None
    while_running : the parent's own work while the ranks run, called as
        ``while_running(procs, finished)`` at least every ``interval`` seconds (never once a
        failure is seen); ``procs`` are the P ``Process`` objects, ``finished[r]`` says that
        rank r returned (or died, being in ``may_die``)
    interval : seconds between two calls of ``while_running`` (the longest the parent waits at once)
    """
    ctx = mp.get_context(start_method)
    deadline = time.monotonic() + timeout
    procs, readers, finished = [], [], False
    try:
        for rank, args in enumerate(args_per_rank):
            reader, writer = ctx.Pipe(duplex=False)
            readers.append(reader)            # closed in the finally below, even if start() fails
            proc = ctx.Process(target=_child_main, args=(target, rank, os.getpid(), writer, args),
                               name=f"course_lib-rank{rank}", daemon=True)
            try:
                with warnings.catch_warnings():   # Python >= 3.12 warns when a process with threads (a
                    # Jupyter kernel always has some) forks; our children touch none of those threads' locks
                    warnings.filterwarnings("ignore", message=".*multi-threaded.*fork", category=DeprecationWarning)
                    proc.start()
            finally:
                writer.close()                # the child has its own copy
            procs.append(proc)
        if after_start is not None:
            after_start()
        results = _collect(procs, readers, deadline, timeout, diagnose, set(may_die), while_running, interval)
        finished = True
        return results
    finally:
        _stop(procs, grace=5.0 if finished else 0.0)
        for reader in readers:
            reader.close()


def _collect(procs, readers, deadline, timeout, diagnose, may_die, while_running, interval) -> list:
    """Wait for every rank's result, a failure, or the deadline.

    After the first failure keep listening a little (``SETTLE`` seconds, or
    ``GRACE`` if it only looks like a consequence) and blame the likeliest
    cause: a rank that died, else the earliest exception that is not a lost
    connection, else the earliest one. A rank of ``may_die`` that died is done, with result None.
    """
    P = len(procs)
    results, done, failures, first = [None] * P, [False] * P, [], None
    while True:
        if failures:
            waited = time.monotonic() - first
            if waited >= GRACE or (min(failures)[0] < 2 and waited >= SETTLE):
                _, _, rank, reason, message, exitcode = min(failures)
                raise CollectiveError(message, rank, reason, exitcode)
        elif all(done):
            return results
        remaining = (first + GRACE if failures else deadline) - time.monotonic()
        if remaining <= 0 and not failures:
            late = [r for r in range(P) if not done[r]]
            rank, who = diagnose(late) if diagnose is not None else (None, "")
            raise CollectiveError(f"timed out after {timeout:g} s: rank(s) {late} did not finish. {who}".strip(),
                                  rank if rank is not None else (late[0] if len(late) == 1 else None), "timeout")
        failed = {f[2] for f in failures}
        live = [r for r in range(P) if not done[r] and r not in failed]
        ready = set(wait_for_ready([readers[r] for r in live] + [procs[r].sentinel for r in live],
                                   timeout=max(0.0, min(remaining, SETTLE if failures else interval))))
        for rank in live:
            if readers[rank] in ready or procs[rank].sentinel in ready:
                outcome = _outcome(rank, procs[rank], readers[rank])
                if outcome is not None and (outcome[0] == "ok" or (outcome[1][3] == "died" and rank in may_die)):
                    results[rank], done[rank] = (outcome[1] if outcome[0] == "ok" else None), True
                elif outcome is not None:
                    failures.append(outcome[1])
                    first = first or time.monotonic()
        if while_running is not None and not failures and not all(done):
            while_running(procs, list(done))


SETTLE, GRACE = 0.1, 1.0  # seconds to listen for a failure's cause after seeing one


def _outcome(rank, proc, reader):
    """("ok", value) or ("failed", (priority, when, rank, reason, message, exitcode)), None if nothing yet.

    priority 0: the process died; 1: it raised; 2: it raised a lost-connection error.
    """
    if reader.poll():
        try:
            status, value = reader.recv()
        except EOFError:             # the child closed its end without a result: it is exiting
            status = None
            proc.join(timeout=1.0)
        if status == "ok":
            return "ok", value
        if status == "raised":
            text, secondary, when = value
            return "failed", (2 if secondary else 1, when, rank, "raised",
                              f"rank {rank} raised an exception:\n{text}", None)
    if not proc.is_alive():
        proc.join(timeout=1)
        return "failed", (0, time.time(), rank, "died", f"rank {rank} died ({_exit_reason(proc.exitcode)}) "
                          f"before finishing; the other ranks were stopped", proc.exitcode)
    return None


def _stop(procs, grace: float) -> None:
    """Join every child (``grace`` seconds in all when they finished normally); SIGTERM those
    still running, then SIGKILL; never leave one behind."""
    end = time.monotonic() + grace
    for proc in procs:
        proc.join(timeout=max(0.0, end - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=2)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=2)
