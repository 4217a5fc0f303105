"""Linux ``/proc`` helpers for the tests that SIGKILL a parent and look for its orphaned workers.

A worker is known by its pid *and* its start time, so a pid the system reuses
after the worker died is never mistaken for it (nor killed by a test's clean-up).
"""

from __future__ import annotations

import os
import signal
import time


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
