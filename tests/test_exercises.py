"""The exercise format: solutions/ is the single source, exercises/ is generated from it."""

from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from conftest import ROOT
from grader.build import BEGIN_SOLUTION, build, cell_role, student_notebook
from grader.build import main as build_main

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


# ---- behaviour pinned down by mutation testing

def test_a_block_opened_inside_another_is_rejected():
    nb = _toy_notebook()
    nb.cells[1].source = "### BEGIN SOLUTION\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n"
    with pytest.raises(ValueError, match="line 2: '### BEGIN SOLUTION' inside another block"):
        student_notebook(nb)


def test_a_markdown_answer_becomes_your_answer_here():
    nb = _toy_notebook()
    nb.cells.append(new_markdown_cell("Why?\n### BEGIN SOLUTION\nBecause the stride is 2.\n### END SOLUTION",
                                      metadata=_meta("why", solution=True)))
    assert student_notebook(nb).cells[-1].source == "Why?\nYOUR ANSWER HERE"


def test_a_manually_graded_answer_is_an_answer_not_a_test():
    """nbgrader's 'manually graded answer' has solution and grade both true: its answer is stubbed."""
    nb = _toy_notebook()
    nb.cells.append(new_code_cell("### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION",
                                  metadata=_meta("essay", solution=True, grade=True, points=1)))
    assert cell_role(nb.cells[-1]) == "solution"
    code = student_notebook(nb).cells[-1].source
    assert "answer = 42" not in code and "raise NotImplementedError(" in code, code


def test_build_of_an_empty_solutions_folder_raises_and_deletes_nothing(tmp_path):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "exercises").mkdir()
    kept = tmp_path / "exercises" / "01.ipynb"
    kept.write_text("{}")
    with pytest.raises(FileNotFoundError, match="no notebooks in"):
        build(tmp_path / "solutions", tmp_path / "exercises")
    assert kept.exists()


def test_build_check_exits_1_when_stale_and_0_when_up_to_date(tmp_path, capsys):
    (tmp_path / "solutions").mkdir()
    nbformat.write(_toy_notebook(), tmp_path / "solutions" / "toy.ipynb")
    folders = [str(tmp_path / "solutions"), str(tmp_path / "exercises")]
    assert build_main([*folders, "--check"]) == 1
    assert "out of date: " in capsys.readouterr().out
    assert build_main(folders) == 0 and (tmp_path / "exercises" / "toy.ipynb").exists()
    assert build_main([*folders, "--check"]) == 0


def test_build_check_writes_nothing(tmp_path):
    (tmp_path / "solutions").mkdir()
    nbformat.write(_toy_notebook(), tmp_path / "solutions" / "toy.ipynb")
    (tmp_path / "exercises").mkdir()
    stale = tmp_path / "exercises" / "toy.ipynb"
    stale.write_text("{}")
    assert build(tmp_path / "solutions", tmp_path / "exercises", check=True) == [stale]
    assert stale.read_text() == "{}"
