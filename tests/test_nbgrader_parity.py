"""The kit's grader against nbgrader itself: the same scores on nbgrader's own material.

Read at test time from the installed nbgrader package (nothing of it is
copied into this project):

* its documentation's example course: ``docs/source/user_guide/source/ps1``
  (``problem1``, ``problem2``) and the submissions of ``bitdiddle`` and
  ``hacker``;
* the autograde fixtures of its own tests (as in nbgrader's
  ``test_grade_cheat_attempt``): ``submitted-unchanged.ipynb`` as the source
  of assignment ``p1``, and ``submitted-unchanged``, ``-changed``,
  ``-cheat-attempt`` and ``-cheat-attempt-alternative`` as four students'.

A third assignment, ``partial``, is written here: test cells whose values
nbgrader turns into partial credit, hidden tests, a task with a mark scheme,
and one test that writes to stderr, where the kit differs on purpose
(nbgrader scores it 0; in the kit a warning costs nothing).

``nbgrader generate_assignment`` and ``nbgrader autograde`` grade the course
in a temporary folder; the kit grades the same sources and submissions. Every
autograded cell must score the same, and the same cells must await grading
by hand. No score is written here: nbgrader's are the reference. Run with
``-s`` to see the table and the time each took. Skipped when nbgrader is not
installed (``make test`` installs it).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from grader.grade import Limits, grade_all

nbgrader = pytest.importorskip("nbgrader", reason="nbgrader is not installed: pip install -e '.[nbgrader]'")
pytestmark = pytest.mark.slow

PACKAGE = Path(nbgrader.__file__).parent
EXAMPLE = PACKAGE / "docs" / "source" / "user_guide"
FIXTURES = PACKAGE / "tests" / "apps" / "files"
CHEATS = {"unchanged": "submitted-unchanged.ipynb", "changed": "submitted-changed.ipynb",
          "cheat": "submitted-cheat-attempt.ipynb", "cheat_alt": "submitted-cheat-attempt-alternative.ipynb"}
# (assignment, cell) -> why the kit scores it differently, on purpose
KIT_DIFFERS = {("partial", "test_stderr"): "nbgrader scores a test that writes to stderr 0; in the kit a warning "
                                           "costs nothing"}


def _meta(grade_id: str, **flags) -> dict:
    meta = {"grade": False, "solution": False, "locked": False, "grade_id": grade_id, "schema_version": 3}
    meta.update(flags)
    if meta["grade"] and not meta["solution"]:
        meta["locked"] = True
    return {"nbgrader": meta}


def partial_source() -> nbformat.NotebookNode:
    """The 'partial' assignment: values as partial credit, hidden tests, a task, stderr."""
    code, md = nbformat.v4.new_code_cell, nbformat.v4.new_markdown_cell
    test = lambda grade_id, source, points=1: code(source, metadata=_meta(grade_id, grade=True, points=points))
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                          "language": "python"}})
    nb.cells = [
        md("Write `f` returning 1.0."),
        code("def f():\n    # BEGIN SOLUTION\n    return 1.0\n    # END SOLUTION", metadata=_meta("f", solution=True)),
        test("test_scaled", "f() * 2", points=2),                 # a number: partial credit
        test("test_zero", "0 * f()"),                              # 0 points, though it ran
        test("test_numpy", "import numpy as np\nnp.float64(f() / 2)"),   # not a bare number: full
        test("test_negative", "-f()"), test("test_text", "'0.5'"), test("test_none", "None"),
        test("test_hidden", "assert f() > 0\n### BEGIN HIDDEN TESTS\nassert f() == 1.0\n### END HIDDEN TESTS"),
        test("test_stderr", "import sys\nprint('a warning', file=sys.stderr)\nassert f() > 0"),
        md("Explain `f`.\n### BEGIN MARK SCHEME\nFull marks for 'a constant'.\n### END MARK SCHEME",
           metadata=_meta("task_explain", task=True, locked=True, points=2)),
    ]
    return nb


def _nbgrader(course: Path, *args: str) -> float:
    """Run ``nbgrader ARGS`` in ``course``; its wall time in seconds."""
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return time.perf_counter() - start


def build_course(course: Path) -> dict[str, list[str]]:
    """nbgrader's course layout: source/ASSIGNMENT/NB.ipynb and submitted/STUDENT/ASSIGNMENT/NB.ipynb.

    Returns assignment -> its notebooks' names."""
    course.mkdir(parents=True, exist_ok=True)
    (course / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.root = {str(course)!r}\n"
        f"c.CourseDirectory.db_url = {'sqlite:///' + str(course / 'gradebook.db')!r}\n")
    shutil.copytree(EXAMPLE / "source" / "ps1", course / "source" / "ps1")
    for student in ("bitdiddle", "hacker"):
        shutil.copytree(EXAMPLE / "submitted" / student / "ps1", course / "submitted" / student / "ps1")
    (course / "source" / "p1").mkdir(parents=True)
    shutil.copy(FIXTURES / "submitted-unchanged.ipynb", course / "source" / "p1" / "p1.ipynb")
    for student, fixture in CHEATS.items():
        (course / "submitted" / student / "p1").mkdir(parents=True)
        shutil.copy(FIXTURES / fixture, course / "submitted" / student / "p1" / "p1.ipynb")
    (course / "source" / "partial").mkdir(parents=True)
    nbformat.write(partial_source(), course / "source" / "partial" / "partial.ipynb")
    return {"ps1": ["problem1", "problem2"], "p1": ["p1"], "partial": ["partial"]}


def write_partial_submissions(course: Path) -> None:
    """Two students answer the released 'partial' notebook (nbgrader's release/): 1.0 and 0.25."""
    released = nbformat.read(course / "release" / "partial" / "partial.ipynb", as_version=4)
    for student, value in (("full", "1.0"), ("quarter", "0.25")):
        nb = copy.deepcopy(released)
        answer = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "f")
        answer.source = f"def f():\n    return {value}"
        (course / "submitted" / student / "partial").mkdir(parents=True)
        nbformat.write(nb, course / "submitted" / student / "partial" / "partial.ipynb")


def nbgrader_scores(course: Path) -> dict[tuple, tuple[float | None, bool]]:
    """(assignment, notebook, student, cell) -> (auto score, needs manual grading), from the gradebook."""
    from nbgrader.api import Gradebook
    scores = {}
    with Gradebook("sqlite:///" + str(course / "gradebook.db")) as gb:
        for assignment in gb.assignments:
            for sub in gb.assignment_submissions(assignment.name):
                for notebook in sub.notebooks:
                    for grade in notebook.grades:
                        key = (assignment.name, notebook.name, sub.student.id, grade.name)
                        scores[key] = (grade.auto_score, grade.needs_manual_grade)
    return scores


def kit_scores(course: Path, notebooks: dict[str, list[str]]) -> tuple[dict[tuple, object], dict[str, tuple]]:
    """The same keys -> the kit's TestResult, one kernel at a time; and per assignment, how many
    notebooks it graded and the seconds that took."""
    results, timing = {}, {}
    for assignment, names in notebooks.items():
        start, runs = time.perf_counter(), 0
        for name in names:
            folder = course / "kit" / assignment / name   # the kit's layout: one folder per exercise
            for student_dir in sorted((course / "submitted").iterdir()):
                if (student_dir / assignment / f"{name}.ipynb").exists():
                    shutil.copytree(student_dir / assignment, folder / student_dir.name)
            grades = grade_all(course / "source" / assignment / f"{name}.ipynb", folder, jobs=1,
                               limits=Limits(cell=30, notebook=120), files_from=course / "source" / assignment)
            runs += len(grades)
            for g in grades:
                assert g.status == "graded", (assignment, name, g.student, g.status, g.detail)
                results.update({(assignment, name, g.student, t.test_id): t for t in g.tests})
        timing[assignment] = (runs, time.perf_counter() - start)
    return results, timing


def table(theirs: dict, ours: dict) -> str:
    """cell | nbgrader | kit, one row per graded cell of each submission."""
    def show(score, manual):
        return "by hand" if manual else f"{score:g}"
    rows = [("assignment/notebook", "student", "cell", "nbgrader", "kit")]
    for key in sorted(theirs):
        mine = ours.get(key)
        kit = "missing" if mine is None else show(mine.points, mine.status == "needs_manual")
        rows.append((f"{key[0]}/{key[1]}", key[2], key[3], show(*theirs[key]), kit))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)


def test_the_kit_scores_as_nbgrader_does(tmp_path):
    course = tmp_path / "course"
    notebooks = build_course(course)
    for name in notebooks:
        _nbgrader(course, "generate_assignment", name, "--force")
    write_partial_submissions(course)
    autograde = {name: _nbgrader(course, "autograde", name, "--force") for name in notebooks}
    theirs = nbgrader_scores(course)
    ours, timing = kit_scores(course, notebooks)
    report = table(theirs, ours)
    print(f"\n{report}\n\nseconds per submitted notebook (nbgrader autograde, one process per assignment; "
          "the kit, one kernel at a time):")
    for name, (runs, seconds) in timing.items():
        print(f"  {name:<8} {runs:2d} notebooks: nbgrader {autograde[name] / runs:.2f} s, kit {seconds / runs:.2f} s")
    assert set(ours) == set(theirs), report
    for key, (score, needs_manual) in theirs.items():
        mine = ours[key]
        assert (mine.status == "needs_manual") == needs_manual, f"{key}: awaiting a person?\n{report}"
        if (key[0], key[3]) in KIT_DIFFERS:
            assert (score, mine.points) == (0, mine.max_points), f"{key}: {KIT_DIFFERS[key[0], key[3]]}\n{report}"
        elif not needs_manual:
            assert mine.points == score, f"{key}: nbgrader {score}, kit {mine.points}\n{report}"
    partial = {key[3] for key, t in ours.items() if t.status == "partial"}
    assert {"test_scaled", "test_zero"} <= partial, "the fixtures no longer exercise partial credit"
