"""Process helpers for the tests that start workers: nothing left behind, no orphan survives.

``leaves_nothing_behind``: an autouse fixture (import it into a test module)
that fails a test after which a child process still runs or a shared-memory
segment it created still exists. The rest are Linux ``/proc`` helpers for the
tests that SIGKILL a parent and look for its orphaned workers. A worker is
known by its pid *and* its start time, so a pid the system reuses after the
worker died is never mistaken for it (nor killed by a test's clean-up).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from multiprocessing import shared_memory

import pytest

IS_LINUX = sys.platform.startswith("linux")


def proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, ..., starttime at 19]; None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int, started: str) -> bool:
    """The process we saw start at ``started`` still runs (a zombie is dead; a reused pid is not it)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z" and stat[19] == started


def workers_of(parent: int) -> dict[int, str]:
    """The children of ``parent``, pid -> start time, multiprocessing's resource tracker left out."""
    found = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        stat = proc_stat(int(p))
        if stat is not None and int(stat[1]) == parent:
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if b"resource_tracker" in f.read():
                        continue
            except OSError:
                continue
            found[int(p)] = stat[19]
    return found


def wait_for_workers(parent: int, count: int, seconds: float = 30) -> dict[int, str]:
    """``workers_of(parent)`` once it has ``count`` of them, or what it has after ``seconds``."""
    workers, deadline = {}, time.monotonic() + seconds
    while len(workers) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        workers = workers_of(parent)
    return workers


def still_alive(workers: dict[int, str], seconds: float = 10) -> list[int]:
    """The workers still running after waiting up to ``seconds`` for all of them to end."""
    deadline = time.monotonic() + seconds
    while any(alive(pid, t) for pid, t in workers.items()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid, t in workers.items() if alive(pid, t)]


def kill_left(workers: dict[int, str]) -> None:
    """SIGKILL the workers that still run: a failed test must not leave them behind."""
    for pid, t in workers.items():
        if alive(pid, t):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def parent_with_workers(script: str, cwd, count: int, **popen):
    """Run ``script`` in a new Python process (this checkout first on its path) and wait until it
    has ``count`` workers; yield ``(process, workers)``. On the way out, whatever happened, the
    process is killed and reaped and every worker still running is SIGKILLed."""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": os.getcwd()}, **popen)
    workers = {}
    try:
        workers = wait_for_workers(proc.pid, count)                  # pid -> start time
        assert len(workers) >= count, f"workers did not start: {sorted(workers)}"
        yield proc, workers
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kill_left(workers)


def live_children() -> set[int]:
    """Live child processes of this test process, other than multiprocessing's helpers."""
    if not IS_LINUX:
        return {p.pid for p in mp.active_children()}
    helpers = {getattr(mp.resource_tracker._resource_tracker, "_pid", None)}
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and int(entry) not in helpers:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"forkserver" not in f.read():
                    found.add(int(entry))
    return found


@pytest.fixture(autouse=True)
def leaves_nothing_behind(monkeypatch):
    """Record every shared-memory segment created during the test; afterwards none may exist,
    and no child process may still run."""
    created, real_init = [], shared_memory.SharedMemory.__init__

    def recording_init(self, name=None, create=False, size=0, **kwargs):
        real_init(self, name, create, size, **kwargs)
        if create:
            created.append(self._name)
    monkeypatch.setattr(shared_memory.SharedMemory, "__init__", recording_init)
    before = live_children()
    yield created
    leftover = [n for n in created if os.path.exists(f"/dev/shm/{n.lstrip('/')}")] if IS_LINUX else []
    assert not leftover, f"shared memory left behind: {leftover}"
    deadline = time.monotonic() + 5
    while live_children() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (live_children() - before), f"child processes left running: {live_children() - before}"

