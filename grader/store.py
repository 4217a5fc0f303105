"""The last run's grades, so that running the grader again runs no notebook again.

An instructor runs the grader, fills in the points given by hand
(``manual.csv``, ``grader.manual``) and runs it again to put them in: that
second run must not run every notebook again. So each run keeps, in
``grades.json`` beside ``grades.csv``, every graded submission's grade (before
any points given by hand) under a **fingerprint** of all it depends on: the
grader's own code and the teaching library's, the instructor's notebook, the
assignment's files, the limits, the student's name and file. A submission
whose fingerprint is in the store takes the stored grade; any change (a resubmission, a corrected test, a
new version of the grader) grades it again. ``python -m grader --regrade``
ignores the store.

Only plain data goes in and out (dicts, as ``dataclasses.asdict`` makes
them); ``grader.grade`` turns them back into grades.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

STORE = "grades.json"
FORMAT = 1
GRADER = Path(__file__).resolve().parent   # its own code is part of every fingerprint
LIBRARY = GRADER.parent / "course_lib"     # and so is the teaching library's, which test cells import


def fingerprint(*parts: bytes | str) -> str:
    """A SHA-256 over ``parts``, each length-prefixed (so that no two lists of parts collide)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def context(solution: Path, files: dict[str, Path], limits: tuple) -> str:
    """The fingerprint of what every submission's grade depends on: the grader's code, the
    teaching library the tests import, the instructor's notebook, the assignment files (name
    and content) and the limits (time, memory, processes, file size)."""
    code = [p.read_bytes() for p in sorted(GRADER.glob("*.py"))]
    code += [p.read_bytes() for p in sorted(LIBRARY.rglob("*.py")) if "__pycache__" not in p.parts]
    extra = [part for name, path in sorted(files.items()) for part in (name, path.read_bytes())]
    return fingerprint(*code, solution.read_bytes(), *extra, repr(tuple(limits)))


def load(folder: Path) -> dict[str, dict]:
    """fingerprint -> stored grade (a dict) from ``folder/grades.json``; {} when there is none
    or it cannot be read (then everything is graded again)."""
    try:
        data = json.loads((folder / STORE).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            return {}
        return {entry["key"]: entry["grade"] for entry in data["grades"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def dumps(entries: list[tuple[str, dict]]) -> str:
    """The store's text for ``(fingerprint, grade as a dict)`` pairs."""
    return json.dumps({"format": FORMAT, "grades": [{"key": key, "grade": grade} for key, grade in entries]},
                      indent=1) + "\n"
