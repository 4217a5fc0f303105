"""Measure the grader as the closing notes report it: each attack's outcome, and seconds per submission.

    .venv/bin/python tools/measure_grader.py attacks [--grader "python -m grader"] [--pythonpath DIR]
    .venv/bin/python tools/measure_grader.py class N [-j 2] [--grader ...] [--pythonpath DIR]
    .venv/bin/python tools/measure_grader.py speed N [-j 2]

``attacks`` grades tests/test_sandbox.py's hostile submissions (all but the
memory hog, which can wake the machine's OOM killer under a grader without
limits) plus a student named ``=HYPERLINK("x")``, and prints what each attack
achieved. ``class N`` grades N fixture submissions (correct, half right, a
syntax error, in turn) and prints the wall time. ``speed N`` grades, N times,
the model answer and the deliberately slow variants of every speed-graded part
(from tests/exercise_cases/) in one batch per exercise, and prints how often
each passed its speed test, and the seconds per submission (run it beside
``make test`` to see them on a loaded machine). ``--grader`` and
``--pythonpath`` run another grader: the one before the sandbox is
``--grader "python -m course_lib.grade" --pythonpath <a checkout of 3dd2469>``.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import test_sandbox as attacks_module  # noqa: E402
from test_grading import GOOD_ADD, GOOD_MUL, answered, solution_notebook  # noqa: E402


def _listener() -> tuple[socket.socket, list[int]]:
    server, count = socket.create_server(("127.0.0.1", 0)), [0]

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            count[0] += 1
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    return server, count


def _grade(base: Path, grader: str, pythonpath: str, jobs: int,
           solution: str = "00_fixture_exercise.ipynb") -> tuple[float, str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath or str(ROOT), "OPENBLAS_THREAD_TIMEOUT": "4",
           "HOME": str(Path.home())}
    command = [sys.executable if word == "python" else word for word in shlex.split(grader)]
    start = time.perf_counter()
    done = subprocess.run([*command, str(base / solution), str(base / "submitted"),
                           "--out", str(base / "out"), "-j", str(jobs)], capture_output=True, text=True, env=env,
                          cwd=base)
    return time.perf_counter() - start, (done.stdout.strip().splitlines() or [done.stderr])[-1]


def attacks(grader: str, pythonpath: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        base, (server, connections) = Path(folder), _listener()
        (base / "submitted").mkdir()
        nbformat.write(solution_notebook(), base / "00_fixture_exercise.ipynb")
        for name, nb in attacks_module.attacks(base / "00_fixture_exercise.ipynb", server.getsockname()[1]).items():
            if name != "memory_hog":
                nbformat.write(nb, base / "submitted" / f"{name}.ipynb")
        nbformat.write(answered(add=GOOD_ADD, mul=GOOD_MUL), base / "submitted" / '=HYPERLINK("x").ipynb')
        seconds, last = _grade(base, grader, pythonpath, 2)
        time.sleep(1)
        sleepers = [p for p in psutil.process_iter(["cmdline"])
                    if p.info["cmdline"] == ["sleep", str(attacks_module.SLEEP)]]
        for proc in sleepers:
            proc.kill()
        pwned = ROOT / f"PWNED-{attacks_module.MARK}"
        written = pwned.exists()
        pwned.unlink(missing_ok=True)
        rows = {r["student"]: r for r in csv.DictReader((base / "out" / "grades.csv").open(newline=""))
                if r["test_id"] == "TOTAL"}
        formula = next(line for line in (base / "out" / "grades.csv").read_text().splitlines() if "HYPERLINK" in line)
        server.close()
    print(f"{seconds:.1f} s; last line: {last}")
    print(f"processes left running (detached, double fork): {len(sleepers)}")
    print(f"file written into the checkout: {written}")
    print(f"reader, which copies the model answer out of the solution file: {rows['reader']['points']} / 6")
    print(f"connections that reached a server on this machine: {connections[0]}")
    print(f"the formula student's CSV row starts: {formula[:24]}")


def grade_class(n: int, jobs: int, grader: str, pythonpath: str) -> None:
    variants = [answered(add=GOOD_ADD, mul=GOOD_MUL), answered(add=GOOD_ADD, mul="def mul(a, b):\n    return a + b"),
                answered(add="def add(a, b)\n    return a + b", mul=GOOD_MUL)]
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        (base / "submitted").mkdir()
        nbformat.write(solution_notebook(), base / "00_fixture_exercise.ipynb")
        for i in range(n):
            nbformat.write(variants[i % 3], base / "submitted" / f"student{i:02d}.ipynb")
        seconds, last = _grade(base, grader, pythonpath, jobs)
    print(f"{n} submissions, -j {jobs}: {seconds:.1f} s ({seconds / n:.2f} s each); last line: {last}")


# (exercise, part, the speed test, the fragments naming its deliberately slow variants in the cases module)
SPEED_PARTS = [("02_conv_dilation_groups_exercise", "im2col_dilated", "test_im2col_dilated_speed",
                ("not one small copy per window", "nor a gather through index arrays")),
               ("05_lenet_fast_exercise", "fast_lenet5", "test_fast_lenet5_speed", ("must be at least 1.5x as fast",))]


def speed(n: int, jobs: int, grader: str) -> None:
    from test_exercise_cases import _instructor, _submission, parts
    for stem, part, test_id, fragments in SPEED_PARTS:
        wrong = parts(stem)[part]["wrong"]
        variants = {"model": None} | {f"slow{i}": source for i, (source, fragment) in enumerate(wrong)
                                      if fragment in fragments}
        passed, seconds = {name: 0 for name in variants}, []
        for run in range(n):
            with tempfile.TemporaryDirectory() as folder:
                base = Path(folder)
                (base / "submitted").mkdir()
                instructor = _instructor(stem)
                nbformat.write(instructor, base / f"{stem}.ipynb")
                for name, source in variants.items():
                    nb = _submission(instructor, {} if source is None else {part: source})
                    nbformat.write(nb, base / "submitted" / f"{name}.ipynb")
                took, last = _grade(base, grader, "", jobs, solution=f"{stem}.ipynb")
                seconds.append(took / len(variants))
                for row in csv.DictReader((base / "out" / "grades.csv").open(newline="")):
                    if row["test_id"] == test_id and row["status"] == "passed":
                        passed[row["student"]] += 1
            print(f"  {stem} run {run + 1}: {took:.1f} s, load {psutil.getloadavg()[0]:.1f}; {last}", flush=True)
        print(f"{stem} {test_id}: " + ", ".join(f"{name} passed {k}/{n}" for name, k in passed.items())
              + f"; grading {min(seconds):.1f} to {max(seconds):.1f} s per submission (-j {jobs})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["attacks", "class", "speed"])
    parser.add_argument("n", nargs="?", type=int, default=40)
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--grader", default="python -m grader", help="the command, before its arguments")
    parser.add_argument("--pythonpath", default="", help="PYTHONPATH for the grader (default: this checkout)")
    args = parser.parse_args()
    if args.what == "attacks":
        attacks(args.grader, args.pythonpath)
    elif args.what == "speed":
        speed(args.n, args.jobs, args.grader)
    else:
        grade_class(args.n, args.jobs, args.grader, args.pythonpath)
    return 0


if __name__ == "__main__":
    sys.exit(main())
