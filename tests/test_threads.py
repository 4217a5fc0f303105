"""course_lib.threads: how work is split, that errors come back, and that a forked child still works."""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pytest

from course_lib import threads
from course_lib.threads import for_each_slice, num_threads


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


def test_a_forked_child_makes_its_own_pool(monkeypatch):
    """A child forked after the parent's pool exists must not wait on the parent's (absent) threads."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("this platform cannot fork")
    monkeypatch.setenv("COURSE_LIB_THREADS", "2")
    _record(4, 1 << 40)                                   # the parent's pool now exists
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
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
