"""Re-execute notebooks in place so their stored outputs are fresh (nbval compares them).

    .venv/bin/python tools/execute_notebooks.py notebooks/01_convolution.ipynb [...]
    make notebooks                      # every lesson and solution notebook

Runs each notebook top to bottom in a fresh kernel of this environment, on the
CPU (COURSE_DEVICE=cpu: the stored outputs are what a student's laptop shows),
from the notebook's own folder, and prints its wall time (the budget is 60 s).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

BUDGET_S = 60.0


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    os.environ["COURSE_DEVICE"] = "cpu"
    client = NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nb.metadata.kernelspec = {"name": "dlsys-perf", "display_name": "Python (DL Systems Performance)",
                              "language": "python"}
    nbformat.write(nb, path)
    return elapsed


def main(paths: list[str]) -> int:
    slow = []
    for p in paths:
        elapsed = execute(Path(p))
        flag = "" if elapsed <= BUDGET_S else f"  OVER the {BUDGET_S:.0f} s budget"
        print(f"{elapsed:6.1f} s  {p}{flag}", flush=True)
        if flag:
            slow.append(p)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
