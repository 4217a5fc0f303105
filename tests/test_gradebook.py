"""Spreadsheet-safe outputs and the gradebook export: the exact files an instructor imports.

Most tests build ``grade.Grade`` objects by hand (no kernel); one runs the
command line end to end on two submissions.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader import grade, gradebook
from grader.csvsafe import csv_text, feedback_path, spreadsheet_safe
from grader.gradebook import NO_SUBMISSION, RosterEntry, parse_roster, read_roster
from test_grading import EXERCISE, GOOD_ADD, GOOD_MUL, answered, solution_notebook

FORMULA = '=HYPERLINK("http://x")'


def _grade(student: str, points: float, status: str = "graded", max_points: float = 6.0,
           detail: str = "") -> grade.Grade:
    """A graded student with one test worth ``max_points``."""
    test = grade.TestResult("test_add", points, max_points, "passed" if points else "failed", detail)
    return grade.Grade(student, EXERCISE, [test], status, detail)


ROSTER = [RosterEntry("alice", "Liddell, Alice", "101", "s101", "alice@uni.example", "Section A"),
          RosterEntry("bob", "=Bob", "102"),                       # a name a spreadsheet would run
          RosterEntry("carol", "Carol", "103", section="Section B")]   # no submission


# ---- spreadsheet_safe

@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1:A3)", "\t=1+1", "\r=1+1", FORMULA,
                                  "-- not run: the kernel died"])
def test_a_cell_a_spreadsheet_would_evaluate_gets_a_leading_quote(text):
    assert spreadsheet_safe(text) == "'" + text


@pytest.mark.parametrize("text", ["alice", "", "O'Brien", "1+1", "a=b", "3", "perfect (perfect.html)",
                                  "AssertionError: add(ones(3), 2) should be all 3"])
def test_harmless_text_is_left_alone(text):
    assert spreadsheet_safe(text) == text


def test_csv_text_quotes_text_and_leaves_numbers_bare():
    text = csv_text(["who", "points"], [{"who": "-x", "points": "1.5"}, {"who": "y", "points": 3.0}],
                    numbers=("points",))
    assert text == '"who","points"\n"\'-x",1.5\n"y",3\n'


# ---- grades.csv and feedback files

def test_grades_csv_neutralises_a_formula_name_and_keeps_it_readable(tmp_path):
    grades = [_grade(FORMULA, 6), _grade("bob", 0, detail="-1 is not 3")]
    grade.write_outputs(tmp_path, grades)
    rows = list(csv.DictReader((tmp_path / "grades.csv").open(newline="")))
    assert [(r["student"], r["test_id"], r["points"], r["max_points"]) for r in rows] == [
        ("'" + FORMULA, "test_add", "6", "6"), ("'" + FORMULA, "TOTAL", "6", "6"),
        ("bob", "test_add", "0", "6"), ("bob", "TOTAL", "0", "6")]
    assert rows[3]["detail"] == "'-1 is not 3"
    lines = (tmp_path / "grades.csv").read_text().splitlines()
    assert lines[0] == '"student","exercise","test_id","points","max_points","status","flags","detail","mode"'
    assert lines[2] == '"\'=HYPERLINK(""http://x"")","00_fixture_exercise","TOTAL",6,6,"graded","","",""'


@pytest.mark.parametrize("student, name", [("../x", "_._x.txt"), ("..", "_..txt"), ("", "_.txt"),
                                           ("a\\b", "a_b.txt"), (".hidden", "_hidden.txt"),
                                           ("=cmd", "=cmd.txt"), ("perfect (perfect.html)",
                                                                  "perfect (perfect.html).txt")])
def test_feedback_path_stays_in_its_folder(tmp_path, student, name):
    path = feedback_path(tmp_path / "feedback", student)
    assert path.parent == tmp_path / "feedback" and path.name == name


def test_feedback_of_long_names_is_written_as_two_files(tmp_path):
    """A 241-character name (482 bytes) is over the file system's 255 bytes: cut, and told apart by a hash."""
    names = ["é" * 240 + "1", "é" * 240 + "2"]
    grade.write_outputs(tmp_path, [_grade(name, 1) for name in names])
    files = sorted((tmp_path / "feedback").iterdir())
    assert len(files) == 2 and all(len(f.name.encode()) <= 255 for f in files)
    assert sorted(f.read_text().splitlines()[0] for f in files) == [f"Feedback for {n} on {EXERCISE}" for n in names]


def test_no_feedback_file_escapes_the_folder(tmp_path):
    out = tmp_path / "out"
    grade.write_outputs(out, [_grade("../escape", 1), _grade("=cmd", 2)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (out / "feedback").iterdir()) == ["=cmd.txt", "_._escape.txt"]


def test_student_names_from_file_names_hold_no_path_separator(tmp_path):
    for name in ("=cmd.ipynb", "-rf.ipynb", "@x.ipynb", "+1.pdf"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "=folder").mkdir()
    (tmp_path / "..ipynb").write_text("{}")   # hidden: not a submission
    students = [s.student for s in grade.find_submissions(tmp_path, f"{EXERCISE}.ipynb")]
    assert students == ["+1", "-rf", "=cmd", "=folder", "@x"]
    assert all(feedback_path(tmp_path, s) == tmp_path / f"{s}.txt" for s in students)


# ---- gradebooks

def test_gradebook_rows_score_the_absent_zero_and_name_the_unknown():
    grades = [_grade("alice", 4.5), _grade("bob", 0, "no_notebook"), _grade("zed", 6),
              _grade("alice (alice.pdf)", 0, "duplicate")]
    rows, unknown = gradebook.gradebook_rows(grades, ROSTER, 6.0)
    assert [(r.student.submission, r.points, r.max_points, r.status) for r in rows] == [
        ("alice", 4.5, 6.0, "graded"), ("bob", 0.0, 6.0, "no_notebook"), ("carol", 0.0, 6.0, NO_SUBMISSION)]
    assert unknown == ["zed"]


def _write(tmp_path: Path, grades, assignment="Exercise 1 (12345)") -> list[str]:
    return gradebook.write_gradebooks(tmp_path, grades, ROSTER, assignment, 6.0)


def test_canvas_gradebook_has_canvas_layout_exactly(tmp_path):
    _write(tmp_path, [_grade("alice", 4.5), _grade("bob", 6)])
    assert (tmp_path / "gradebook_canvas.csv").read_text() == (
        '"Student","ID","SIS User ID","SIS Login ID","Section","Exercise 1 (12345)"\n'
        '"Points Possible","","","","",6\n'
        '"Liddell, Alice","101","s101","alice@uni.example","Section A",4.5\n'
        '"\'=Bob","102","","","",6\n'
        '"Carol","103","","","Section B",0\n')
    rows = list(csv.reader((tmp_path / "gradebook_canvas.csv").open(newline="")))
    assert [len(r) for r in rows] == [6] * 5 and rows[4][0] == "Carol" and rows[4][5] == "0"


def test_canvas_assignment_defaults_to_the_exercise_and_is_spreadsheet_safe(tmp_path):
    _write(tmp_path, [], assignment="-minus")
    header = (tmp_path / "gradebook_canvas.csv").read_text().splitlines()[0]
    assert header.endswith(',"\'-minus"')


def test_plain_gradebook_has_one_row_per_roster_student(tmp_path):
    _write(tmp_path, [_grade("alice", 4.5), _grade("bob", 0, "no_notebook"), _grade("zed", 6)])
    rows = list(csv.DictReader((tmp_path / "gradebook.csv").open(newline="")))
    assert [tuple(r.values()) for r in rows] == [
        ("alice", "Liddell, Alice", "101", "4.5", "6", "graded"),
        ("bob", "'=Bob", "102", "0", "6", "no_notebook"),
        ("carol", "Carol", "103", "0", "6", "no_submission")]
    assert list(rows[0]) == gradebook.PLAIN_COLUMNS
    assert (tmp_path / "gradebook.csv").read_text().splitlines()[1] == \
        '"alice","Liddell, Alice","101",4.5,6,"graded"'


def test_unknown_submissions_are_reported_then_a_summary(tmp_path):
    lines = _write(tmp_path, [_grade("alice", 6), _grade("zed", 6), _grade("=yves", 1)])
    assert lines[:2] == ["not in the roster: zed", "not in the roster: =yves"]
    assert lines[2].startswith("gradebook: 3 roster students, 1 with a submission, 2 without (scored 0); "
                               "2 submissions not in the roster; wrote ")
    assert len(lines) == 3


# ---- the roster

HEADER = ["submission", "name", "id", "sis_user_id", "sis_login_id", "section"]


def test_roster_reads_columns_in_any_order_and_skips_blank_rows(tmp_path):
    path = tmp_path / "roster.csv"
    # a spreadsheet's byte-order mark, upper case, another column, a blank row, cells with spaces
    path.write_text("\ufeffID,Name,Submission,email\n101, Alice ,alice,a@x\n,,,\n102,Bob,bob,\n", encoding="utf-8")
    assert read_roster(path) == [RosterEntry("alice", "Alice", "101"), RosterEntry("bob", "Bob", "102")]


@pytest.mark.parametrize("table, message", [
    ([], "is empty; its first row must be the header submission,name,id,sis_user_id"),
    ([["submission", "name"], ["a", "A"]],
     "row 1 (the header) has no column 'id' (found: submission, name); a roster's header is submission,name,id"),
    ([["submission", "name", "id", "name"]], "row 1 (the header): column 'name' appears more than once"),
    ([HEADER, ["a", "A", "1"], ["b", "", "2"]], "row 3: column 'name' is blank; every student needs "
                                                "submission, name and id"),
    ([HEADER, ["a", "A", "1"], [" ", "B", "2"]], "row 3: column 'submission' is blank"),
    ([HEADER, ["a", "A", "1"], ["b", "B"]], "row 3: column 'id' is blank"),
    ([HEADER, ["a", "A", "1"], ["b", "B", "2"], ["a", "C", "3"]],
     "rows 2 and 4 have the same submission 'a'; each submission belongs to one student"),
    ([HEADER, ["a", "A", "1"], ["b", "B", "1"]], "rows 2 and 3 have the same id '1'"),
])
def test_roster_problems_name_the_row_and_column(table, message):
    with pytest.raises(ValueError, match="^the roster") as err:
        parse_roster(table)
    assert message in str(err.value)


def test_a_bad_roster_stops_the_cli_before_any_grading(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("grade_all ran before the roster was checked")
    monkeypatch.setattr(grade, "grade_all", never)
    (tmp_path / "roster.csv").write_text("submission,name\nalice,Alice\n")
    argv = [str(tmp_path / "x.ipynb"), str(tmp_path), "--roster", str(tmp_path / "roster.csv"),
            "--out", str(tmp_path / "out")]
    assert grade.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: roster {tmp_path / 'roster.csv'} row 1 (the header) has no column 'id'"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_writes_both_gradebooks_and_reports_the_unknown(tmp_path):
    nbformat.write(solution_notebook(), tmp_path / f"{EXERCISE}.ipynb")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "alice.ipynb").write_text(json.dumps(answered(add=GOOD_ADD, mul=GOOD_MUL)))
    (tmp_path / "in" / "=SUM(1+1).ipynb").write_text(json.dumps(answered(add=GOOD_ADD)))
    (tmp_path / "roster.csv").write_text("submission,name,id\nalice,Alice,101\ncarol,Carol,103\n")
    proc = subprocess.run([sys.executable, "-m", "grader", str(tmp_path / f"{EXERCISE}.ipynb"), str(tmp_path / "in"),
                           "--out", str(tmp_path / "out"), "--roster", str(tmp_path / "roster.csv")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "not in the roster: =SUM(1+1)\n" in proc.stdout, proc.stdout
    assert "gradebook: 2 roster students, 1 with a submission, 1 without (scored 0); 1 submission" in proc.stdout
    canvas = list(csv.reader((tmp_path / "out" / "gradebook_canvas.csv").open(newline="")))
    assert canvas == [["Student", "ID", "SIS User ID", "SIS Login ID", "Section", EXERCISE],
                      ["Points Possible", "", "", "", "", "6"], ["Alice", "101", "", "", "", "6"],
                      ["Carol", "103", "", "", "", "0"]]
    totals = [(r["student"], r["points"]) for r in csv.DictReader((tmp_path / "out" / "grades.csv").open(newline=""))
              if r["test_id"] == "TOTAL"]
    assert totals == [("'=SUM(1+1)", "3"), ("alice", "6")]
    assert (tmp_path / "out" / "feedback" / "=SUM(1+1).txt").is_file()
