"""Every core for the memory-bound passes around a matrix multiply (``fast_conv``'s copies).

A fast convolution is a copy (im2col), one GEMM, and a copy back. numpy's
GEMM (BLAS) already uses every core; a numpy copy or ufunc uses one. On a
2-core laptop that leaves half the machine idle for about half the time.

numpy releases the GIL inside a copy or a ufunc loop over a large array, so
plain Python threads that each take one slice of the work run at the same
time. ``for_each_slice`` does exactly that, and nothing when the work is too
small to pay for handing it to another thread (tens of microseconds).

Set ``COURSE_LIB_THREADS=1`` to turn it off (for example beside
``threadpoolctl.threadpool_limits(1)``); by default it uses the cores this
process may run on, at most 8.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable

MIN_BYTES_PER_THREAD = 1 << 20   # below ~1 MiB a slice is copied faster than a thread wakes up
MAX_THREADS = 8

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None    # this process's helper threads: num_threads() - 1 of them
_pool_workers = 0
_state = threading.local()                 # .inside: this thread is running a slice


def _forget_pool_after_fork() -> None:
    """In a forked child the parent's threads do not exist (and the lock may be held): start afresh."""
    global _lock, _pool, _pool_workers
    _lock, _pool, _pool_workers = threading.Lock(), None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def num_threads() -> int:
    """Threads ``for_each_slice`` may use: ``COURSE_LIB_THREADS``, else the usable cores (at most 8)."""
    env = os.environ.get("COURSE_LIB_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"COURSE_LIB_THREADS={env!r}: expected a whole number of threads, 1 or more")
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:           # macOS and Windows have no sched_getaffinity
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS))


def _executor(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` helper threads, made on first use (again if the count changed)."""
    global _pool, _pool_workers
    with _lock:
        if _pool is None or _pool_workers != workers:
            if _pool is not None:
                _pool.shutdown(wait=False)   # its idle threads exit
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="course_lib")
            _pool_workers = workers
        return _pool


def _run_slice(fn: Callable[[slice], object], s: slice) -> None:
    """Run one slice, marking this thread as inside one (a nested ``for_each_slice`` then runs inline)."""
    outer, _state.inside = getattr(_state, "inside", False), True
    try:
        fn(s)
    finally:
        _state.inside = outer


def for_each_slice(fn: Callable[[slice], object], n: int, nbytes: int) -> None:
    """Call ``fn(s)`` for slices ``s`` that split ``range(n)``, in parallel threads.

    fn : writes the part of its output that slice ``s`` owns; parts must not
        overlap (each thread writes its own rows, no locks)
    n : the length of the axis being split (for example the batch N)
    nbytes : about how many bytes the whole pass moves; at most one thread
        per ``MIN_BYTES_PER_THREAD`` is used, so small passes run inline

    The calling thread does the first slice itself. Every slice has finished
    when this returns, also when one raised: then the calling thread's own
    exception is re-raised if it had one, else the first slice's in order.
    Everything runs on the calling thread when called from inside a slice
    (no deadlock), or once the interpreter is shutting down and no new
    thread may start.
    """
    threads = num_threads()
    parts = min(threads, n, max(1, nbytes // MIN_BYTES_PER_THREAD))
    if parts <= 1 or getattr(_state, "inside", False):
        _run_slice(fn, slice(0, n))
        return
    bounds = [n * i // parts for i in range(parts + 1)]
    slices = [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    futures = []
    try:
        pool = _executor(threads - 1)
        for s in slices[1:]:
            futures.append(pool.submit(_run_slice, fn, s))
    except RuntimeError:             # interpreter shutdown: the slices not submitted run here
        pass
    errors = []
    try:
        for s in [slices[0]] + slices[1 + len(futures):]:
            _run_slice(fn, s)
    except BaseException as exc:     # (even Ctrl-C) first wait: the others write into shared arrays
        errors.append(exc)
    finally:
        wait(futures)
    errors += [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
