"""Run every benchmarks/bench_*.py, print one markdown table, exit 1 if a target is missed.

    python -m benchmarks              # all
    python -m benchmarks conv         # only modules whose name contains 'conv'
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from pathlib import Path

# glibc hands a large freed block back to the operating system (mmap'd blocks always, others when
# they lie at the top of the heap), and the next large allocation then comes as fresh pages, one
# page fault per 4 KiB. Whether that happens depends on what the process freed before: F.conv2d on
# the ResNet stride-1 layer took 9 ms in one process and 18 ms (9,000 page faults per call, for its
# output and temporaries) in the next. Both libraries are timed in the steady state a training loop
# reaches: blocks up to 32 MiB (the largest mmap threshold every glibc accepts) come from the heap,
# which is never trimmed. (docs/benchmarks.md, "Page faults in the reference")
STEADY_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(1 << 25), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}


def _started_with() -> dict[str, str]:
    """The environment this process started with (Linux: /proc/self/environ), else os.environ."""
    try:
        items = Path("/proc/self/environ").read_bytes().split(b"\0")
    except OSError:
        return dict(os.environ)
    return dict(item.decode(errors="replace").split("=", 1) for item in items if b"=" in item)


def main(argv: list[str]) -> int:
    start = _started_with()
    if platform.libc_ver()[0] == "glibc" and any(start.get(k) != v for k, v in STEADY_HEAP.items()):
        # glibc reads them when a process starts: start again with them, with the same flags
        args = getattr(sys, "orig_argv", None) or [sys.executable, "-m", "benchmarks", *argv]
        os.execve(sys.executable, [sys.executable, *args[1:]], {**os.environ, **STEADY_HEAP})
    # As `make` and the course kernel do (see the Makefile): OpenBLAS's idle workers sleep at once
    # instead of spinning for 0.1 s on a core the next numpy copy needs. Read when numpy loads.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    if argv:
        names = [n for n in names if any(a in n for a in argv)]
    import numpy as np
    import torch
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"numpy {np.__version__}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
          f"OPENBLAS_THREAD_TIMEOUT={os.environ['OPENBLAS_THREAD_TIMEOUT']}, "
          + ", ".join(f"{k}={start.get(k)}" for k in STEADY_HEAP))
    print("\n| section | case | measured | target | status | note |\n|---|---|---|---|---|---|")
    results = []
    for name in names:
        for result in importlib.import_module(f"benchmarks.{name}").run():
            print(result.row(), flush=True)
            results.append(result)
    missed = [r for r in results if r.ok is False]
    print(f"\n{len(results)} measurements, {sum(r.ok is True for r in results)} targets met, "
          f"{len(missed)} missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
