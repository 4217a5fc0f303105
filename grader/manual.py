"""Grading by hand: the sheet an instructor fills in, and its points put back.

Some cells a person grades, as in nbgrader: a **manually graded answer**
(nbgrader ``grade`` and ``solution``: an essay, a derivation, code judged by
reading it) and a **task** (``task: true``: work the student does in cells
of their own below it). The grader lists each one still awaiting a person in
``manual.csv``, beside ``grades.csv``; the instructor fills in ``points``
(and, if they like, ``comment``); running the grader again puts those points
into ``grades.csv`` and the feedback, and runs no notebook again (see
``grader.store``).

Reading order
-------------
1. ``sheet_rows``: one row per cell awaiting a person (status
   ``needs_manual``): ``SHEET_COLUMNS``, with the student's answer as text
   (cut at ``MAX_ANSWER`` characters, with a pointer to the rest).
2. ``sheet_text``: the sheet to write: the rows already there, unchanged (the
   instructor's points are never touched), then the rows it lacks.
3. ``apply_sheet``: the points filled in, checked (a number from 0 to the
   cell's ``max_points``) and given to the grades (status
   ``graded_by_hand``, the comment as the detail). A row that does not check
   out changes nothing and is reported.

Everything here works on text and on the grades it is given: no files.
"""

from __future__ import annotations

import csv
import io

SHEET_COLUMNS = ["student", "exercise", "cell", "kind", "max_points", "points", "comment", "answer"]
MAX_ANSWER = 2000   # characters of an answer copied into the sheet


def _answer(item) -> str:
    """The student's answer as the sheet shows it."""
    text = (item.answer or "").strip()
    if item.kind == "task" and not text:
        return "(nothing written below the task in the student's notebook)"
    if len(text) > MAX_ANSWER:
        rest = len(text) - MAX_ANSWER
        return (text[:MAX_ANSWER] + f"\n[... {rest} more characters: read cell {item.test_id!r} "
                                    "in the student's notebook]")
    return text


def sheet_rows(grades) -> list[dict]:
    """One row per cell awaiting a person, in the grades' order; ``points`` and ``comment`` empty."""
    return [dict(student=g.student, exercise=g.exercise, cell=t.test_id, kind=t.kind,
                 max_points=f"{t.max_points:g}", points="", comment="", answer=_answer(t))
            for g in grades for t in g.pending]


def read_sheet(text: str) -> list[dict]:
    """The sheet's rows (a missing column reads as empty); '' gives no rows."""
    return [{column: (row.get(column) or "") for column in SHEET_COLUMNS}
            for row in csv.DictReader(io.StringIO(text))]


def sheet_text(grades, existing: str = "") -> str:
    """The sheet: the rows of ``existing`` as they are, then a row for each cell awaiting
    a person that it lacks (matched by student and cell)."""
    rows = read_sheet(existing)
    have = {(row["student"], row["cell"]) for row in rows}
    rows += [row for row in sheet_rows(grades) if (row["student"], row["cell"]) not in have]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SHEET_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _given_points(row: dict, item) -> float:
    """The points in ``row`` for ``item``; ValueError saying what is wrong."""
    try:
        points = float(row["points"])
    except ValueError:
        raise ValueError(f"points {row['points']!r} is not a number") from None
    if not 0 <= points <= item.max_points:
        raise ValueError(f"points {row['points']} is not from 0 to {item.max_points:g}")
    return points


def apply_sheet(text: str, grades) -> list[str]:
    """Give the points filled in ``text`` (a manual.csv) to ``grades``, in place.

    A row with empty points is skipped (still awaiting a person). Returns what
    could not be applied: 'manual.csv line N: why', one per such row.
    """
    items = {(g.student, t.test_id): t for g in grades for t in g.tests if t.kind != "test"}
    problems = []
    for line, row in enumerate(read_sheet(text), 2):   # line 1 is the header
        if not row["points"].strip():
            continue
        item = items.get((row["student"], row["cell"]))
        if item is None or item.status == "ungraded":
            problems.append(f"manual.csv line {line}: {row['student']!r} has no gradable cell "
                            f"{row['cell']!r} to grade by hand; ignored")
            continue
        try:
            item.points = _given_points(row, item)
        except ValueError as err:
            problems.append(f"manual.csv line {line}: {err} for cell {row['cell']!r} of {row['student']!r}; ignored")
            continue
        item.status, item.detail = "graded_by_hand", row["comment"].strip()
    return problems
