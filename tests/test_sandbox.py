"""The grader against hostile submissions: each attack an instructor met, before and after the sandbox.

Every attack sits in an answer cell of the fixture exercise (``test_grading``'s
``add`` and ``mul``, 6 points), beside a correct ``add``, so that the grade
shows whether the attack paid. One batch per mode:

* ``sandbox``: bubblewrap, the default where it starts. Where this machine
  could run it (Linux as root, or with user namespaces), it must be used:
  ``test_ci_uses_the_sandbox_where_it_can`` fails otherwise.
* ``limited``: the fallback (``--no-sandbox``), checked for what it promises:
  limits, and no process of the submission left afterwards.

Before the sandbox (the grader of 2026-12-05): the detached ``sleep`` outlived
grading with full marks, a file appeared in the checkout, the answer copied the
model answer out of the solution notebook (6 / 6), the connection reached a
server on the machine, and the memory hog woke the machine's OOM killer.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import nbformat
import psutil
import pytest

from conftest import ROOT
from grader import execute, grade, sandbox
from grader.grade import Limits, grade_all
from test_grading import EXERCISE, GOOD_ADD, GOOD_MUL, answered, solution_notebook

pytestmark = pytest.mark.slow
MARK = uuid.uuid4().hex[:8]              # tells this run's processes and files from any other's
SLEEP = 600 + int(MARK, 16) % 300        # `sleep SLEEP`: a number no other test uses
CAN_SANDBOX = sandbox.probe().name == "sandbox"
LIMITS = dict(memory=1 * sandbox.GIB, nproc=256, fsize=64 * 2**20)


def attacks(solution: Path, port: int) -> dict[str, nbformat.NotebookNode]:
    """student -> notebook; each answer is correct apart from its attack."""
    copy_model = (  # read the model answer out of the instructor's notebook: marks if it can
        "import json\n"
        f"cells = json.load(open({str(solution)!r}))['cells']\n"
        "src = [''.join(c['source']) for c in cells if c['metadata'].get('nbgrader', {}).get('grade_id') == 'mul'][0]\n"
        "exec(src.replace('### BEGIN SOLUTION', '').replace('### END SOLUTION', ''))")
    return {
        "detached": answered(add=GOOD_ADD + f"\nimport subprocess\nsubprocess.Popen(['sleep', '{SLEEP}'], "
                                            "start_new_session=True)", mul=GOOD_MUL),
        "double_fork": answered(add=GOOD_ADD + "\nimport os\nif os.fork() == 0:\n    os.setsid()\n"
                                               f"    os.execvp('sleep', ['sleep', '{SLEEP}'])", mul=GOOD_MUL),
        "writer": answered(add=GOOD_ADD + f"\nopen({str(ROOT / f'PWNED-{MARK}')!r}, 'w').write('x')", mul=GOOD_MUL),
        "reader": answered(add=GOOD_ADD, mul=copy_model),
        "network": answered(add=GOOD_ADD + f"\nimport socket\nsocket.create_connection(('127.0.0.1', {port}), "
                                           "timeout=3).sendall(b'stolen')", mul=GOOD_MUL),
        "memory_hog": answered(add=GOOD_ADD, mul="hog = []\nwhile True:\n    hog.append(bytearray(10**8))"),
        "honest": answered(add=GOOD_ADD, mul=GOOD_MUL),
    }


class Listener:
    """A TCP server on this machine that counts the connections it gets."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port, self.connections = self.server.getsockname()[1], 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


def _sleepers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", str(SLEEP)]]


def _grade(tmp_path_factory, use_sandbox: bool):
    base = tmp_path_factory.mktemp("sandbox" if use_sandbox else "limited")
    solution, folder, listener = base / f"{EXERCISE}.ipynb", base / "submitted", Listener()
    nbformat.write(solution_notebook(), solution)
    folder.mkdir()
    for student, nb in attacks(solution, listener.port).items():
        nbformat.write(nb, folder / f"{student}.ipynb")
    confinement = sandbox.Confinement(**LIMITS, use_sandbox=use_sandbox)
    grades = grade_all(solution, folder, jobs=2, limits=Limits(cell=20, notebook=120, confinement=confinement))
    listener.server.close()
    left = _sleepers()
    for proc in left:
        proc.kill()
    written = (ROOT / f"PWNED-{MARK}").exists()
    (ROOT / f"PWNED-{MARK}").unlink(missing_ok=True)
    return {g.student: g for g in grades}, left, listener.connections, written


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory):
    if not CAN_SANDBOX:
        pytest.skip(f"no sandbox on this machine: {sandbox.probe().reason}")
    return _grade(tmp_path_factory, use_sandbox=True)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    return _grade(tmp_path_factory, use_sandbox=False)


def test_ci_uses_the_sandbox_where_it_can():
    """On Linux as root (CI) or with user namespaces the sandbox must start; else this machine says why."""
    if sys.platform != "linux":
        pytest.skip("the sandbox is Linux only")
    userns = bool(shutil.which("unshare")) and subprocess.run(["unshare", "--user", "--map-root-user", "true"],
                                                               capture_output=True).returncode == 0
    if os.geteuid() == 0 or userns:
        assert CAN_SANDBOX, sandbox.probe().reason


def test_sandbox_every_submission_ran_there_and_honest_work_keeps_full_marks(sandboxed):
    grades = sandboxed[0]
    assert {g.mode for g in grades.values()} == {"sandbox"}
    assert (grades["honest"].points, grades["honest"].flags) == (6, [])


def test_sandbox_no_process_outlives_grading(sandboxed):
    grades, left, _, _ = sandboxed
    assert left == []
    for student in ("detached", "double_fork"):   # their answers were correct: the attack costs nothing here
        assert (grades[student].points, grades[student].status) == (6, "graded"), grades[student].detail
        assert not any(f.startswith("leftover_processes") for f in grades[student].flags)


def test_sandbox_cannot_write_the_checkout(sandboxed):
    grades, _, _, written = sandboxed
    assert not written
    assert grades["writer"].answer_errors["add"].startswith("OSError"), grades["writer"].answer_errors


def test_sandbox_cannot_read_the_solution(sandboxed):
    grades = sandboxed[0]
    assert grades["reader"].points == 3                      # test_mul fails: mul was never defined
    assert grades["reader"].answer_errors["mul"].startswith("FileNotFoundError")


def test_sandbox_has_no_network(sandboxed):
    grades, _, connections, _ = sandboxed
    assert connections == 0
    assert "add" in grades["network"].answer_errors           # the connection was refused


def test_sandbox_a_memory_hog_fails_alone(sandboxed):
    grades = sandboxed[0]
    hog = grades["memory_hog"]
    assert hog.points == 3 and hog.status == "graded"          # add's tests still pass
    assert "out_of_memory:mul" in hog.flags and "MemoryError" in hog.answer_errors["mul"]


def test_limited_mode_ends_every_process_it_can_find(limited):
    grades, left, _, _ = limited
    assert {g.mode for g in grades.values()} == {"limited"}
    assert left == []
    assert "leftover_processes:1" in grades["detached"].flags   # found in the kernel's session, ended
    assert "leftover_processes:1" in grades["double_fork"].flags   # found by its token, ended
    assert grades["honest"].points == 6 and grades["memory_hog"].points == 3
    assert "out_of_memory:mul" in grades["memory_hog"].flags


def test_limited_mode_runs_a_copy_of_the_library(tmp_path):
    code = "import course_lib, grader.guard\nprint(course_lib.__file__)\nprint(grader.guard.__file__)"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    execution = execute.run_notebook(nb, tmp_path, 60, 120, confinement=sandbox.Confinement(use_sandbox=False))
    for line in execution.runs[0].stdout.split():
        assert Path(line).is_relative_to(tmp_path) and not Path(line).is_relative_to(ROOT), line


@pytest.mark.parametrize("use_sandbox", [True, False], ids=["sandbox", "limited"])
def test_fork_bomb_and_huge_file_stop_at_their_limits(tmp_path, use_sandbox):
    if use_sandbox and not CAN_SANDBOX:
        pytest.skip(sandbox.probe().reason)
    fork = ("import subprocess\nkids = []\ntry:\n    for _ in range(1000):\n"
            "        kids.append(subprocess.Popen(['sleep', '30']))\nexcept OSError as err:\n"
            "    print('stopped at', len(kids), type(err).__name__)\nfor k in kids:\n    k.kill()")
    big = ("try:\n    open('big.bin', 'wb').write(bytes(2**27))\nexcept OSError as err:\n"
           "    print('file refused', err.errno)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(fork), nbformat.v4.new_code_cell(big)])
    limits = sandbox.Confinement(nproc=128, fsize=2**20, use_sandbox=use_sandbox)
    runs = execute.run_notebook(nb, tmp_path, 60, 120, confinement=limits).runs
    if (use_sandbox and sandbox.probe().own_uid) or os.geteuid() != 0:   # Linux does not hold root to RLIMIT_NPROC
        assert runs[0].stdout.startswith("stopped at") and int(runs[0].stdout.split()[2]) < 128, runs[0]
    assert runs[1].stdout.strip() == "file refused 27", runs[1]   # EFBIG


def test_a_required_sandbox_that_cannot_start_refuses_to_grade(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "probe", lambda: sandbox.Mode("limited", "no user namespaces (a test)"))
    solution = tmp_path / f"{EXERCISE}.ipynb"
    nbformat.write(solution_notebook(), solution)
    (tmp_path / "submitted").mkdir()
    assert grade.main([str(solution), str(tmp_path / "submitted"), "--require-sandbox", "--out",
                       str(tmp_path / "out")]) == 2
    assert "the sandbox is required (--require-sandbox) but no user namespaces (a test)" in capsys.readouterr().err


def test_the_console_ends_with_the_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "probe", lambda: sandbox.Mode("limited", "no user namespaces (a test)"))
    solution, folder = tmp_path / f"{EXERCISE}.ipynb", tmp_path / "submitted"
    nbformat.write(solution_notebook(), solution)
    folder.mkdir()
    nbformat.write(answered(add=GOOD_ADD, mul=GOOD_MUL), folder / "ann.ipynb")
    assert grade.main([str(solution), str(folder), "--out", str(tmp_path / "out")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "mode: limited 1: NOT sandboxed: no user namespaces (a test)"
    with (tmp_path / "out" / "grades.csv").open(newline="") as f:
        assert {row["mode"] for row in csv.DictReader(f)} == {"limited"}


def test_user_ids_are_claimed_across_graders_and_given_back():
    """Two rooms, here or in another grader beside this one, never share a user id (RLIMIT_NPROC
    would add up their threads); an id is free again once its room is closed."""
    first, fd1 = sandbox.claim_uid()
    second, fd2 = sandbox.claim_uid()
    other = subprocess.run([sys.executable, "-c", "from grader import sandbox; print(sandbox.claim_uid()[0])"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert len({first, second, int(other.stdout)}) == 3, (first, second, other.stdout, other.stderr)
    import fcntl
    probe = os.open(sandbox.UID_LOCKS / str(first), os.O_RDWR)
    with pytest.raises(OSError):
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)   # held
    os.close(fd1)
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)       # given back
    os.close(probe)
    os.close(fd2)
