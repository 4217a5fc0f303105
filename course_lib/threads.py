"""Every core for the memory-bound passes around a matrix multiply.

A fast convolution is a copy (im2col), one GEMM, and a copy back. numpy's
GEMM (BLAS) already uses every core; a numpy copy or ufunc uses one. On a
2-core laptop that leaves half the machine idle for about half the time.

numpy releases the GIL inside a copy or a ufunc loop over a large array, so
plain Python threads that each take one slice of the work run at the same
time. ``for_each_slice`` does exactly that, and nothing when the work is too
small to pay for waking a thread (about 10 microseconds).

Set ``COURSE_LIB_THREADS=1`` to turn it off (for example beside
``threadpoolctl.threadpool_limits(1)``); by default it uses the cores this
process may run on, at most 8.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

MIN_BYTES_PER_THREAD = 1 << 20   # below ~1 MiB a slice is copied faster than a thread wakes up
MAX_THREADS = 8

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None   # (pid, workers): a forked child must not reuse its parent's pool


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
    """This process's pool of ``workers`` threads, made on first use (and again after a fork)."""
    global _pool, _pool_key
    with _lock:
        if _pool_key != (os.getpid(), workers):
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="course_lib")
            _pool_key = (os.getpid(), workers)
        return _pool


def for_each_slice(fn: Callable[[slice], object], n: int, nbytes: int) -> None:
    """Call ``fn(s)`` for slices ``s`` that split ``range(n)``, in parallel threads.

    fn : writes the part of its output that slice ``s`` owns; parts must not
        overlap (each thread writes its own rows, no locks)
    n : the length of the axis being split (for example the batch N)
    nbytes : about how many bytes the whole pass moves; at most one thread
        per ``MIN_BYTES_PER_THREAD`` is used, so small passes run inline

    The calling thread does the first slice itself. Every slice has finished
    when this returns; the first exception raised by any slice is re-raised.
    """
    parts = min(num_threads(), n, max(1, nbytes // MIN_BYTES_PER_THREAD))
    if parts <= 1:
        fn(slice(0, n))
        return
    bounds = [n * i // parts for i in range(parts + 1)]
    slices = [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    futures = [_executor(parts - 1).submit(fn, s) for s in slices[1:]]
    error = None
    try:
        fn(slices[0])
    except BaseException as exc:     # wait for the others before raising: they write into shared arrays
        error = exc
    for future in futures:
        exc = future.exception()
        error = error or exc
    if error is not None:
        raise error
