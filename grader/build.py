"""Build the students' exercises/ from the instructor's solutions/.

``solutions/`` is the single source. In its notebooks (nbgrader's format, so
that nbgrader can read them too):

* a **solution cell** has ``metadata.nbgrader = {solution: true, grade: false,
  locked: false, grade_id, schema_version: 3}``; its answer sits between
  ``### BEGIN SOLUTION`` and ``### END SOLUTION`` lines;
* a **test cell** has ``{grade: true, solution: false, locked: true, grade_id,
  points, schema_version: 3}``; instructor-only checks sit between
  ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``;
* the notebook's ``metadata.course_kit.lesson`` names the lesson to read (a
  solution cell's own ``metadata.course_kit.lesson`` overrides it).

The student's copy replaces each solution block by a stub that raises
``NotImplementedError`` pointing at the lesson, drops hidden tests, and
clears outputs. Run it with ``make exercises`` or

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


def cell_role(cell) -> str:
    """'solution', 'test', 'locked' or 'free', from the cell's nbgrader metadata."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    if meta.get("solution"):
        return "solution"
    if meta.get("grade"):
        return "test"
    return "locked" if meta.get("locked") else "free"


def _replace_blocks(source: str, begin: str, end: str, stub) -> str:
    """Replace every ``begin ... end`` block (marker lines included) by
    ``stub(indent)`` lines; raise if the markers do not pair up."""
    out, inside, indent = [], False, ""
    for number, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped == begin:
            if inside:
                raise ValueError(f"line {number}: {begin!r} inside another block")
            inside, indent = True, line[:len(line) - len(line.lstrip())]
            out.extend(stub(indent))
        elif stripped == end:
            if not inside:
                raise ValueError(f"line {number}: {end!r} without {begin!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{begin!r} is never closed by {end!r}")
    return "\n".join(out)


def student_cell(cell, lesson: str):
    """The student's version of one cell (a new cell; the input is not modified)."""
    cell = copy.deepcopy(cell)
    lesson = cell.get("metadata", {}).get("course_kit", {}).get("lesson", lesson)  # a cell may name its own
    role, grade_id = cell_role(cell), cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
    cell.metadata.pop("execution", None)  # nbclient's timestamps: not the student's business
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
    if role == "solution":
        if cell.cell_type == "code":
            message = (f"exercise {grade_id!r} is not done yet: replace this line with your "
                       f"code (the lesson is {lesson})")
            stub = lambda indent: [f"{indent}# YOUR CODE HERE",
                                   f"{indent}raise NotImplementedError({message!r})"]
        else:
            stub = lambda indent: [f"{indent}YOUR ANSWER HERE"]
        if BEGIN_SOLUTION not in cell.source:
            raise ValueError(f"solution cell {grade_id!r} has no {BEGIN_SOLUTION!r} block")
        cell.source = _replace_blocks(cell.source, BEGIN_SOLUTION, END_SOLUTION, stub)
    elif role == "test":
        cell.source = _replace_blocks(cell.source, BEGIN_HIDDEN, END_HIDDEN, lambda indent: [])
    return cell


def student_notebook(nb) -> nbformat.NotebookNode:
    """The exercise notebook a student receives, built from the instructor's ``nb``."""
    lesson = nb.metadata.get("course_kit", {}).get("lesson", "the lesson notebooks in notebooks/")
    ids = [c.metadata.nbgrader["grade_id"] for c in nb.cells if "nbgrader" in c.get("metadata", {})]
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
