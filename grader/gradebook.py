"""Gradebooks for a learning management system: each roster student's total, ready to import.

    python -m grader solutions/02_conv_dilation_groups_exercise.ipynb submitted/02 --roster roster.csv

writes, beside ``grades.csv``, ``gradebook_canvas.csv`` (the layout Canvas's
gradebook import reads) and ``gradebook.csv`` (plain, for anything else).

Reading order
-------------
1. ``read_roster``: the roster CSV, checked before any grading starts; each
   problem is a ``ValueError`` that names the row and the column.
2. ``gradebook_rows``: one row per roster student, matched to the grades by
   submission name; a student without a submission scores 0
   (``NO_SUBMISSION``); the submissions the roster does not name are returned
   so that they can be reported.
3. ``canvas_table`` / ``plain_table`` / ``write_gradebooks``: the two files,
   every text cell spreadsheet-safe (``grader.csvsafe``: a roster name can
   start with ``=`` too).

Roster columns (``ROSTER_COLUMNS``; a header row first, in any order, other
columns ignored): ``submission`` (the name the grader gives the student: the
file's stem, ``alice`` for ``alice.ipynb``, or the folder's name), ``name``
and ``id`` (the LMS's user id) are required; ``sis_user_id``,
``sis_login_id`` and ``section`` may be left out.

Canvas layout (Canvas's gradebook export, which its import reads back): the
header ``Student,ID,SIS User ID,SIS Login ID,Section,<assignment>``, then a
``Points Possible`` row with the maximum under the assignment, then one row
per student. Canvas finds the student by ``ID`` (then the SIS ids, then the
name), and the assignment by the id in ``Exercise 1 (12345)``, else by its
exact title, else it creates a new assignment.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from grader.csvsafe import csv_text, write_atomically

if TYPE_CHECKING:   # grade imports this module for its command line
    from grader.grade import Grade

REQUIRED = ("submission", "name", "id")
OPTIONAL = ("sis_user_id", "sis_login_id", "section")
ROSTER_COLUMNS = REQUIRED + OPTIONAL
UNIQUE = ("submission", "id")   # two roster rows may not share one of these
NO_SUBMISSION = "no_submission"
CANVAS_STUDENT = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
PLAIN_COLUMNS = ["student", "name", "id", "points", "max_points", "status"]
CANVAS_FILE, PLAIN_FILE = "gradebook_canvas.csv", "gradebook.csv"


@dataclass(frozen=True)
class RosterEntry:
    """One student of the roster: their submission's name and their identity in the LMS."""
    submission: str
    name: str
    id: str
    sis_user_id: str = ""
    sis_login_id: str = ""
    section: str = ""


@dataclass(frozen=True)
class GradebookRow:
    """One roster student's total; ``status`` is the grade's TOTAL status or ``NO_SUBMISSION``."""
    student: RosterEntry
    points: float
    max_points: float
    status: str


def _roster_header(header: list[str], where: str) -> list[str]:
    """The header's column names (stripped, lower case), checked: the required ones, none twice."""
    names = [name.strip().lower() for name in header]
    twice = sorted({name for name in names if name and names.count(name) > 1})
    if twice:
        raise ValueError(f"{where} row 1 (the header): column {twice[0]!r} appears more than once")
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise ValueError(f"{where} row 1 (the header) has no column {', '.join(map(repr, missing))} "
                         f"(found: {', '.join(n for n in names if n) or 'nothing'}); a roster's header is "
                         f"{','.join(ROSTER_COLUMNS)}, the last {len(OPTIONAL)} optional")
    return names


def parse_roster(table: list[list[str]], where: str = "the roster") -> list[RosterEntry]:
    """The roster's students from its rows (``table[0]`` the header), in the roster's order.

    Rows are numbered as a spreadsheet shows them (the header is row 1); a
    row with every cell blank is skipped. Raises ``ValueError`` naming the
    row and column of a blank required cell, of a submission name or id that
    two rows share, or of a header without a required column.
    """
    if not table:
        raise ValueError(f"{where} is empty; its first row must be the header {','.join(ROSTER_COLUMNS)}")
    names = _roster_header(table[0], where)
    entries, seen = [], {column: {} for column in UNIQUE}   # column -> value -> row number
    for number, row in enumerate(table[1:], start=2):
        cells = {name: cell.strip() for name, cell in zip(names, row) if name}
        if not any(cells.values()):
            continue
        for column in REQUIRED:
            if not cells.get(column):
                raise ValueError(f"{where} row {number}: column {column!r} is blank; every student needs "
                                 f"{', '.join(REQUIRED[:-1])} and {REQUIRED[-1]}")
        for column in UNIQUE:
            first = seen[column].setdefault(cells[column], number)
            if first != number:
                raise ValueError(f"{where} rows {first} and {number} have the same {column} "
                                 f"{cells[column]!r}; each {column} belongs to one student")
        entries.append(RosterEntry(**{column: cells.get(column, "") for column in ROSTER_COLUMNS}))
    return entries


def read_roster(path: Path) -> list[RosterEntry]:
    """The roster CSV at ``path`` (UTF-8, a spreadsheet's byte-order mark allowed), checked by ``parse_roster``."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        try:
            table = list(csv.reader(f))
        except csv.Error as err:
            raise ValueError(f"roster {path} is not a CSV file the grader can read: {err}") from err
    return parse_roster(table, f"roster {path}")


def gradebook_rows(grades: list[Grade], roster: list[RosterEntry],
                   max_points: float) -> tuple[list[GradebookRow], list[str]]:
    """One row per roster student, in the roster's order, and the submissions the roster does not name.

    A student the grades do not name scores 0 of ``max_points``, status
    ``NO_SUBMISSION``. A ``duplicate`` entry (``alice (alice.pdf)``) is not
    reported: ``grades.csv`` says what it is, and ``alice``'s grade counts.
    """
    by_name = {g.student: g for g in grades}
    rows = []
    for entry in roster:
        g = by_name.get(entry.submission)
        rows.append(GradebookRow(entry, g.points, g.max_points, g.status) if g is not None
                    else GradebookRow(entry, 0.0, max_points, NO_SUBMISSION))
    named = {entry.submission for entry in roster}
    unknown = [g.student for g in grades if g.student not in named and g.status != "duplicate"]
    return rows, unknown


def canvas_table(rows: list[GradebookRow], assignment: str, max_points: float) -> tuple[list[str], list[dict]]:
    """(columns, rows) of Canvas's gradebook layout: the ``Points Possible`` row first, then the students."""
    columns = CANVAS_STUDENT + [assignment]
    table = [dict(zip(columns, ["Points Possible", "", "", "", "", max_points]))]
    for row in rows:
        s = row.student
        table.append(dict(zip(columns, [s.name, s.id, s.sis_user_id, s.sis_login_id, s.section, row.points])))
    return columns, table


def plain_table(rows: list[GradebookRow]) -> list[dict]:
    """Rows of ``PLAIN_COLUMNS``: the submission name, the LMS name and id, points, max_points, status."""
    return [dict(student=row.student.submission, name=row.student.name, id=row.student.id,
                 points=row.points, max_points=row.max_points, status=row.status) for row in rows]


def write_gradebooks(out: Path, grades: list[Grade], roster: list[RosterEntry], assignment: str,
                     max_points: float) -> list[str]:
    """Write ``out/gradebook_canvas.csv`` and ``out/gradebook.csv``; return the lines to print.

    One line per submission not in the roster (``not in the roster: NAME``),
    then a summary.
    """

    rows, unknown = gradebook_rows(grades, roster, max_points)
    columns, canvas = canvas_table(rows, assignment, max_points)
    write_atomically(out / CANVAS_FILE, csv_text(columns, canvas, numbers=(assignment,)))
    write_atomically(out / PLAIN_FILE, csv_text(PLAIN_COLUMNS, plain_table(rows), numbers=("points", "max_points")))
    absent = sum(row.status == NO_SUBMISSION for row in rows)
    return [f"not in the roster: {name}" for name in unknown] + [
        f"gradebook: {len(rows)} roster student{'s' if len(rows) != 1 else ''}, {len(rows) - absent} with a "
        f"submission, {absent} without (scored 0); {len(unknown)} submission{'s' if len(unknown) != 1 else ''} "
        f"not in the roster; wrote {out / CANVAS_FILE} and {out / PLAIN_FILE}"]

