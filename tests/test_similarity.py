"""The similarity report: copies found after renaming, honest differences left alone, never a grade.

A one-answer exercise (``pad``) is built here. Most tests call the report's
functions on answers held in memory or on files in a folder, without a
kernel; one runs ``python -m grader`` on two submissions.
"""

from __future__ import annotations

import ast
import csv
import json
import textwrap

import nbformat
import pytest

from conftest import ROOT
from grader import grade, similarity
from grader.build import student_notebook

EXERCISE = "00_pad_exercise"
MODEL = '''def pad(x, P):
    """Zero-pad x (N, C, H, W) by P on each side -> (N, C, H + 2P, W + 2P)."""
    ### BEGIN SOLUTION
    N, C, H, W = x.shape
    out = np.zeros((N, C, H + 2 * P, W + 2 * P), dtype=x.dtype)
    out[:, :, P:P + H, P:P + W] = x
    return out
    ### END SOLUTION'''
LOOP = '''def pad(x, P):
    """Zero-pad x (N, C, H, W) by P on each side -> (N, C, H + 2P, W + 2P)."""
    if P < 0:
        raise ValueError("P must be at least 0")
    N, C, H, W = x.shape
    out = np.zeros((N, C, H + 2 * P, W + 2 * P))
    for i in range(H):
        for j in range(W):
            out[:, :, i + P, j + P] = x[:, :, i, j]
    return out'''
# LOOP, disguised: other names (the argument's too), comments, blank lines, spacing, a docstring, constants
LOOP_DISGUISED = '''def pad(images, P):
    """My own padding, written from scratch!"""
    if P < 0.0:
        raise ValueError("negative padding!")   # the sizes next
    batch, chans, rows, cols = images.shape
    result = np.zeros((batch, chans, rows + 2*P, cols + 2*P))

    for r in range(rows):
        for c in range( cols ):
            result[:, :, r+P, c+P] = images[:, :, r, c]  # one pixel at a time
    return result'''
NP_PAD = '''def pad(x, P):
    widths = ((0, 0), (0, 0), (P, P), (P, P))   # nothing on N and C
    return np.pad(x, widths, mode="constant")'''
MODEL_RENAMED = '''def pad(batch, p):
    n, c, h, w = batch.shape
    padded = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=batch.dtype)  # zeros all round
    padded[:, :, p:p + h, p:p + w] = batch
    return padded'''


def _meta(grade_id: str, solution: bool) -> dict:
    if solution:
        return {"nbgrader": {"grade": False, "solution": True, "locked": False,
                             "grade_id": grade_id, "schema_version": 3}}
    return {"nbgrader": {"grade": True, "solution": False, "locked": True,
                         "grade_id": grade_id, "points": 1, "schema_version": 3}}


def solution_notebook() -> nbformat.NotebookNode:
    """The instructor's fixture: one answer cell (``pad``), one test cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["course_kit"] = {"lesson": "notebooks/01_convolution.ipynb"}
    nb.cells = [nbformat.v4.new_markdown_cell("Write `pad`."),
                nbformat.v4.new_code_cell("import numpy as np"),
                nbformat.v4.new_code_cell(MODEL, metadata=_meta("pad", True)),
                nbformat.v4.new_code_cell("import numpy as np\nx = np.ones((1, 1, 2, 2))\n"
                                          "assert pad(x, 1).shape == (1, 1, 4, 4)", metadata=_meta("test_pad", False))]
    return nb


def submitted(source: str | None = None) -> nbformat.NotebookNode:
    """The released exercise, its ``pad`` cell replaced by ``source`` (None: left as released)."""
    nb = student_notebook(solution_notebook())
    if source is not None:
        nb.cells[2].source = source
    return nb


def stub() -> str:
    return submitted().cells[2].source


def library_body(path: str, function: str) -> str:
    """The body of ``course_lib/PATH:FUNCTION`` without its docstring, as source at 4 spaces."""
    text = (ROOT / "course_lib" / path).read_text()
    node = next(n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef) and n.name == function)
    lines = text.splitlines()[node.body[1].lineno - 1:node.end_lineno]   # body[0] is the docstring
    return textwrap.indent(textwrap.dedent("\n".join(lines)), "    ")


def matches(**sources: str) -> list[similarity.Match]:
    return similarity.find_matches(solution_notebook(), {"pad": sources}, EXERCISE)


def own(source: str) -> tuple[str, ...]:
    return similarity.own_tokens(similarity.tokens(source), similarity.tokens(stub()))


# ---------------------------------------------------------------------------
# the normalisation and the score
# ---------------------------------------------------------------------------

def test_renamed_recommented_respaced_answers_are_identical_and_reported_with_score_1():
    assert own(LOOP) == own(LOOP_DISGUISED)
    assert len(own(LOOP)) >= similarity.MIN_TOKENS
    pairs = [m for m in matches(bob=LOOP, carol=LOOP_DISGUISED) if m.kind == "pair"]
    assert [(m.student, m.other, m.score) for m in pairs] == [("bob", "carol", 1.0)]
    assert pairs[0].note == "identical after renaming" and pairs[0].cell == "pad"


def test_two_different_correct_answers_are_not_reported():
    assert len(own(NP_PAD)) >= similarity.MIN_TOKENS   # long enough to be compared at all
    assert similarity.similarity(own(LOOP), own(NP_PAD)) < 0.5
    assert similarity.similarity(own(LOOP), own(MODEL)) < similarity.THRESHOLD
    assert matches(bob=LOOP, dave=NP_PAD) == []


def test_names_the_code_uses_without_binding_them_are_kept():
    assert similarity.tokens("y = np.add(a, b)") != similarity.tokens("y = np.subtract(a, b)")
    assert similarity.tokens("y = np.add(a, b)") != similarity.tokens("y = np.add(b, a)")   # a, b: free
    assert similarity.tokens("y = f(axis=0)") != similarity.tokens("y = f(keepdims=0)")
    assert similarity.tokens("a = 1; b = a") == similarity.tokens("q = 7; r = q")
    assert similarity.tokens("a = 1; b = a") != similarity.tokens("a = 1; b = 1")
    assert similarity.tokens("a = 1; b = 2; c = a") != similarity.tokens("a = 1; b = 2; c = b")   # v0 is not v1


def test_a_near_copy_scores_below_1_and_above_the_threshold():
    longer = LOOP.replace("    return out", "    out = out + 0\n    return out")
    score = similarity.similarity(own(LOOP), own(longer))
    assert similarity.THRESHOLD <= score < 1.0
    (pair,) = matches(bob=LOOP, erin=longer)
    assert pair.score == score and pair.note.startswith("near-identical")
    answers = {"pad": {"bob": LOOP, "erin": longer}}
    assert similarity.find_matches(solution_notebook(), answers, EXERCISE, threshold=score) == [pair]
    assert similarity.find_matches(solution_notebook(), answers, EXERCISE, threshold=score + 0.01) == []


def test_code_that_does_not_parse_is_compared_as_text_without_comments():
    broken = "def pad(x, P)\n    return np.zeros((1, 2, 3)) + x  # copied\n    oops oops"
    assert similarity.tokens(broken) == similarity.tokens(broken.replace("  # copied", "") + "   ")
    assert similarity.tokens(broken)[:4] == ("~def", "~pad", "~(", "~x")
    assert [m.kind for m in matches(bob=broken, carol=broken.replace("# copied", "# mine"))] == ["pair"]


def test_magics_do_not_stop_an_answer_from_parsing():
    assert similarity.tokens("%timeit pad(x, 1)\n" + LOOP) == similarity.tokens(LOOP)


# ---------------------------------------------------------------------------
# what is left out, and the model answer and the library
# ---------------------------------------------------------------------------

def test_students_who_left_the_stub_or_wrote_a_line_are_never_matched():
    blank = stub()
    message_edited = blank.replace("not done yet", "TODO")
    one_line = "def pad(x, P):\n    return np.pad(x, P)"
    assert matches(ann=blank, ben=blank, cid=blank, dan=message_edited, eve=one_line, fay=one_line) == []
    assert len(own(one_line)) < similarity.MIN_TOKENS


def test_an_answer_equal_to_the_model_answer_is_reported():
    (found,) = matches(frank=MODEL_RENAMED, bob=LOOP)
    assert (found.student, found.other, found.kind, found.score) == ("frank", "model_answer", "model_answer", 1.0)
    assert found.note == "identical to the model answer after renaming"


def test_a_pasted_library_function_body_is_reported_as_library():
    pasted = "def pad(x, P):\n" + library_body("conv.py", "pad2d")
    found = [m for m in matches(gina=pasted, bob=LOOP) if m.kind == "library"]
    assert ("gina", "course_lib/conv.py:pad2d", 1.0) in [(m.student, m.other, m.score) for m in found]
    assert all(m.student == "gina" for m in found)
    assert "the body of pad() matches pad2d()" in found[0].note
    assert similarity.find_matches(solution_notebook(), {"pad": {"gina": pasted}}, EXERCISE, library=None) == []


def test_a_library_body_under_another_def_line_still_matches():
    pasted = ("def my_conv(verbose, x, w, b=None, padding=0, stride=1):\n"   # other arguments, in another order
              + library_body("conv.py", "conv2d_im2col"))
    found = {m.other for m in matches(hana=pasted + "\n\n" + LOOP) if m.kind == "library"}
    assert "course_lib/conv.py:conv2d_im2col" in found


def test_library_index_has_every_function_once_and_is_cached():
    index = similarity.library_index()
    labels = [label for label, _ in index]
    assert "course_lib/conv.py:pad2d" in labels and "course_lib/optim.py:Adagrad.step" in labels
    assert len(labels) == len(set(labels))
    assert all(len(body) >= similarity.MIN_TOKENS for _, body in index)
    assert similarity.library_index() is index


# ---------------------------------------------------------------------------
# the CSV, the folder, the command line
# ---------------------------------------------------------------------------

def _write(folder, student: str, nb) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{student}.ipynb").write_text(nb if isinstance(nb, str) else json.dumps(nb))


def test_report_from_a_folder_skips_bad_files_and_neutralises_formulas(tmp_path):
    solution = tmp_path / f"{EXERCISE}.ipynb"
    nbformat.write(solution_notebook(), solution)
    folder = tmp_path / "in"
    _write(folder, "=HYPERLINK(x)", submitted(LOOP))
    _write(folder, "bob", submitted(LOOP_DISGUISED))
    _write(folder, "zoe", "not json")
    other = submitted(LOOP)
    other.metadata["course_kit"] = {"lesson": "notebooks/99_other.ipynb"}
    _write(folder, "wrong", other)
    (folder / "hugo.pdf").write_bytes(b"%PDF")
    line = similarity.write_report(solution, folder, tmp_path / "out")
    text = (tmp_path / "out" / "similarity.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert list(rows[0]) == similarity.COLUMNS
    assert [(r["student"], r["other"], r["score"], r["kind"]) for r in rows] == \
        [("'=HYPERLINK(x)", "bob", "1", "pair")]
    assert line == ("similarity: 1 pair to look at, 0 close to the model answer, 0 close to course_lib "
                    f"(score >= 0.9; {tmp_path / 'out' / 'similarity.csv'})")


def test_report_never_raises(tmp_path):
    line = similarity.write_report(tmp_path / "missing.ipynb", tmp_path, tmp_path / "out")
    assert line.startswith("similarity: not written (FileNotFoundError") and "grades are not affected" in line
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="between 0 and 1"):
        similarity.find_matches(solution_notebook(), {}, EXERCISE, threshold=0)


def test_cli_refuses_a_threshold_outside_0_to_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        grade.main([str(tmp_path / "x.ipynb"), str(tmp_path), "--similarity-threshold", "1.5"])
    assert stop.value.code == 2 and "between 0 and 1" in capsys.readouterr().err


def test_a_failing_report_leaves_the_grades_alone(tmp_path, capsys, monkeypatch):
    nbformat.write(solution_notebook(), tmp_path / f"{EXERCISE}.ipynb")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "hugo.pdf").write_bytes(b"%PDF")   # not gradable: no kernel starts

    def broken(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(similarity, "find_matches", broken)
    assert grade.main([str(tmp_path / f"{EXERCISE}.ipynb"), str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "similarity: not written (RuntimeError: boom); the grades are not affected" in out
    assert (tmp_path / "out" / "grades.csv").exists() and not (tmp_path / "out" / "similarity.csv").exists()


@pytest.mark.slow
def test_cli_writes_similarity_csv_beside_the_grades(tmp_path, capsys):
    nbformat.write(solution_notebook(), tmp_path / f"{EXERCISE}.ipynb")
    _write(tmp_path / "in", "bob", submitted(LOOP))
    _write(tmp_path / "in", "carol", submitted(LOOP_DISGUISED))
    code = grade.main([str(tmp_path / f"{EXERCISE}.ipynb"), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                       "--similarity-threshold", "0.95", "--cell-timeout", "30"])
    assert code == 0
    out = capsys.readouterr().out
    assert "similarity: 1 pair to look at, 0 close to the model answer" in out and "score >= 0.95" in out, out
    rows = list(csv.DictReader((tmp_path / "out" / "similarity.csv").open()))
    assert [(r["cell"], r["student"], r["other"], r["kind"]) for r in rows] == [("pad", "bob", "carol", "pair")]
    grades = list(csv.DictReader((tmp_path / "out" / "grades.csv").open()))
    assert [(r["student"], r["points"], r["status"]) for r in grades if r["test_id"] == "TOTAL"] == \
        [("bob", "1", "graded"), ("carol", "1", "graded")]   # a flagged copy keeps its points


def test_instructors_guide_describes_the_report_as_written():
    text = (ROOT / "docs" / "instructors.md").read_text()
    section = " ".join(text.split("## Similarity report")[1].split("\n## ")[0].split())
    assert f"`{','.join(similarity.COLUMNS)}`" in section
    assert all(f"`{kind}`" in section for kind in similarity.KINDS)
    assert f"fewer than {similarity.MIN_TOKENS} tokens" in section and f"threshold {similarity.THRESHOLD}" in section
    assert "`--similarity-threshold` |" in text
