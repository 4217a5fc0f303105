"""From a student's file to the notebook the grader runs: find, read, merge.

Reading order
-------------
1. ``find_submissions``: one notebook per student, as ``alice.ipynb`` or as a
   folder ``alice/`` holding the exercise's notebook; any other file
   (``gina.pdf``) is a submission without a notebook, reported as such.
2. ``read_submission``: any file in, a notebook or a reason out (never raises).
3. ``merge``: the rule that makes grading trustworthy. Start from the
   instructor's notebook and copy in **only** the student's solution cells,
   matched by nbgrader ``grade_id``; every test cell (hidden tests included)
   and every locked cell stays the instructor's. What the student changed
   elsewhere is reported as flags and changes nothing:

   ==========================  ==================================================
   ``edited_test:ID``          the student's copy of test ``ID`` differs from the
                               released one (and from the instructor's: the
                               instructor's copy runs)
   ``deleted_test:ID``         test ``ID`` is missing (the instructor's copy runs)
   ``edited_locked:ID``        a read-only cell was changed (ditto)
   ``deleted_locked:ID``       a read-only cell is missing (ditto)
   ``missing_solution:ID``     answer cell ``ID`` is missing: the released stub
                               (``raise NotImplementedError``) runs instead
   ``duplicate_grade_id:ID``   two cells carry ``ID``: the first one is used
   ``dropped_cells:N``         N cells outside the answer cells are not graded
   ==========================  ==================================================

4. ``hand_graded_answers``: what a person grades, for the manual-grading
   sheet: each manually graded answer as the student wrote it, and the cells
   the student wrote under each task.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from grader.build import LESSON, cell_role, hand_graded, student_cell


@dataclass
class Submission:
    """One student's entry: the notebook's path, or why there is none."""
    student: str
    path: Path | None
    problem: str = ""   # non-empty: the submission cannot be graded ('STATUS: why', e.g. 'no_notebook: ...')


@dataclass
class Merged:
    """The notebook to run for one student, and what the merge noticed."""
    nb: nbformat.NotebookNode
    flags: list[str] = field(default_factory=list)


def grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def find_submissions(folder: Path, notebook_name: str) -> list[Submission]:
    """Every student in ``folder``, sorted by name.

    ``folder/alice.ipynb`` is Alice's notebook; in ``folder/bob/`` the
    notebook named ``notebook_name`` (searched below it) is Bob's, or the
    only ``.ipynb`` there. Any other file (``gina.pdf``) is Gina's
    submission with no notebook, status ``no_notebook``; so is a folder with
    no ``.ipynb`` in it. Hidden entries (``.DS_Store``, ``.ipynb_checkpoints``)
    are ignored.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"submissions folder {folder} does not exist")

    def other_file(entry: Path) -> bool:  # neither a notebook nor a folder: gina.pdf, olga.py
        return not (entry.is_dir() or entry.suffix == ".ipynb")

    # notebooks and folders first, so that alice.html never takes the name of alice.ipynb
    entries = sorted((e for e in folder.iterdir() if not e.name.startswith(".")), key=lambda e: (other_file(e), e))
    found: dict[str, Submission] = {}
    for entry in entries:
        if entry.is_dir():
            sub = _folder_submission(entry, notebook_name)
        elif entry.suffix == ".ipynb":
            sub = Submission(entry.stem, entry)
        else:
            sub = Submission(entry.stem, None, f"no_notebook: {entry.name} is not a notebook; expected "
                                               f"{entry.stem}.ipynb (a Jupyter notebook), or a folder "
                                               f"{entry.stem}/ with {notebook_name} in it")
        if sub.student in found:  # alice.ipynb and alice/ (or alice.pdf) both present
            earlier = (found[sub.student].path or folder / sub.student).relative_to(folder)
            what = f"{entry.name} is not a notebook and was not graded; " if other_file(entry) else ""
            sub = Submission(f"{sub.student} ({entry.name})", None,
                             f"duplicate: {what}{sub.student!r} also submitted {earlier}")
        found[sub.student] = sub
    return sorted(found.values(), key=lambda s: s.student)


def _folder_submission(folder: Path, notebook_name: str) -> Submission:
    notebooks = sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    named = [p for p in notebooks if p.name == notebook_name]
    if len(named) == 1 or (not named and len(notebooks) == 1):
        return Submission(folder.name, (named or notebooks)[0])
    if notebooks:
        listing = ", ".join(str(p.relative_to(folder)) for p in notebooks)
        return Submission(folder.name, None, f"missing: expected one {notebook_name} in {folder.name}/, "
                                             f"found {listing}")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    found = (f"holds no .ipynb file (found {', '.join(files[:5])}{', ...' if len(files) > 5 else ''})"
             if files else "is empty")
    return Submission(folder.name, None, f"no_notebook: the folder {folder.name}/ {found}; "
                                         f"expected {notebook_name} in it")


def read_submission(path: Path) -> tuple[nbformat.NotebookNode | None, str]:
    """The notebook in ``path``, or ``(None, reason)`` for anything unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return None, f"unreadable: cannot read {path.name}: {err}"
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"unreadable: {path.name} is not JSON ({err.msg} at line {err.lineno})"
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        return None, f"unreadable: {path.name} is JSON but not a notebook (no 'cells' list)"
    try:
        with warnings.catch_warnings():  # e.g. duplicate cell ids, which nbformat repairs
            warnings.simplefilter("ignore")
            nb = nbformat.reads(text, as_version=4)
        for number, cell in enumerate(nb.cells):  # the fields merge() reads must have the right types
            nbgrader = cell.get("metadata", {}).get("nbgrader", {})
            if not (isinstance(cell.get("source", ""), str) and isinstance(nbgrader, dict)
                    and isinstance(nbgrader.get("grade_id", ""), str)):
                raise ValueError(f"cell {number} has a malformed 'source' or nbgrader metadata")
    except Exception as err:  # noqa: BLE001 - nbformat raises many kinds
        return None, f"unreadable: {path.name} is not a valid notebook ({type(err).__name__}: {err})"
    return nb, ""


def _normalized(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def wrong_exercise(instructor, student) -> str:
    """Why ``student`` is not a copy of this exercise, or '' when it is."""
    lesson = instructor.metadata.get("course_kit", {}).get("lesson")
    theirs = student.metadata.get("course_kit", {}).get("lesson") if isinstance(
        student.metadata.get("course_kit"), dict) else None
    if theirs and lesson and theirs != lesson:
        return f"wrong_exercise: the notebook belongs to {theirs}, this exercise to {lesson}"
    ids = {grade_id(c) for c in instructor.cells} - {None}
    if not ids & {grade_id(c) for c in student.cells}:
        return f"wrong_exercise: none of this exercise's cells ({', '.join(sorted(ids))}) is in it"
    return ""


def merge(instructor, student) -> Merged:
    """The instructor's notebook with the student's answer cells copied in.

    Parameters
    ----------
    instructor : the notebook from solutions/ (nbformat v4)
    student : the student's notebook (nbformat v4), already read

    Returns
    -------
    Merged: a new notebook (neither input is modified) and the flags listed
    in the module docstring, in notebook order.
    """
    lesson = instructor.metadata.get("course_kit", {}).get("lesson", "the lesson notebooks")
    released_free = {_normalized(c.source) for c in instructor.cells if grade_id(c) is None}
    theirs: dict[str, object] = {}
    flags, dropped = [], 0
    for cell in student.cells:
        key = grade_id(cell)
        if key is None:  # the student's own cell: kept out of grading
            source = _normalized(cell.get("source", ""))
            dropped += cell.cell_type == "code" and bool(source) and source not in released_free
        elif key in theirs:
            flags.append(f"duplicate_grade_id:{key}")
        else:
            theirs[key] = cell
    merged = copy.deepcopy(instructor)
    for cell in merged.cells:
        key, role = grade_id(cell), cell_role(cell)
        released = student_cell(cell, lesson)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if role == "solution":
            if key in theirs:
                cell.source = theirs[key].get("source", "")
            else:
                cell.source = released.source
                flags.append(f"missing_solution:{key}")
        elif role in ("test", "locked"):
            kind = "test" if role == "test" else "locked"
            if key not in theirs:
                flags.append(f"deleted_{kind}:{key}")
            elif _normalized(theirs[key].get("source", "")) not in (_normalized(released.source),
                                                                    _normalized(cell.source)):
                flags.append(f"edited_{kind}:{key}")
    if dropped:
        flags.append(f"dropped_cells:{dropped}")
    return Merged(merged, flags)


def hand_graded_answers(instructor, student) -> dict[str, str | None]:
    """grade_id -> the student's answer, for every cell a person grades; None: no answer.

    A manually graded answer (nbgrader grade and solution) is the student's
    cell: None when it is missing or still as released, with the kit's stub
    or nbgrader's (nbgrader's 'No response.': 0 points, nothing for a person
    to grade; whitespace at line ends does not count as an answer). A task's answer is what the student
    wrote below the task cell, up to the next cell with a grade_id
    ('' when nothing): nbgrader leaves every task to a person.
    """
    lesson = instructor.metadata.get("course_kit", {}).get("lesson", LESSON)
    answers: dict[str, str | None] = {}
    for cell in instructor.cells:
        key = grade_id(cell)
        if not hand_graded(cell) or key is None:
            continue
        index = next((i for i, c in enumerate(student.cells) if grade_id(c) == key), None)
        if cell.get("metadata", {}).get("nbgrader", {}).get("task"):
            answers[key] = "" if index is None else _cells_below(student.cells, index)
            continue
        theirs = None if index is None else student.cells[index].get("source", "")
        released = {_normalized(student_cell(cell, lesson, stub).source) for stub in (False, True)}
        answers[key] = None if theirs is None or _normalized(theirs) in released else theirs
    return answers


def _cells_below(cells, index: int) -> str:
    """The sources of the cells after ``cells[index]`` up to the next one with a grade_id."""
    below = []
    for cell in cells[index + 1:]:
        if grade_id(cell) is not None:
            break
        below.append(cell.get("source", "").strip())
    return "\n\n".join(text for text in below if text)
