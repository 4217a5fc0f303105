"""Build the students' exercises/ from the instructor's solutions/.

``solutions/`` is the single source. Its notebooks are nbgrader source
notebooks (cell-metadata schema 3), and any nbgrader source notebook is one:

* a **solution cell** (``metadata.nbgrader = {solution: true, grade: false,
  locked: false, grade_id, schema_version: 3}``) holds an answer: the lines
  between ``### BEGIN SOLUTION`` and ``### END SOLUTION``, or, without those
  markers, the whole cell. A markdown cell can be one (a written answer);
* a **test cell** (``{grade: true, solution: false, locked: true, grade_id,
  points}``) is graded by running it; instructor-only checks sit between
  ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``;
* a **manually graded answer** is both (``grade: true, solution: true``,
  ``points``): a solution cell whose points a person gives;
* a **task** (``task: true``, markdown, ``points``) describes work graded by
  hand; its ``### BEGIN MARK SCHEME`` ... ``### END MARK SCHEME`` lines are
  the instructor's;
* a **locked cell** (``locked: true``) is read-only;
* the notebook's ``metadata.course_kit.lesson`` names the lesson to read (a
  solution cell's own ``metadata.course_kit.lesson`` overrides it); an
  nbgrader notebook need not have it.

As in nbgrader, a marker is any line that contains its words (``# BEGIN
SOLUTION`` counts). The student's copy replaces each answer by a stub that
raises ``NotImplementedError`` pointing at the lesson (``YOUR ANSWER HERE``
in markdown), drops hidden tests and mark schemes, and clears outputs. Run
it with ``make exercises`` or

    python -m grader.build solutions exercises [--check]

``--check`` writes nothing and exits 1 if exercises/ is out of date (CI).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
BEGIN_MARK_SCHEME, END_MARK_SCHEME = "### BEGIN MARK SCHEME", "### END MARK SCHEME"
LESSON = "the lesson notebooks in notebooks/"   # a stub's pointer when the notebook names no lesson
NBGRADER_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"   # nbgrader's code stub (Python)
# each kind of block, and the cells it may sit in (nbgrader refuses it anywhere else)
BLOCKS = ((BEGIN_SOLUTION, END_SOLUTION, "solution", "a solution cell (nbgrader solution: true)"),
          (BEGIN_HIDDEN, END_HIDDEN, "grade", "a test cell (nbgrader grade: true)"),
          (BEGIN_MARK_SCHEME, END_MARK_SCHEME, "task", "a task cell (nbgrader task: true)"))


def cell_role(cell) -> str:
    """'solution', 'test', 'locked' or 'free', from the cell's nbgrader metadata.

    A manually graded answer (grade and solution) is a 'solution'; a task is
    'locked' (its text is the instructor's). ``hand_graded`` tells both apart.
    """
    meta = cell.get("metadata", {}).get("nbgrader", {})
    if meta.get("solution"):
        return "solution"
    if meta.get("grade"):
        return "test"
    return "locked" if meta.get("locked") or meta.get("task") else "free"


def hand_graded(cell) -> bool:
    """Whether a person gives this cell's points: a manually graded answer or a task."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return bool(meta.get("task") or (meta.get("grade") and meta.get("solution")))


def is_marker(line: str, marker: str) -> bool:
    """Whether ``line`` is a ``marker`` line: nbgrader's rule, the line contains the
    marker's words ('BEGIN SOLUTION' for '### BEGIN SOLUTION'), whatever surrounds them."""
    return marker.lstrip("# ") in line


def has_block(source: str, begin: str) -> bool:
    return any(is_marker(line, begin) for line in source.splitlines())


def _replace_blocks(source: str, begin: str, end: str, stub) -> str:
    """Replace every ``begin ... end`` block (marker lines included) by
    ``stub(indent)`` lines; raise if the markers do not pair up."""
    out, inside, indent = [], False, ""
    for number, line in enumerate(source.splitlines(), 1):
        if is_marker(line, begin):
            if inside:
                raise ValueError(f"line {number}: {begin!r} inside another block")
            inside, indent = True, line[:len(line) - len(line.lstrip())]
            out.extend(stub(indent))
        elif is_marker(line, end):
            if not inside:
                raise ValueError(f"line {number}: {end!r} without {begin!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{begin!r} is never closed by {end!r}")
    return "\n".join(out)


def _check_blocks(cell, grade_id) -> None:
    """Refuse a block in a cell that may not hold it (nbgrader refuses it too), and
    nbgrader's ``AUTOTEST`` lines (tests generated from a YAML file: write them out)."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    for begin, _, kind, where in BLOCKS:
        if not meta.get(kind) and has_block(cell.source, begin):
            raise ValueError(f"cell {grade_id or cell.source[:40]!r}: {begin!r} outside {where}")
    if cell.cell_type == "code" and any(line.lstrip().startswith("#") and "AUTOTEST" in line
                                        for line in cell.source.splitlines()):
        raise ValueError(f"cell {grade_id!r}: nbgrader's AUTOTEST lines are not supported; "
                         "write the tests they stand for in the cell")


def _stub(cell, grade_id, lesson, nbgrader: bool):
    """What replaces an answer: indent -> the stub's lines (``nbgrader``: nbgrader's own)."""
    if cell.cell_type != "code":
        return lambda indent: [f"{indent}YOUR ANSWER HERE"]
    if nbgrader:
        return lambda indent: [indent + line for line in NBGRADER_STUB.splitlines()]
    message = (f"exercise {grade_id!r} is not done yet: replace this line with your "
               f"code (the lesson is {lesson})")
    return lambda indent: [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError({message!r})"]


def student_cell(cell, lesson: str, nbgrader_stub: bool = False):
    """The student's version of one cell (a new cell; the input is not modified).

    An answer without ``### BEGIN SOLUTION`` is replaced whole, as nbgrader
    does. ``nbgrader_stub``: the stub nbgrader's ``generate_assignment``
    writes (``raise NotImplementedError()``), instead of the kit's.
    """
    cell = copy.deepcopy(cell)
    lesson = cell.get("metadata", {}).get("course_kit", {}).get("lesson", lesson)  # a cell may name its own
    meta = cell.get("metadata", {}).get("nbgrader", {})
    grade_id = meta.get("grade_id")
    cell.metadata.pop("execution", None)  # nbclient's timestamps: not the student's business
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
    _check_blocks(cell, grade_id)
    if meta.get("solution"):
        stub = _stub(cell, grade_id, lesson, nbgrader_stub)
        cell.source = (_replace_blocks(cell.source, BEGIN_SOLUTION, END_SOLUTION, stub)
                       if has_block(cell.source, BEGIN_SOLUTION) else "\n".join(stub("")))
    if meta.get("grade") and (not meta.get("solution") or has_block(cell.source, BEGIN_HIDDEN)):
        cell.source = _replace_blocks(cell.source, BEGIN_HIDDEN, END_HIDDEN, lambda indent: [])
    if meta.get("task") and has_block(cell.source, BEGIN_MARK_SCHEME):
        cell.source = _replace_blocks(cell.source, BEGIN_MARK_SCHEME, END_MARK_SCHEME, lambda indent: [])
    return cell


def student_notebook(nb) -> nbformat.NotebookNode:
    """The exercise notebook a student receives, built from the instructor's ``nb``."""
    lesson = nb.metadata.get("course_kit", {}).get("lesson", LESSON)
    ids = [c.metadata.nbgrader.get("grade_id") for c in nb.cells if "nbgrader" in c.get("metadata", {})]
    ids = [i for i in ids if i is not None]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"grade_id used twice: {duplicated}")
    out = copy.deepcopy(nb)
    out.cells = [student_cell(cell, lesson) for cell in nb.cells]
    return out


def render(nb) -> str:
    """The exact text written to disk (so that --check compares like with like)."""
    return nbformat.writes(nb) + "\n"


def build(solutions: Path, exercises: Path, check: bool = False) -> list[Path]:
    """Write (or with ``check``, compare) every exercise; return the stale paths.

    An exercise whose solution no longer exists is stale too, and is removed.
    """
    stale = []
    sources = sorted(solutions.glob("*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"no notebooks in {solutions}/")
    for src in sources:
        target = exercises / src.name
        try:
            text = render(student_notebook(nbformat.read(src, as_version=4)))
        except ValueError as err:
            raise ValueError(f"{src}: {err}") from None
        if not target.exists() or target.read_text() != text:
            stale.append(target)
            if not check:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
    expected = {s.name for s in sources}
    for orphan in sorted(exercises.glob("*.ipynb")):   # its solution is gone: so must it be
        if orphan.name not in expected:
            stale.append(orphan)
            if not check:
                orphan.unlink()
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("solutions", type=Path)
    parser.add_argument("exercises", type=Path)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if exercises/ is out of date")
    args = parser.parse_args(argv)
    stale = build(args.solutions, args.exercises, check=args.check)
    for path in stale:
        print(("out of date: " if args.check else "wrote: " if path.exists() else "removed: ") + str(path))
    if args.check and stale:
        print("run `make exercises` to regenerate them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
