"""The exercise format: solutions/ is the single source, exercises/ is generated from it."""

from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from conftest import ROOT
from course_lib.grading.build import BEGIN_SOLUTION, build, cell_role, student_notebook

SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def _meta(grade_id, *, solution=False, grade=False, points=None):
    meta = {"grade": grade, "solution": solution, "locked": not solution,
            "grade_id": grade_id, "schema_version": 3}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def _toy_notebook():
    nb = new_notebook(metadata={"course_kit": {"lesson": "notebooks/01_convolution.ipynb"}})
    nb.cells = [
        new_markdown_cell("Write `double`.", metadata=_meta("intro")),
        new_code_cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n",
                      metadata=_meta("double", solution=True)),
        new_code_cell("assert double(2) == 4, 'double(2) should be 4'\n### BEGIN HIDDEN TESTS\n"
                      "assert double(-1) == -2\n### END HIDDEN TESTS\n",
                      metadata=_meta("test_double", grade=True, points=2)),
    ]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="leaked\n")]
    return nb


def test_student_copy_stubs_solutions_and_drops_hidden_tests():
    nb = _toy_notebook()
    before = nbformat.writes(nb)
    student = student_notebook(nb)
    assert nbformat.writes(nb) == before, "the instructor's notebook must not be modified"
    code = student.cells[1].source
    assert "return 2 * x" not in code and BEGIN_SOLUTION not in code
    assert "    # YOUR CODE HERE\n    raise NotImplementedError(" in code   # indentation kept
    assert "notebooks/01_convolution.ipynb" in code and "'double'" in code
    assert student.cells[1].outputs == []
    test = student.cells[2].source
    assert "double(2) == 4" in test and "double(-1)" not in test and "HIDDEN" not in test
    assert [cell_role(c) for c in student.cells] == ["locked", "solution", "test"]
    assert student.cells[2].metadata == nb.cells[2].metadata  # grade_id and points kept for grading


def test_stubbed_exercise_raises_and_solution_passes():
    nb, student = _toy_notebook(), student_notebook(_toy_notebook())
    namespace = {}
    exec(nb.cells[1].source, namespace)
    exec(nb.cells[2].source, namespace)                       # the solution passes its tests
    exec(student.cells[1].source, namespace := {})
    with pytest.raises(NotImplementedError, match="exercise 'double' is not done yet"):
        exec(student.cells[2].source, namespace)


@pytest.mark.parametrize("source, message", [
    ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n### END SOLUTION\n", "without"),
    ("x = 1\n", "has no '### BEGIN SOLUTION' block"),
])
def test_malformed_solution_cells_are_rejected(source, message):
    nb = _toy_notebook()
    nb.cells[1].source = source
    with pytest.raises(ValueError, match=message):
        student_notebook(nb)


def test_duplicate_grade_ids_are_rejected():
    nb = _toy_notebook()
    nb.cells[2].metadata.nbgrader.grade_id = "double"
    with pytest.raises(ValueError, match=r"grade_id used twice: \['double'\]"):
        student_notebook(nb)


def test_build_writes_then_reports_up_to_date(tmp_path):
    (tmp_path / "solutions").mkdir()
    nbformat.write(_toy_notebook(), tmp_path / "solutions" / "toy.ipynb")
    assert build(tmp_path / "solutions", tmp_path / "exercises") == [tmp_path / "exercises" / "toy.ipynb"]
    assert build(tmp_path / "solutions", tmp_path / "exercises", check=True) == []
    (tmp_path / "exercises" / "toy.ipynb").write_text("{}")
    assert build(tmp_path / "solutions", tmp_path / "exercises", check=True) != []
    orphan = tmp_path / "exercises" / "retired.ipynb"          # its solution was deleted
    orphan.write_text("{}")
    assert orphan in build(tmp_path / "solutions", tmp_path / "exercises", check=True) and orphan.exists()
    assert orphan in build(tmp_path / "solutions", tmp_path / "exercises") and not orphan.exists()


def test_exercises_folder_is_up_to_date():
    stale = build(ROOT / "solutions", ROOT / "exercises", check=True)
    assert not stale, f"exercises/ is out of date ({[p.name for p in stale]}): run `make exercises`"


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_solution_notebook_follows_the_format(path):
    nb = nbformat.read(path, as_version=4)
    lesson = nb.metadata.get("course_kit", {}).get("lesson")
    assert lesson and (ROOT / lesson).exists(), f"metadata.course_kit.lesson {lesson!r} is not a lesson"
    roles = [cell_role(c) for c in nb.cells]
    assert "solution" in roles and "test" in roles
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader")
        if meta is None:
            continue
        assert meta.get("schema_version") == 3 and meta.get("grade_id"), meta
        assert {"grade", "solution", "locked"} <= set(meta), meta
        if meta["grade"]:
            assert cell.cell_type == "code" and meta["locked"] and not meta["solution"], meta
            assert meta.get("points", 0) > 0, f"test cell {meta['grade_id']} has no points"
        if meta["solution"]:
            assert not meta["locked"] and BEGIN_SOLUTION in cell.source, meta["grade_id"]
    exercise = nbformat.read(ROOT / "exercises" / path.name, as_version=4)
    text = nbformat.writes(exercise)
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert all(not c.get("outputs") for c in exercise.cells if c.cell_type == "code")
