"""Run test code in daemon threads, so that a deadlock fails its test instead of hanging the suite."""

from __future__ import annotations

import threading
from typing import Callable


def in_threads(*fns: Callable[[], object], timeout: float = 20.0) -> tuple[list, list]:
    """Run ``fns[i]()`` in thread i, all at once; fail if one is still running after ``timeout`` s.

    Returns ``(results, errors)``: per function its return value, and the exception it raised
    (None if it returned), for the test to check.
    """
    results, errors = [None] * len(fns), [None] * len(fns)

    def run(i: int) -> None:
        try:
            results[i] = fns[i]()
        except BaseException as exc:         # noqa: BLE001 (handed back to the test)
            errors[i] = exc
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), f"still running after {timeout} s: a deadlock"
    return results, errors
