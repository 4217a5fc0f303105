"""Timing helpers shared by every benchmark: warm-up, repeats, median."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Result:
    """One line of the benchmark table.

    value:  the measured ratio (ours / reference) or figure
    target: the bound value must meet, or None when only reported
    higher_is_better: True for speed-ups and bandwidth ratios
    """
    section: str
    name: str
    value: float
    target: float | None = None
    higher_is_better: bool = False
    unit: str = "x"
    note: str = ""

    @property
    def ok(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def row(self) -> str:
        sign = ">= " if self.higher_is_better else "<= "
        bound = "" if self.target is None else f"{sign}{self.target:g}{self.unit}"
        status = {None: "report", True: "ok", False: "MISSED"}[self.ok]
        return f"| {self.section} | {self.name} | {self.value:.3g}{self.unit} | {bound} | {status} | {self.note} |"


def median_time(fn: Callable[[], object], repeats: int = 7, warmup: int = 2,
                min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls.

    If one call is shorter than ``min_time`` seconds, each sample times a
    loop of calls long enough to be measured, divided by its length.
    """
    for _ in range(warmup):
        fn()
    loops = 1
    if min_time:
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        loops = max(1, int(min_time / max(once, 1e-9)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - start) / loops)
    return statistics.median(samples)


def faults_per_call(fn: Callable[[], object], calls: int = 5) -> float:
    """Page faults per call of ``fn()`` (minor faults: fresh memory mapped in 4 KiB at a time), after one
    untimed call: nonzero when a call gets its memory from the operating system again each time."""
    try:
        import resource          # POSIX only
    except ImportError:
        return float("nan")
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def same_threads(n: int | None = None) -> int:
    """Give torch the thread count numpy's BLAS uses (all cores), so ratios are fair."""
    import os
    import torch
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n
