"""course_lib.machinery.threads: how work is split, that errors come back, and that a forked child still works."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from course_lib.machinery import threads
from course_lib.machinery.threads import for_each_slice, num_threads
from threadrun import in_threads


def _record(n: int, nbytes: int) -> list[tuple[slice, str]]:
    seen, lock = [], threading.Lock()

    def fn(s: slice) -> None:
        with lock:
            seen.append((s, threading.current_thread().name))
    for_each_slice(fn, n, nbytes)
    return sorted(seen, key=lambda t: t[0].start)


@pytest.mark.parametrize("n, workers", [(1, 4), (5, 2), (7, 3), (64, 8), (3, 8)])
def test_slices_cover_the_axis_once_in_order(monkeypatch, n, workers):
    monkeypatch.setenv("COURSE_LIB_THREADS", str(workers))
    seen = _record(n, nbytes=1 << 40)
    covered = [i for s, _ in seen for i in range(n)[s]]
    assert covered == list(range(n))
    assert len(seen) == min(n, workers)
    assert seen[0][1] == threading.current_thread().name       # the caller does the first slice
    assert all(name.startswith("course_lib") for _, name in seen[1:])


def test_small_work_runs_inline_on_the_calling_thread(monkeypatch):
    monkeypatch.setenv("COURSE_LIB_THREADS", "4")
    assert _record(100, nbytes=threads.MIN_BYTES_PER_THREAD - 1) == [(slice(0, 100), threading.current_thread().name)]
    assert len(_record(100, nbytes=2 * threads.MIN_BYTES_PER_THREAD)) == 2   # one thread per MiB, at most


def test_an_exception_in_any_slice_is_raised_after_every_slice_finished(monkeypatch):
    monkeypatch.setenv("COURSE_LIB_THREADS", "3")
    finished = []

    def fn(s: slice) -> None:
        if s.start == 2:
            raise ZeroDivisionError(f"slice {s}")
        finished.append(s.start)
    with pytest.raises(ZeroDivisionError, match="slice"):
        for_each_slice(fn, 6, 1 << 40)
    assert sorted(finished) == [0, 4]


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_explained(monkeypatch, value):
    monkeypatch.setenv("COURSE_LIB_THREADS", value)
    with pytest.raises(ValueError, match="COURSE_LIB_THREADS.*whole number"):
        num_threads()


def test_default_is_the_usable_cores_at_most_eight(monkeypatch):
    monkeypatch.delenv("COURSE_LIB_THREADS", raising=False)
    assert 1 <= num_threads() <= threads.MAX_THREADS


def _split_in_child(queue) -> None:
    out = np.zeros(8)

    def fn(s: slice) -> None:
        out[s] = np.arange(8)[s]
    for_each_slice(fn, 8, 1 << 40)
    queue.put(out.tolist())


def _assert_a_forked_child_splits(held_while_forking) -> None:
    """Fork a child (inside the context manager given) that splits a pass; it must finish and be right."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    with held_while_forking:
        child = ctx.Process(target=_split_in_child, args=(queue,))
        child.start()
    try:
        assert queue.get(timeout=20) == list(range(8))
    finally:
        child.join(timeout=20)
        if child.is_alive():
            child.kill()
            child.join(timeout=5)
    assert child.exitcode == 0


def test_a_forked_child_makes_its_own_pool(monkeypatch):
    """A child forked after the parent's pool exists must not wait on the parent's (absent) threads."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("this platform cannot fork")
    monkeypatch.setenv("COURSE_LIB_THREADS", "2")
    _record(4, 1 << 40)                                   # the parent's pool now exists
    _assert_a_forked_child_splits(contextlib.nullcontext())


def _helper_threads() -> list[threading.Thread]:
    """The live threads of course_lib's pools (each pool numbers its own: course_lib_0, course_lib_1, ...)."""
    return [t for t in threading.enumerate() if t.name.startswith("course_lib") and t.is_alive()]


def _no_pool_yet() -> None:
    """Shut this process's pool down and wait until every course_lib thread has exited: those of
    that pool and of pools shut down earlier (another thread count), which exit once idle."""
    with threads._lock:
        old, threads._pool, threads._pool_workers = threads._pool, None, 0
    if old is not None:
        old.shutdown(wait=True)
    for t in _helper_threads():
        t.join(timeout=10)
    assert not _helper_threads(), f"threads of a shut-down pool did not exit: {_helper_threads()}"


def _split_all_at_once(parts: int) -> None:
    """A pass in ``parts`` slices that all wait for each other, so ``parts - 1`` helper threads
    run at once (a pool reuses an idle thread for quick slices, which would hide a second pool)."""
    barrier = threading.Barrier(parts, timeout=10)
    for_each_slice(lambda s: barrier.wait(), 64, parts * threads.MIN_BYTES_PER_THREAD)


def test_one_pool_serves_every_split(monkeypatch):
    """Passes of different sizes (2 parts, then 8, then 3) share the process's pool of num_threads() - 1 threads."""
    monkeypatch.setenv("COURSE_LIB_THREADS", "8")
    _no_pool_yet()
    _split_all_at_once(2)
    pool = threads._pool
    _split_all_at_once(8)
    _split_all_at_once(3)
    assert threads._pool is pool and threads._pool_workers == 7
    live = _helper_threads()   # count threads, not names: a second pool would reuse the same names
    assert len(live) == 7, f"{len(live)} course_lib threads alive, expected 7 (one pool of 7)"


def _in_a_thread(target, timeout: float = 20.0) -> None:
    """Run target in a daemon thread; fail (instead of hanging the suite) if it does not finish."""
    _, (error,) = in_threads(target, timeout=timeout)
    if error is not None:
        raise error


def test_a_slice_that_splits_again_runs_inline_instead_of_deadlocking(monkeypatch):
    monkeypatch.setenv("COURSE_LIB_THREADS", "2")
    out = np.zeros((4, 4))

    def inner_rows(s: slice) -> None:
        def cells(t: slice, rows=s) -> None:
            out[rows, t] += 1
        for_each_slice(cells, 4, 1 << 40)            # called from inside a slice
    _in_a_thread(lambda: for_each_slice(inner_rows, 4, 1 << 40))
    np.testing.assert_array_equal(out, 1)


def test_the_callers_exception_waits_for_the_other_slices(monkeypatch):
    monkeypatch.setenv("COURSE_LIB_THREADS", "2")
    finished = threading.Event()

    def fn(s: slice) -> None:
        if s.start == 0:
            raise KeyError("caller's slice")
        time.sleep(0.2)
        finished.set()
    with pytest.raises(KeyError, match="caller's slice"):
        for_each_slice(fn, 2, 1 << 40)
    assert finished.is_set(), "returned while a helper thread was still writing"


def test_works_while_the_interpreter_shuts_down():
    """From an atexit handler no new thread may start: every slice then runs on the caller."""
    code = ("import atexit, os\n"
            "os.environ['COURSE_LIB_THREADS'] = '2'\n"
            "from course_lib.machinery.threads import for_each_slice\n"
            "seen = []\n"
            "for_each_slice(seen.append, 4, 1 << 40)\n"
            "def late():\n"
            "    done = []\n"
            "    for_each_slice(done.append, 4, 1 << 40)\n"
            "    print('late', sorted(s.start for s in done))\n"
            "atexit.register(late)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "late [0, 2]" in result.stdout


def test_a_child_forked_while_the_lock_is_held_still_works(monkeypatch):
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("this platform cannot fork")
    monkeypatch.setenv("COURSE_LIB_THREADS", "2")
    _assert_a_forked_child_splits(threads._lock)   # as if another thread were inside _executor at fork time


# ---- behaviour pinned down by mutation testing

def test_a_slice_may_split_twice_inline(monkeypatch):
    """After a nested pass returns, the slice is still inside one: a second nested pass
    must run inline too (not be handed to the pool, whose only thread may be this one)."""
    monkeypatch.setenv("COURSE_LIB_THREADS", "2")
    out = np.zeros((4, 4))

    def inner_rows(s: slice) -> None:
        for _ in range(2):
            def cells(t: slice, rows=s) -> None:
                out[rows, t] += 1
            for_each_slice(cells, 4, 1 << 40)
    _in_a_thread(lambda: for_each_slice(inner_rows, 4, 1 << 40))
    np.testing.assert_array_equal(out, 2)


def test_default_caps_many_cores_at_eight(monkeypatch):
    monkeypatch.delenv("COURSE_LIB_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert num_threads() == threads.MAX_THREADS == 8
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert num_threads() == 3


def test_the_pool_follows_a_changed_thread_count(monkeypatch):
    """The pool is made again when COURSE_LIB_THREADS changes: num_threads() - 1 helpers."""
    for count in (3, 2, 4):
        monkeypatch.setenv("COURSE_LIB_THREADS", str(count))
        _split_all_at_once(count)            # needs count - 1 helper threads at once, else it times out
        assert threads._pool_workers == count - 1


def test_the_callers_exception_wins_over_a_helpers(monkeypatch):
    monkeypatch.setenv("COURSE_LIB_THREADS", "3")

    def fn(s: slice) -> None:
        raise (KeyError if s.start == 0 else ValueError if s.start == 1 else OSError)(f"slice {s.start}")
    with pytest.raises(KeyError, match="slice 0"):
        for_each_slice(fn, 3, 1 << 40)

    def helpers_only(s: slice) -> None:
        if s.start:
            raise (ValueError if s.start == 1 else OSError)(f"slice {s.start}")
    with pytest.raises(ValueError, match="slice 1"):                 # the first slice's, in order
        for_each_slice(helpers_only, 3, 1 << 40)
