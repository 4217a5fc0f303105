"""Any nbgrader source notebook, and grading by hand: the parts that need no nbgrader.

nbgrader's rules, as its own code has them (``nbgrader/preprocessors/clearsolutions.py``,
``clearhiddentests.py``, ``clearmarkingscheme.py``, ``utils.determine_grade``):
a solution cell without markers is the answer as a whole; a marker is any line
holding its words; a cell both ``grade`` and ``solution`` (and a task) is graded by
a person; a test cell whose value is a number earns that many points. The
comparison with nbgrader itself is tests/test_nbgrader_parity.py.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import asdict

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from grader import execute, grade, manual, store, submission
from grader.build import NBGRADER_STUB, hand_graded, student_cell, student_notebook
from test_grading import _synthetic_runs

LESSON = "notebooks/01_convolution.ipynb"


def _meta(grade_id, **flags):
    meta = {"grade": False, "solution": False, "locked": False, "grade_id": grade_id, "schema_version": 3}
    meta.update(flags)
    return {"nbgrader": meta}


def course_notebook() -> nbformat.NotebookNode:
    """An nbgrader-style source: answers with and without markers, a manually graded essay and
    code, a task with a mark scheme, tests (one hidden, one giving partial credit)."""
    nb = new_notebook()
    nb.cells = [
        new_markdown_cell("Read only.", metadata=_meta("intro", locked=True)),
        new_code_cell("a = 1", metadata=_meta("set_a", solution=True)),
        new_code_cell("def f():\n    # BEGIN SOLUTION\n    return 2\n    # END SOLUTION",
                      metadata=_meta("f", solution=True)),
        new_code_cell("assert a == 1\n### BEGIN HIDDEN TESTS\nassert f() == 2\n### END HIDDEN TESTS",
                      metadata=_meta("test_a", grade=True, locked=True, points=1)),
        new_code_cell("f() / 4", metadata=_meta("test_partial", grade=True, locked=True, points=1)),
        new_markdown_cell("Because the sum telescopes.", metadata=_meta("essay", grade=True, solution=True, points=2)),
        new_code_cell("b = 2", metadata=_meta("code_by_hand", grade=True, solution=True, points=3)),
        new_markdown_cell("Verify it.\n### BEGIN MARK SCHEME\nOne point per formula.\n### END MARK SCHEME",
                          metadata=_meta("task", task=True, locked=True, points=4)),
    ]
    return nb


# ---- build: nbgrader's sources become exercises

def test_an_answer_without_markers_is_replaced_whole():
    nb = course_notebook()
    code, essay = student_cell(nb.cells[1], LESSON), student_cell(nb.cells[5], LESSON)
    assert code.source.startswith("# YOUR CODE HERE\nraise NotImplementedError(") and "a = 1" not in code.source
    assert essay.source == "YOUR ANSWER HERE"
    assert student_cell(nb.cells[1], LESSON, nbgrader_stub=True).source == NBGRADER_STUB
    assert student_cell(nb.cells[6], LESSON, nbgrader_stub=True).source == NBGRADER_STUB


def test_a_marker_is_any_line_with_its_words():
    nb = course_notebook()
    assert student_cell(nb.cells[2], LESSON, nbgrader_stub=True).source == \
        "def f():\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    html = new_markdown_cell("Why?\n<!-- BEGIN SOLUTION -->\nIt is.\n<!-- END SOLUTION -->",
                             metadata=_meta("why", grade=True, solution=True, points=1))
    assert student_cell(html, LESSON).source == "Why?\nYOUR ANSWER HERE"


def test_hidden_tests_and_mark_schemes_leave_the_students_copy():
    student = student_notebook(course_notebook())
    text = nbformat.writes(student)
    assert "f() == 2" not in text and "HIDDEN" not in text
    assert student.cells[7].source == "Verify it." and "One point" not in text
    assert student.cells[0].source == "Read only." and student.cells[4].source == "f() / 4"


@pytest.mark.parametrize("cell, message", [
    (new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", metadata=_meta("x", locked=True)),
     "'### BEGIN SOLUTION' outside a solution cell"),
    (new_code_cell("### BEGIN HIDDEN TESTS\nx = 1\n### END HIDDEN TESTS", metadata=_meta("x", solution=True)),
     "'### BEGIN HIDDEN TESTS' outside a test cell"),
    (new_markdown_cell("### BEGIN MARK SCHEME\nx\n### END MARK SCHEME", metadata=_meta("x", locked=True)),
     "'### BEGIN MARK SCHEME' outside a task cell"),
    (new_code_cell("### AUTOTEST f(1)", metadata=_meta("x", grade=True, points=1)), "AUTOTEST"),
])
def test_blocks_where_nbgrader_refuses_them_are_refused(cell, message):
    with pytest.raises(ValueError, match=message):
        student_cell(cell, LESSON)


def test_which_cells_a_person_grades():
    assert [hand_graded(c) for c in course_notebook().cells] == [False] * 5 + [True] * 3


def test_nbgraders_documentation_example_is_a_source():
    nbgrader = pytest.importorskip("nbgrader", reason="nbgrader is not installed")
    from pathlib import Path
    folder = Path(nbgrader.__file__).parent / "docs" / "source" / "user_guide" / "source" / "ps1"
    for path in sorted(folder.glob("*.ipynb")):
        nb = grade.load_instructor(path)
        assert student_notebook(nb).cells, path
    kinds = [(t.test_id, t.kind) for t in grade.graded_cells(grade.load_instructor(folder / "problem1.ipynb"))]
    assert ("sum_of_squares_equation", "manual") in kinds and ("correct_squares", "test") in kinds
    assert kinds[-1][1] == "task"


# ---- what a person grades

def test_hand_graded_answers_tell_an_answer_from_a_released_stub():
    instructor = course_notebook()
    released = student_notebook(instructor)
    assert submission.hand_graded_answers(instructor, released) == {"essay": None, "code_by_hand": None, "task": ""}
    theirs = nbformat.reads(nbformat.writes(released), as_version=4)
    theirs.cells[6].source = NBGRADER_STUB + "  \n"          # as nbgrader released it: no answer
    theirs.cells[5].source = "It telescopes."
    theirs.cells.append(new_code_cell("print(1 + 2)"))        # the task's answer, below it
    theirs.cells.append(new_markdown_cell("So it holds."))
    assert submission.hand_graded_answers(instructor, theirs) == \
        {"essay": "It telescopes.", "code_by_hand": None, "task": "print(1 + 2)\n\nSo it holds."}
    del theirs.cells[5]
    assert submission.hand_graded_answers(instructor, theirs)["essay"] is None


@pytest.mark.parametrize("value, max_points, points", [
    ("0.5", 1, 0.5), ("0", 3, 0.0), ("1", 1, 1.0), ("", 2, 2), ("np.float64(0.5)", 1, 1), ("-1", 1, 1),
    ("nan", 1, 1), ("'0.5'", 1, 1), ("[0.5]", 1, 1),
])
def test_partial_credit_is_nbgraders(value, max_points, points):
    assert grade.partial_credit(value, max_points) == points


def test_partial_credit_above_the_points_is_an_error():
    with pytest.raises(ValueError, match="the test's value 3 is more than its 2 points"):
        grade.partial_credit("3", 2)
    nb = execute.instrument(course_notebook(), [])
    tests = grade.test_cells(course_notebook())
    runs = _synthetic_runs(nb, test__test_partial=execute.CellRun("ok", result="7"))
    grade.score(nb, runs, tests, grade.Limits())
    assert (tests[1].status, tests[1].points) == ("error", 0) and "more than its 1 points" in tests[1].detail


def test_score_gives_partial_credit_and_voids_it_like_a_pass():
    nb = execute.instrument(course_notebook(), [])
    tests = grade.test_cells(course_notebook())
    runs = _synthetic_runs(nb, test__test_partial=execute.CellRun("ok", result="0.25"))
    grade.score(nb, runs, tests, grade.Limits())
    assert [(t.test_id, t.status, t.points) for t in tests] == [("test_a", "passed", 1),
                                                                ("test_partial", "partial", 0.25)]
    assert tests[1].detail == "partial credit: the test's value is 0.25"
    flags = []
    grade._unverified(tests[1], "after", "a MemoryError", flags)
    assert (tests[1].status, tests[1].points, flags) == ("unverified", 0, ["unverified:test_partial"])


def _graded(student="ann") -> grade.Grade:
    items = grade.graded_cells(course_notebook())
    grade._hand_graded(items, {"essay": "It telescopes.", "code_by_hand": None, "task": ""})
    items[0].status, items[0].points = "passed", 1.0
    return grade.Grade(student, "course", items, "graded")


def test_cells_graded_by_hand_in_the_csv_and_the_feedback():
    g = _graded()
    assert [(t.test_id, t.kind, t.status) for t in g.tests] == [
        ("test_a", "test", "passed"), ("test_partial", "test", "not_run"), ("essay", "manual", "needs_manual"),
        ("code_by_hand", "manual", "not_answered"), ("task", "task", "needs_manual")]
    rows = grade.csv_rows([g])
    assert rows[-1]["max_points"] == "11" and rows[-1]["detail"] == "6 of 11 points await grading by hand (2 cells)"
    assert [(r["test_id"], r["max_points"], r["status"]) for r in rows[2:5]] == [
        ("essay", "2", "needs_manual"), ("code_by_hand", "3", "not_answered"), ("task", "4", "needs_manual")]
    text = grade.feedback_text(g)
    assert "Score: 1 / 11 (6 points still to be graded by hand)" in text
    assert "to be graded by hand     ? / 2    essay" in text and "? / 4    task (task)" in text
    assert "not answered             0 / 3    code_by_hand" in text, text


def test_the_sheet_lists_what_awaits_a_person_and_keeps_what_was_filled_in():
    g, h = _graded("ann"), _graded("bob")
    rows = manual.sheet_rows([g])
    assert [(r["cell"], r["kind"], r["max_points"], r["answer"]) for r in rows] == [
        ("essay", "manual", "2", "It telescopes."),
        ("task", "task", "4", "(nothing written below the task in the student's notebook)")]
    filled = manual.sheet_text([g]).replace("manual,2,,,", "manual,2,1.5,Good.,")
    again = list(csv.DictReader(manual.sheet_text([g, h], filled).splitlines()))
    assert [(r["student"], r["cell"], r["points"]) for r in again] == [
        ("ann", "essay", "1.5"), ("ann", "task", ""), ("bob", "essay", ""), ("bob", "task", "")]
    g.tests[2].answer = "x" * (manual.MAX_ANSWER + 5)
    assert manual.sheet_rows([g])[0]["answer"].endswith("[... 5 more characters: read cell 'essay' in the "
                                                        "student's notebook]")


def test_points_from_the_sheet_are_checked_then_given():
    g = _graded()
    header = ",".join(manual.SHEET_COLUMNS)
    sheet = "\n".join([header, "ann,course,essay,manual,2,1.5,Good.,", "ann,course,task,task,4,9,,",
                       "ann,course,nope,manual,1,1,,", "zed,course,essay,manual,2,1,,", "ann,course,task,task,4,,,",
                       "ann,course,code_by_hand,manual,3,two,,"])
    problems = manual.apply_sheet(sheet, [g])
    assert problems == [
        "manual.csv line 3: points 9 is not from 0 to 4 for cell 'task' of 'ann'; ignored",
        "manual.csv line 4: 'ann' has no gradable cell 'nope' to grade by hand; ignored",
        "manual.csv line 5: 'zed' has no gradable cell 'essay' to grade by hand; ignored",
        "manual.csv line 7: points 'two' is not a number for cell 'code_by_hand' of 'ann'; ignored"]
    essay = g.tests[2]
    assert (essay.status, essay.points, essay.detail) == ("graded_by_hand", 1.5, "Good.")
    assert [t.test_id for t in g.pending] == ["task"] and g.points == 2.5
    assert "graded by hand         1.5 / 2    essay\n      Good." in grade.feedback_text(g)


def test_the_store_gives_back_what_it_kept(tmp_path):
    g = _graded()
    g.key = store.fingerprint("context", "ann", b"{}")
    (tmp_path / store.STORE).write_text(store.dumps([(g.key, asdict(g))]))
    kept = grade._from_store(store.load(tmp_path)[g.key])
    assert kept.reused and grade.csv_rows([kept]) == grade.csv_rows([g])
    assert store.fingerprint("ab", "c") != store.fingerprint("a", "bc")
    (tmp_path / store.STORE).write_text("{ not json")
    assert store.load(tmp_path) == {} and store.load(tmp_path / "nowhere") == {}


def test_assignment_files_leave_out_notebooks_and_hidden_entries(tmp_path):
    for name in ("data.txt", "sub/more.csv", "answer.ipynb", ".ipynb_checkpoints/x.txt", "__pycache__/m.pyc"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("1")
    assert sorted(grade.assignment_files(tmp_path)) == ["data.txt", "sub/more.csv"]
    assert grade.assignment_files(None) == {}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        grade.assignment_files(tmp_path / "nowhere")


# ---- the whole round: grade, fill in the sheet, run again

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "grader", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_grade_fill_in_the_sheet_and_run_again(tmp_path):
    instructor = course_notebook()
    instructor.cells.insert(4, new_code_cell("assert open('data.txt').read() == '42'",
                                             metadata=_meta("test_file", grade=True, locked=True, points=1)))
    nbformat.write(instructor, tmp_path / "course.ipynb")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "data.txt").write_text("42")
    answer = student_notebook(instructor)
    answer.cells[1].source, answer.cells[2].source = "a = 1", "def f():\n    return 2"
    answer.cells[6].source = "It telescopes."
    (tmp_path / "in").mkdir()
    nbformat.write(answer, tmp_path / "in" / "ann.ipynb")
    out = tmp_path / "out"
    first = _cli(tmp_path / "course.ipynb", tmp_path / "in", "--out", out, "--files", tmp_path / "files")
    assert first.returncode == 0, first.stderr
    assert "ann  " in first.stdout and "not run again" not in first.stdout
    assert "2 cell(s), 6 points, await grading by hand" in first.stdout, first.stdout
    rows = {r["test_id"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert {k: (r["points"], r["status"]) for k, r in rows.items() if k.startswith("test")} == {
        "test_a": ("1", "passed"), "test_file": ("1", "passed"), "test_partial": ("0.5", "partial")}
    sheet = (out / "manual.csv").read_text().replace("manual,2,,,", "manual,2,2,Clear.,")
    (out / "manual.csv").write_text(sheet)
    second = _cli(tmp_path / "course.ipynb", tmp_path / "in", "--out", out, "--files", tmp_path / "files")
    assert "1 unchanged since the last run, not run again" in second.stdout, second.stdout
    rows = {r["test_id"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert (rows["essay"]["points"], rows["essay"]["status"]) == ("2", "graded_by_hand")
    assert rows["TOTAL"]["points"] == "4.5" and "4 of 12 points await" in rows["TOTAL"]["detail"]
    assert "Clear." in (out / "feedback" / "ann.txt").read_text()
    third = _cli(tmp_path / "course.ipynb", tmp_path / "in", "--out", out, "--files", tmp_path / "files",
                 "--regrade")
    assert "not run again" not in third.stdout and json.loads((out / store.STORE).read_text())["grades"]
    assert {r["test_id"]: r["points"] for r in csv.DictReader((out / "grades.csv").open())}["essay"] == "2"


def test_the_instructors_guide_describes_grading_by_hand_and_coming_from_nbgrader():
    from conftest import ROOT
    text = " ".join((ROOT / "docs" / "instructors.md").read_text().split())
    assert f"`{','.join(manual.SHEET_COLUMNS)}`" in text
    for status in grade.HAND_STATUSES:
        assert f"`{status}`" in text, status
    coming = text.split("## Coming from nbgrader")[1]
    for topic in ("sandbox", "continuation", "similarity", "Withheld", "database", "formgrader", "stderr",
                  "--files", "test_nbgrader_parity.py"):
        assert topic in coming, topic
    assert "`--regrade`" in text


def test_feedback_of_a_notebook_graded_by_hand_alone_has_no_tests_section():
    nb = course_notebook()
    nb.cells = nb.cells[5:]
    items = grade.graded_cells(nb)
    text = grade.feedback_text(grade.Grade("ann", "essays", items, "graded"))
    assert "Tests" not in text and text.splitlines()[2:4] == ["", "Graded by hand"], text
