"""Every exercise part against what a student would try, graded by the real grader.

For each exercise with a cases module in ``tests/exercise_cases/`` (its format
is in that package's docstring), one batch holds, per part, the model answers
for every other part and for this one

* a **copy** of the nearest library or lesson code (a call or a thin wrapper):
  it must score 0 on the part: nothing in ``course_lib/`` or a lesson answers it;
* each **wrong** answer: the part must lose points, with a message that names
  the mistake (the fragment), and no message may be withheld (a message that
  has to be withheld quotes the hidden tests: it cannot teach);

and the other parts keep full marks in every submission.
"""

from __future__ import annotations

import importlib

import nbformat
import pytest

from conftest import ROOT
from grader.build import cell_role, student_notebook
from grader.grade import Limits, grade_all
from grader.submission import grade_id

CASES = ROOT / "tests" / "exercise_cases"
STEMS = sorted(p.stem for p in CASES.glob("*.py") if p.stem != "__init__")
LIMITS = Limits(cell=120, notebook=900)


def parts(stem: str) -> dict:
    return importlib.import_module(f"exercise_cases.{stem}").PARTS


def _instructor(stem: str):
    return nbformat.read(ROOT / "solutions" / f"{stem}.ipynb", as_version=4)


def _submission(instructor, answers: dict[str, str]):
    """The released exercise with every answer cell the model answer, except those in ``answers``."""
    nb = student_notebook(instructor)
    model = {grade_id(c): c.source for c in instructor.cells if cell_role(c) == "solution"}
    for cell in nb.cells:
        if cell_role(cell) == "solution":
            cell.source = answers.get(grade_id(cell), model[grade_id(cell)])
    return nb


def cases(stem: str) -> list[tuple[str, str, str, str]]:
    """(submission name, part, answer source, message fragment or '' for the copy)."""
    out = []
    for part, spec in parts(stem).items():
        out.append((f"{part}__copy", part, spec["copy"], ""))
        out += [(f"{part}__wrong{i}", part, source, fragment) for i, (source, fragment) in enumerate(spec["wrong"])]
    return out


_BATCHES: dict[str, dict] = {}


def batch(stem: str, tmp_path_factory) -> dict:
    """Every case of exercise ``stem``, graded once (two at a time): submission name -> Grade."""
    if stem not in _BATCHES:
        folder = tmp_path_factory.mktemp(stem)
        instructor = _instructor(stem)
        for name, part, source, _ in cases(stem):
            nbformat.write(_submission(instructor, {part: source}), folder / f"{name}.ipynb")
        grades = grade_all(ROOT / "solutions" / f"{stem}.ipynb", folder, jobs=2, limits=LIMITS)
        _BATCHES[stem] = {g.student: g for g in grades}
    return _BATCHES[stem]


@pytest.mark.parametrize("stem", STEMS)
def test_every_part_declares_its_cases(stem):
    instructor = _instructor(stem)
    answers = {grade_id(c) for c in instructor.cells if cell_role(c) == "solution"}
    tests = {grade_id(c) for c in instructor.cells if cell_role(c) == "test"}
    declared = parts(stem)
    assert set(declared) == answers, "every answer cell needs its cases, and only answer cells"
    for part, spec in declared.items():
        assert spec["tests"] and set(spec["tests"]) <= tests, (part, spec["tests"])
        assert spec["nearest"] and spec["copy"].strip(), part
        assert any(name.rsplit(".", 1)[-1] in spec["copy"] for name in spec["nearest"]), \
            f"{part}: the copy attempt must call or wrap one of {spec['nearest']}"
        assert len(spec["wrong"]) >= 2 and all(fragment for _, fragment in spec["wrong"]), part


@pytest.mark.slow
@pytest.mark.timeout(1800)   # the first case of an exercise grades its whole batch
@pytest.mark.parametrize("stem, name, part, fragment",
                         [(stem, name, part, fragment) for stem in STEMS for name, part, _, fragment in cases(stem)])
def test_each_attempt_loses_its_part_and_only_its_part(stem, name, part, fragment, tmp_path_factory):
    grade = batch(stem, tmp_path_factory)[name]
    own = set(parts(stem)[part]["tests"])
    mine = [t for t in grade.tests if t.test_id in own]
    others = [t for t in grade.tests if t.test_id not in own]
    assert all(t.status == "passed" for t in others), [(t.test_id, t.status, t.detail) for t in others]
    assert not any(f.startswith("withheld") for f in grade.flags), grade.flags
    if not fragment:   # the copy of the nearest library code scores nothing
        assert sum(t.points for t in mine) == 0, [(t.test_id, t.status, t.detail) for t in mine]
        return
    assert any(t.status != "passed" for t in mine), f"{name} passed every test of {part}"
    details = " ".join(t.detail for t in mine) + " " + " ".join(grade.answer_errors.values())
    assert fragment in details, f"{name}: {fragment!r} not in the feedback: {details}"
