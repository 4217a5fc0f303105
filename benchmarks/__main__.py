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


def main(argv: list[str]) -> int:
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
          f"OPENBLAS_THREAD_TIMEOUT={os.environ['OPENBLAS_THREAD_TIMEOUT']}")
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
