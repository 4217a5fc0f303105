"""The benchmark harness measures what it says: page faults per call, and a steady glibc heap.

No timing is asserted here (timings are `make bench`'s, as ratios within one run).
"""

from __future__ import annotations

import mmap
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import STEADY_HEAP
from benchmarks.common import faults_per_call

ROOT = Path(__file__).resolve().parents[1]
PAGES = 256


def _touch_fresh_pages() -> None:
    """Map 256 fresh pages and write one byte in each: 256 page faults, whatever the heap does."""
    with mmap.mmap(-1, PAGES * mmap.PAGESIZE) as memory:
        for page in range(PAGES):
            memory[page * mmap.PAGESIZE] = 1


@pytest.mark.skipif(sys.platform == "win32", reason="page faults are counted through POSIX getrusage")
def test_faults_per_call_counts_fresh_pages_and_nothing_else():
    assert faults_per_call(_touch_fresh_pages) >= 0.9 * PAGES
    reused = bytearray(PAGES * mmap.PAGESIZE)

    def touch_reused() -> None:
        for page in range(PAGES):
            reused[page * mmap.PAGESIZE] = 1
    assert faults_per_call(touch_reused) < 0.1 * PAGES


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the variables are glibc's")
def test_python_m_benchmarks_restarts_itself_with_the_steady_heap():
    """Started without the variables (as `make bench` and a student start it), it runs with them
    from its start: the header reads them from /proc/self/environ, which an os.environ update
    inside the process would not change. No module matches the filter, so nothing is timed."""
    env = {k: v for k, v in os.environ.items() if k not in STEADY_HEAP}
    run = subprocess.run([sys.executable, "-m", "benchmarks", "no_such_benchmark"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for name, value in STEADY_HEAP.items():
        assert f"{name}={value}" in run.stdout, run.stdout
    assert "0 measurements" in run.stdout


def test_the_route_rows_time_both_routes_on_a_wide_layer():
    """bench_conv's row-shift / batched-im2col rows, on a layer small enough for a test (their
    values are not asserted: timings are make bench's); the held targets name a benchmarked layer."""
    import numpy as np

    from benchmarks import bench_conv
    assert set(bench_conv.ROUTE_TARGETS) <= {layer[0] for layer in bench_conv.LAYERS}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 64, 16, 16), dtype=np.float32)
    w = rng.standard_normal((8, 64, 3, 3), dtype=np.float32)
    b = np.zeros(8, np.float32)
    dout = rng.standard_normal((2, 8, 16, 16), dtype=np.float32)
    rows = bench_conv._route_rows(bench_conv.RESNET_STRIDE_1, x, w, b, dout, 1, 1,
                                  bench_conv.Workspace(), 1e-3, 2e-3)
    assert [(r.section, r.target) for r in rows] == [("conv forward", 0.9), ("conv backward", 0.95)]
    assert all(r.value > 0 and "batched im2col" in r.name for r in rows)
