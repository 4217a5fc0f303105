"""The instructor's grader: fake submissions of every bad kind, and the exact points they earn.

A small exercise (``add`` and ``mul``, 6 points over three test cells, one
with hidden checks and one that warns on stderr) is built here; each fake
submission starts from the students' copy that ``build.student_notebook``
makes and changes what a student might. The batch runs once per session
(kernel start-up dominates), two kernels at a time, with a 10 s cell limit
for the infinite loop. Then every notebook in solutions/ must score full
marks and its generated exercise zero.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import types
from itertools import chain, repeat
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import DeadKernelError

from conftest import ROOT
from grader import csvsafe, execute, grade, guard, submission
from grader.build import student_notebook
from grader.grade import Limits, grade_all

EXERCISE = "00_fixture_exercise"
TEST_LIMITS = Limits(cell=10, notebook=120)
HIDDEN_LINE = "assert np.allclose(add(-1.5, 1.5), 0.0)"


def _meta(grade_id: str, *, solution: bool = False, points: int = 0) -> dict:
    if solution:
        return {"nbgrader": {"grade": False, "solution": True, "locked": False,
                             "grade_id": grade_id, "schema_version": 3}}
    return {"nbgrader": {"grade": True, "solution": False, "locked": True,
                         "grade_id": grade_id, "points": points, "schema_version": 3}}


def solution_notebook() -> nbformat.NotebookNode:
    """The instructor's fixture: two answers, three test cells, 6 points."""
    code, md = nbformat.v4.new_code_cell, nbformat.v4.new_markdown_cell
    nb = nbformat.v4.new_notebook()
    nb.metadata["course_kit"] = {"lesson": "notebooks/00_fixture.ipynb"}
    nb.cells = [
        md("# Fixture exercise\nWrite `add` and `mul`."),
        code("import numpy as np"),
        code("def add(a, b):\n    \"\"\"Elementwise a + b.\"\"\"\n    ### BEGIN SOLUTION\n"
             "    return np.add(a, b)\n    ### END SOLUTION", metadata=_meta("add", solution=True)),
        code("import numpy as np\n"
             "assert np.allclose(add(np.ones(3), 2.0), 3.0), 'add(ones(3), 2) should be all 3'",
             metadata=_meta("test_add", points=1)),
        code("import sys\nimport warnings\nimport numpy as np\n"
             "warnings.warn('a library warning: it must not cost points')\n"
             "print('also on stderr', file=sys.stderr)\n"
             "assert np.allclose(add(np.arange(4.0), np.arange(4.0)), [0, 2, 4, 6]), 'add(arange(4), arange(4))'\n"
             f"### BEGIN HIDDEN TESTS\n{HIDDEN_LINE}, 'a hidden check failed'\n### END HIDDEN TESTS",
             metadata=_meta("test_add_hidden", points=2)),
        code("def mul(a, b):\n    \"\"\"Elementwise a * b.\"\"\"\n    ### BEGIN SOLUTION\n"
             "    return np.multiply(a, b)\n    ### END SOLUTION", metadata=_meta("mul", solution=True)),
        code("import numpy as np\n"
             "assert np.allclose(mul(np.full(2, 3.0), 2.0), 6.0), 'mul(full(2, 3), 2) should be all 6'",
             metadata=_meta("test_mul", points=3)),
    ]
    return nb


def _cell(nb, grade_id):
    return next(c for c in nb.cells if submission.grade_id(c) == grade_id)


def answered(nb=None, **answers: str):
    """The released exercise with the named answer cells replaced by ``answers``."""
    nb = copy.deepcopy(nb) if nb is not None else student_notebook(solution_notebook())
    for grade_id, source in answers.items():
        _cell(nb, grade_id).source = source
    return nb


GOOD_ADD = "def add(a, b):\n    return np.add(a, b)"
GOOD_MUL = "def mul(a, b):\n    return np.multiply(a, b)"
BAD_ADD = "def add(a, b):\n    return np.subtract(a, b)"
# A student who prints the hidden tests: the test cell's own source (In[-1]), markers included;
# one hidden line without markers; and, from an answer cell, an earlier test cell's source.
LEAK_ADD = ("def add(a, b):\n    src = get_ipython().user_ns['In'][-1]\n    i = src.find('### BEGIN')\n"
            "    raise AssertionError(src[i:] if i >= 0 else 'nothing to see')")
LEAK_MUL = ("def mul(a, b):\n    src = [s for s in In if 'HIDDEN' in s][0]\n"
            "    raise AssertionError('look: ' + [l for l in src.splitlines() if 'add(-1.5' in l][0])\n"
            "raise RuntimeError([s for s in In if 'HIDDEN' in s][0][-60:])")


def fake_submissions() -> dict[str, object]:
    """student name -> notebook (or raw text), one per kind of submission."""
    perfect = answered(add=GOOD_ADD, mul=GOOD_MUL)
    missing = copy.deepcopy(perfect)
    missing.cells = [c for c in missing.cells if submission.grade_id(c) not in ("mul", "test_mul")]
    duplicate = copy.deepcopy(perfect)
    duplicate.cells.insert(2, copy.deepcopy(_cell(duplicate, "add")))
    duplicate.cells[2].source = BAD_ADD  # the first copy of 'add' is wrong
    edited = answered(add=BAD_ADD, mul=GOOD_MUL)
    _cell(edited, "test_add").source = "pass  # the test is gone"
    edited.cells.remove(_cell(edited, "test_add_hidden"))
    edited.cells.append(nbformat.v4.new_code_cell("print('my own scratch cell')"))
    other = nbformat.v4.new_notebook()
    other.metadata["course_kit"] = {"lesson": "notebooks/99_other.ipynb"}
    other.cells = [nbformat.v4.new_code_cell("x = 1", metadata=_meta("conv2d", solution=True))]
    return {
        "perfect": perfect,
        "blank": student_notebook(solution_notebook()),
        "partial": answered(add=GOOD_ADD, mul="def mul(a, b):\n    return np.add(a, b)"),
        "loop": answered(add=GOOD_ADD, mul="while True:\n    pass"),
        "syntax": answered(add="def add(a, b)\n    return a + b", mul=GOOD_MUL),
        "import_error": answered(add="import numpy_does_not_exist\n" + GOOD_ADD, mul=GOOD_MUL),
        "crash": answered(add=GOOD_ADD, mul="import os\nos._exit(1)"),
        # a stop in the first part must not cost the later ones: a fresh kernel goes on
        "loop_first": answered(add="while True:\n    pass", mul=GOOD_MUL),
        "crash_in_test": answered(add="def add(a, b):\n    import os\n    os._exit(1)", mul=GOOD_MUL),
        "not_json": "{ this is not JSON",
        "not_notebook": json.dumps({"hello": "world"}),
        "wrong_exercise": other,
        "missing": missing,
        "duplicate": duplicate,
        "edited": edited,
        "patched": answered(add="np.allclose = lambda *a, **k: True\n" + BAD_ADD, mul=GOOD_MUL),
        "patch_in_test": answered(add="def add(a, b):\n    import numpy\n"
                                      "    numpy.allclose = lambda *a, **k: True\n    return a - b",
                                  mul=GOOD_MUL),
        "leaker": answered(add=LEAK_ADD, mul=LEAK_MUL),
    }


# student -> (total points, TOTAL status, {test_id: (points, status)} for the tests that matter)
EXPECTED = {
    "perfect": (6, "graded", {"test_add": (1, "passed"), "test_add_hidden": (2, "passed"), "test_mul": (3, "passed")}),
    "blank": (0, "graded", {"test_add": (0, "error"), "test_add_hidden": (0, "error"), "test_mul": (0, "error")}),
    "partial": (3, "graded", {"test_mul": (0, "failed")}),
    "loop": (3, "timeout", {"test_add": (1, "passed"), "test_mul": (0, "error")}),
    "loop_first": (3, "timeout", {"test_add": (0, "error"), "test_add_hidden": (0, "error"),
                                  "test_mul": (3, "passed")}),
    "crash_in_test": (3, "kernel_died", {"test_add": (0, "kernel_died"), "test_add_hidden": (0, "kernel_died"),
                                         "test_mul": (3, "passed")}),
    "syntax": (3, "graded", {"test_add": (0, "error"), "test_mul": (3, "passed")}),
    "import_error": (3, "graded", {"test_add": (0, "error"), "test_mul": (3, "passed")}),
    "crash": (3, "kernel_died", {"test_add_hidden": (2, "passed"), "test_mul": (0, "error")}),
    "not_json": (0, "unreadable", {"test_mul": (0, "ungraded")}),
    "not_notebook": (0, "unreadable", {"test_mul": (0, "ungraded")}),
    "wrong_exercise": (0, "wrong_exercise", {"test_add": (0, "ungraded")}),
    "missing": (3, "graded", {"test_add": (1, "passed"), "test_mul": (0, "error")}),
    "duplicate": (3, "graded", {"test_add": (0, "failed"), "test_mul": (3, "passed")}),
    "edited": (3, "graded", {"test_add": (0, "failed"), "test_add_hidden": (0, "failed")}),
    "patched": (3, "graded", {"test_add": (0, "failed"), "test_add_hidden": (0, "failed")}),
    "patch_in_test": (3, "graded", {"test_add": (0, "tampered"), "test_add_hidden": (0, "tampered")}),
    "leaker": (0, "graded", {"test_add": (0, "failed"), "test_add_hidden": (0, "failed"), "test_mul": (0, "failed")}),
    "erin": (6, "graded", {"test_mul": (3, "passed")}),      # folder layout, notebook in a subfolder
    "frank": (0, "no_notebook", {"test_mul": (0, "ungraded")}),  # empty folder
    "pete": (0, "no_notebook", {"test_mul": (0, "ungraded")}),   # a folder with no notebook in it
    "hugo": (0, "no_notebook", {"test_mul": (0, "ungraded")}),   # hugo.pdf
    "olga": (0, "no_notebook", {"test_mul": (0, "ungraded")}),   # olga.py
}


def write_submissions(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for student, nb in fake_submissions().items():
        path = folder / f"{student}.ipynb"
        # json, not nbformat.writes: the duplicated cell keeps its id on disk, as in a file
        # edited by hand, so the grader's own reading must repair it
        path.write_text(nb if isinstance(nb, str) else json.dumps(nb, indent=1))
    (folder / "erin" / "work").mkdir(parents=True)
    nbformat.write(fake_submissions()["perfect"], folder / "erin" / "work" / f"{EXERCISE}.ipynb")
    (folder / "frank").mkdir()
    (folder / "pete").mkdir()
    (folder / "pete" / "readme.txt").write_text("I could not get Jupyter to work")
    (folder / "pete" / ".DS_Store").write_bytes(b"\0")
    (folder / "hugo.pdf").write_bytes(b"%PDF-1.4 a printout of the notebook")
    (folder / "olga.py").write_text(GOOD_ADD + "\n" + GOOD_MUL + "\n")
    (folder / ".DS_Store").write_bytes(b"\0")               # hidden entries are not submissions
    (folder / ".ipynb_checkpoints").mkdir()


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """The fixture exercise and every fake submission, graded once, 2 at a time."""
    base = tmp_path_factory.mktemp("grading")
    solution = base / f"{EXERCISE}.ipynb"
    nbformat.write(solution_notebook(), solution)
    write_submissions(base / "submitted")
    grades = grade_all(solution, base / "submitted", jobs=2, limits=TEST_LIMITS)
    grade.write_outputs(base / "out", grades)
    return base, {g.student: g for g in grades}


# ---------------------------------------------------------------------------
# pure parts: no kernel
# ---------------------------------------------------------------------------

def test_merge_takes_only_answer_cells_and_flags_the_rest():
    instructor = solution_notebook()
    merged = submission.merge(instructor, fake_submissions()["edited"])
    assert merged.flags == ["edited_test:test_add", "deleted_test:test_add_hidden", "dropped_cells:1"]
    assert _cell(merged.nb, "add").source == BAD_ADD
    assert _cell(merged.nb, "test_add").source == _cell(instructor, "test_add").source
    assert HIDDEN_LINE in _cell(merged.nb, "test_add_hidden").source  # the instructor's copy, hidden part included
    assert "my own scratch cell" not in json.dumps(merged.nb)


def test_merge_of_a_missing_answer_runs_the_released_stub():
    merged = submission.merge(solution_notebook(), fake_submissions()["missing"])
    assert merged.flags == ["missing_solution:mul", "deleted_test:test_mul"]
    assert "raise NotImplementedError" in _cell(merged.nb, "mul").source
    assert "np.multiply" not in _cell(merged.nb, "mul").source  # never the instructor's answer


def test_the_released_exercise_itself_raises_no_flags():
    assert submission.merge(solution_notebook(), student_notebook(solution_notebook())).flags == []


@pytest.mark.parametrize("text, reason", [
    ("{ not json", "is not JSON"),
    ('{"hello": 1}', "not a notebook"),
    ('[1, 2]', "not a notebook"),
    ('{"cells": [{"cell_type": "code", "source": 3}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}',
     "not a valid notebook"),
    ("", "is not JSON"),
    ('{"cells": [{"cell_type": "code", "source": "", "metadata": {"nbgrader": {"grade_id": [1]}}, '
     '"outputs": [], "execution_count": null}], "metadata": {}, "nbformat": 4, "nbformat_minor": 4}',
     "nbgrader metadata"),
])
def test_read_submission_turns_bad_files_into_reasons(tmp_path, text, reason):
    path = tmp_path / "x.ipynb"
    path.write_text(text)
    nb, problem = submission.read_submission(path)
    assert nb is None and problem.startswith("unreadable: ") and reason in problem, problem


def test_read_submission_of_binary_garbage(tmp_path):
    path = tmp_path / "x.ipynb"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert submission.read_submission(path)[1].startswith("unreadable: ")


def test_wrong_exercise_is_recognised():
    instructor = solution_notebook()
    assert submission.wrong_exercise(instructor, fake_submissions()["wrong_exercise"]).startswith("wrong_exercise")
    assert submission.wrong_exercise(instructor, fake_submissions()["perfect"]) == ""
    no_ids = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    assert "none of this exercise's cells" in submission.wrong_exercise(instructor, no_ids)


def test_test_modules_reads_the_test_cells_imports():
    assert execute.test_modules(solution_notebook()) == ["numpy", "sys", "warnings"]


def test_instrument_wraps_each_test_cell_in_guards():
    nb = execute.instrument(solution_notebook(), ["numpy"])
    roles = [c.metadata.get(execute.ROLE_KEY, {}).get("role") for c in nb.cells]
    assert roles[0] == "preamble"
    assert roles.count("before") == roles.count("after") == 3
    for i, cell in enumerate(nb.cells):
        if submission.grade_id(cell, ) in ("test_add", "test_add_hidden", "test_mul"):
            assert roles[i - 1] == "before" and roles[i + 1] == "after"


MiB = 2**20


def _message(msg_type: str, **content) -> dict:
    return {"msg_type": msg_type, "header": {"msg_type": msg_type}, "parent_header": {"msg_id": "cell"},
            "content": content}


def _capped_outputs(*messages) -> tuple[list, execute._CappedClient]:
    """Feed kernel messages for cell 0 to the grader's executor, as nbclient would; return what it kept."""
    client, outs = execute._CappedClient(nbformat.v4.new_notebook()), []
    client.clear_before_next_output = False   # as nbclient sets it when a cell starts
    for msg in messages:
        client.output(outs, msg, None, 0)
    return outs, client


def _text(outs) -> str:
    return "".join(o.get("text", "") for o in outs)


def test_output_cap_counts_bytes_of_one_huge_message():
    """One flush of ``print('x' * 10**7)`` is one stream message: it is cut at 1 MiB, not kept whole."""
    outs, client = _capped_outputs(_message("stream", name="stdout", text="x" * 10**7))
    assert len(_text(outs)) <= MiB, f"kept {len(_text(outs))} bytes of one print, expected at most {MiB}"
    assert execute.MAX_OUTPUT_BYTES == MiB and _text(outs) == "x" * MiB
    assert client.dropped_bytes[0] == 10**7 - MiB


def test_output_cap_counts_bytes_over_many_messages():
    """A print loop: 60 flushes of 100 kB. Counting messages kept 50 of them (5 MB); bytes keep 1 MiB."""
    outs, client = _capped_outputs(*[_message("stream", name="stdout", text="y" * 100_000)] * 60)
    assert len(_text(outs)) == MiB, f"kept {len(_text(outs))} bytes, expected {MiB}"
    assert len(outs) == 11 and client.dropped_bytes[0] == 60 * 100_000 - MiB


def test_output_cap_cuts_whole_characters_drops_big_displays_and_keeps_errors():
    euro = "\u20ac"                              # 3 bytes in UTF-8; 2**20 is not a multiple of 3
    big_png = {"image/png": "A" * MiB, "text/plain": "<Figure>"}
    error = _message("error", ename="ValueError", evalue="bad", traceback=["ValueError: bad"])
    outs, client = _capped_outputs(_message("stream", name="stderr", text=euro * MiB),
                                   _message("display_data", data=big_png, metadata={}), error)
    assert outs[0]["text"] == euro * (MiB // 3)   # 1048575 bytes: the next euro sign would not fit
    assert [o["output_type"] for o in outs] == ["stream", "error"]
    assert client.dropped_bytes[0] == 3 * MiB - 3 * (MiB // 3) + MiB + len("<Figure>")


def test_output_cap_after_a_clear_that_waits_for_the_next_output():
    """tqdm's pattern: the outputs are full, ``clear_output(wait=True)``, then more prints.
    The pending clear happens even when the next message would have been dropped."""
    line = "progress " + "z" * 100 + "\n"                     # 110 bytes
    outs, client = _capped_outputs(*[_message("stream", name="stdout", text=f"line {i}\n") for i in range(60)])
    assert len(outs) == execute.MAX_OUTPUTS and client.dropped_bytes[0] == 10 * len("line 50\n")
    client.clear_output(outs, _message("clear_output", wait=True), 0)
    for _ in range(5):
        client.output(outs, _message("stream", name="stdout", text=line), None, 0)
    assert _text(outs) == 5 * line and not client.clear_before_next_output
    assert (client.kept_bytes[0], client.dropped_bytes[0]) == (5 * len(line), 0)
    client.clear_output(outs, _message("clear_output", wait=True), 0)
    for _ in range(60):                                     # the cap counts from the clear on
        client.output(outs, _message("stream", name="stdout", text=line), None, 0)
    assert len(outs) == execute.MAX_OUTPUTS and client.dropped_bytes[0] == 10 * len(line)
    client.clear_output(outs, _message("clear_output", wait=True), 0)   # what was dropped is cleared too
    error = _message("error", ename="ValueError", evalue="bad", traceback=["ValueError: bad"])
    client.output(outs, error, None, 0)
    assert [o["output_type"] for o in outs] == ["error"] and client.dropped_bytes[0] == 0


def test_output_cap_applies_to_display_updates():
    """``h = display(..., display_id=True); h.update(big)`` rewrites the output in place, past ``output``."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
    cell, client = nb.cells[0], execute._CappedClient(nb)
    client.clear_before_next_output = False
    shown = {"metadata": {}, "transient": {"display_id": "d"}}
    client.process_message(_message("display_data", data={"text/plain": "small"}, **shown), cell, 0)
    client.process_message(_message("update_display_data", data={"text/plain": "x" * 1000}, **shown), cell, 0)
    assert cell.outputs[0]["data"] == {"text/plain": "x" * 1000} and client.kept_bytes[0] == 1000
    for _ in range(3):
        client.process_message(_message("update_display_data", data={"text/plain": "x" * (5 * MiB)}, **shown), cell, 0)
    assert cell.outputs[0]["data"] == {"text/plain": "x" * 1000}, "an update past the cap is dropped"
    assert client.kept_bytes[0] == 1000 and client.dropped_bytes[0] == 3 * 5 * MiB
    client.process_message(_message("update_display_data", data={"text/plain": "y" * MiB}, **shown), cell, 0)
    assert cell.outputs[0]["data"] == {"text/plain": "y" * MiB} and client.kept_bytes[0] == MiB


def test_output_cap_does_not_copy_a_huge_non_ascii_message_whole():
    """Counting and cutting 10 M euro signs (30 MB in UTF-8) encodes a piece at a time, not all of it."""
    import tracemalloc
    euro = "\u20ac"
    message = _message("stream", name="stdout", text=euro * 10**7)
    tracemalloc.start()
    try:
        outs, client = _capped_outputs(message)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * MiB, f"peak {peak / MiB:.0f} MiB to keep 1 MiB of a 30 MB message"
    assert outs[0]["text"] == euro * (MiB // 3) and client.dropped_bytes[0] == 3 * 10**7 - 3 * (MiB // 3)
    assert execute._size(euro * 10**7 + "\ud800") == 3 * 10**7 + 1   # a lone surrogate becomes '?'


@pytest.mark.slow
def test_a_huge_print_and_a_print_loop_are_capped_in_a_real_kernel(tmp_path):
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[code("print('x' * (5 * 2**20))"),
                                         code("for i in range(3000):\n    print('y' * 1000)"),
                                         code("print('small')")])
    runs = execute.run_notebook(nb, tmp_path, cell_timeout=60, notebook_timeout=120).runs
    assert [r.status for r in runs] == ["ok", "ok", "ok"]
    for run, printed in zip(runs, (5 * MiB + 1, 3000 * 1001)):
        kept, marker, rest = run.stdout.rpartition("\n[output truncated: ")
        assert marker and rest.endswith(" bytes dropped]\n"), run.stdout[-200:]
        assert len(kept) <= MiB and len(kept) + int(rest.split()[0]) == printed, (len(kept), rest)
    assert runs[2].stdout == "small\n"


def test_guard_restores_a_patched_function_and_reports_it():
    import numpy as np
    snap = guard.take_snapshot(["numpy"])
    original = np.allclose
    try:
        np.allclose = lambda *a, **k: True
        del np.isclose
        assert sorted(guard.check_and_restore(snap, emit=False)) == ["numpy.allclose", "numpy.isclose"]
        assert np.allclose is original and not np.allclose([1.0], [2.0])
        assert guard.check_and_restore(snap, emit=False) == []
    finally:
        np.allclose = original


def test_guard_finds_nothing_after_ordinary_torch_and_numpy_work():
    import numpy as np
    import torch
    import torch.nn.functional as F
    snap = guard.take_snapshot(["numpy", "torch", "torch.nn.functional"])
    torch.manual_seed(0)
    F.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3))
    np.testing.assert_allclose(np.ones(2), np.ones(2))
    assert guard.check_and_restore(snap, emit=False) == []


def test_csv_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "grades.csv"
    path.write_text("old grades\n")

    def crash(*args):
        raise OSError("disk full")
    monkeypatch.setattr(csvsafe.os, "replace", crash)
    with pytest.raises(OSError):
        grade.write_csv(path, [])
    assert path.read_text() == "old grades\n"
    assert [p.name for p in tmp_path.iterdir()] == ["grades.csv"]  # no temporary file left behind


def test_find_submissions_layouts(tmp_path):
    write_submissions(tmp_path)
    (tmp_path / "gina").mkdir()
    for name in ("a.ipynb", "b.ipynb"):  # two notebooks, neither named like the exercise
        nbformat.write(nbformat.v4.new_notebook(), tmp_path / "gina" / name)
    subs = {s.student: s for s in submission.find_submissions(tmp_path, f"{EXERCISE}.ipynb")}
    assert set(subs) == set(fake_submissions()) | {"erin", "frank", "gina", "hugo", "olga", "pete"}
    assert subs["erin"].path.name == f"{EXERCISE}.ipynb" and not subs["erin"].problem
    assert subs["frank"].problem == f"no_notebook: the folder frank/ is empty; expected {EXERCISE}.ipynb in it"
    assert subs["gina"].problem.startswith("missing:") and "a.ipynb, b.ipynb" in subs["gina"].problem


def test_files_that_are_not_notebooks_are_submissions_without_a_notebook(tmp_path):
    """A PDF, a .py or a folder of other files gets a row that says what was found; hidden
    entries do not; a file next to a student's notebook never takes the notebook's place."""
    write_submissions(tmp_path)
    (tmp_path / "perfect.html").write_text("<html>an export of perfect.ipynb</html>")  # sorts first
    subs = {s.student: s for s in submission.find_submissions(tmp_path, f"{EXERCISE}.ipynb")}
    assert not [name for name in subs if name.startswith(".")]
    expected = f"expected hugo.ipynb (a Jupyter notebook), or a folder hugo/ with {EXERCISE}.ipynb in it"
    assert subs["hugo"].path is None and subs["hugo"].problem == \
        f"no_notebook: hugo.pdf is not a notebook; {expected}"
    assert subs["olga"].problem.startswith("no_notebook: olga.py is not a notebook; expected olga.ipynb")
    assert subs["pete"].problem == (f"no_notebook: the folder pete/ holds no .ipynb file (found readme.txt); "
                                    f"expected {EXERCISE}.ipynb in it")
    assert subs["perfect"].path.name == "perfect.ipynb" and not subs["perfect"].problem
    assert subs["perfect (perfect.html)"].problem == \
        "duplicate: perfect.html is not a notebook and was not graded; 'perfect' also submitted perfect.ipynb"


def test_instructor_notebook_is_checked(tmp_path):
    nb = solution_notebook()
    nb.cells.append(copy.deepcopy(_cell(nb, "test_mul")))          # the same cell id too
    (tmp_path / "dup.ipynb").write_text(json.dumps(nb))
    with pytest.raises(ValueError, match="grade_id used twice"):
        grade.load_instructor(tmp_path / "dup.ipynb")


def test_cli_writes_csv_and_feedback_without_running_kernels(tmp_path):
    nbformat.write(solution_notebook(), tmp_path / f"{EXERCISE}.ipynb")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "zoe.ipynb").write_text("not json")
    (tmp_path / "in" / "hugo.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "in" / "pete").mkdir()
    (tmp_path / "in" / "pete" / "notes.txt").write_text("see attached")
    (tmp_path / "in" / ".DS_Store").write_bytes(b"\0")
    proc = subprocess.run([sys.executable, "-m", "grader", str(tmp_path / f"{EXERCISE}.ipynb"),
                           str(tmp_path / "in"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "grades.csv").open()))
    assert [(r["student"], r["points"], r["status"]) for r in rows if r["test_id"] == "TOTAL"] == \
        [("hugo", "0", "no_notebook"), ("pete", "0", "no_notebook"), ("zoe", "0", "unreadable")]
    assert "3 submissions: 0 graded, 3 not gradable (no_notebook 2, unreadable 1)" in proc.stdout, proc.stdout
    zoe = (tmp_path / "out" / "feedback" / "zoe.txt").read_text()
    assert "Score: 0 / 6" in zoe and "Grading stopped" not in zoe, zoe
    assert "Not graded: the grader could not read your file: zoe.ipynb is not JSON" in zoe, zoe
    hugo = (tmp_path / "out" / "feedback" / "hugo.txt").read_text()
    assert "Not graded: no notebook was found: hugo.pdf is not a notebook; expected hugo.ipynb" in hugo, hugo
    assert "none of the tests ran" in hugo, hugo
    pete = (tmp_path / "out" / "feedback" / "pete.txt").read_text()
    assert "pete/ holds no .ipynb file (found notes.txt)" in pete, pete
    bad = subprocess.run([sys.executable, "-m", "grader", str(tmp_path / "nope.ipynb"),
                          str(tmp_path / "in")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error:" in bad.stderr


# ---------------------------------------------------------------------------
# the batch: every kind of submission, in fresh kernels
# ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_exact_points(batch, student):
    total, status, tests = EXPECTED[student]
    g = batch[1][student]
    got = {t.test_id: (t.points, t.status) for t in g.tests}
    assert (g.points, g.status) == (total, status), f"{student}: {g.points} {g.status} ({g.detail}); {got}"
    for test_id, expected in tests.items():
        assert got[test_id] == expected, f"{student} {test_id}: {got[test_id]} != {expected}"
    assert g.max_points == 6


@pytest.mark.slow
@pytest.mark.parametrize("student, flags", [
    ("perfect", []), ("blank", []),
    ("missing", ["missing_solution:mul", "deleted_test:test_mul"]),
    ("duplicate", ["duplicate_grade_id:add"]),
    ("edited", ["edited_test:test_add", "deleted_test:test_add_hidden", "dropped_cells:1"]),
    ("patched", ["patched:numpy.allclose"]),
    ("patch_in_test", ["tampered:test_add", "tampered:test_add_hidden"]),
    ("syntax", ["answer_error:add"]), ("import_error", ["answer_error:add"]),
    ("leaker", ["answer_error:mul", "withheld:test_add_hidden", "withheld:test_mul", "withheld:mul"]),
])
def test_flags(batch, student, flags):
    assert batch[1][student].flags == flags


@pytest.mark.slow
def test_reasons_name_the_problem(batch):
    g = batch[1]
    assert "10 s cell time limit" in g["loop"].detail
    assert "kernel died" in g["crash"].detail
    assert "not JSON" in g["not_json"].detail
    assert "99_other" in g["wrong_exercise"].detail
    assert "SyntaxError" not in g["syntax"].tests[0].detail  # the test fails on the missing name
    assert g["syntax"].tests[0].detail.startswith("NameError")
    assert "numpy.allclose" in {t.test_id: t for t in g["patch_in_test"].tests}["test_add"].detail
    assert "not done yet" in g["blank"].tests[0].detail  # the stub's message reaches the student


@pytest.mark.slow
def test_csv_has_a_row_per_test_and_a_total_per_student(batch):
    rows = list(csv.DictReader((batch[0] / "out" / "grades.csv").open()))
    assert list(rows[0]) == grade.COLUMNS
    assert len(rows) == 4 * len(EXPECTED)
    totals = {r["student"]: float(r["points"]) for r in rows if r["test_id"] == "TOTAL"}
    assert totals == {s: float(e[0]) for s, e in EXPECTED.items()}
    edited = [r for r in rows if r["student"] == "edited" and r["test_id"] == "test_add"][0]
    assert edited["flags"] == "edited_test:test_add"


@pytest.mark.slow
def test_feedback_explains_but_never_shows_hidden_tests(batch):
    folder = batch[0] / "out" / "feedback"
    assert sorted(p.stem for p in folder.iterdir()) == sorted(EXPECTED)
    for path in folder.iterdir():
        text = path.read_text()
        assert "BEGIN HIDDEN" not in text and HIDDEN_LINE not in text, path.name
    partial = (folder / "partial.txt").read_text()
    assert "Score: 3 / 6" in partial and "mul(full(2, 3), 2) should be all 6" in partial
    assert "you changed test cell 'test_add'" in (folder / "edited.txt").read_text()


@pytest.mark.slow
def test_messages_that_quote_hidden_tests_are_withheld_from_feedback_and_csv(batch):
    """The student's own exception may carry the hidden test's source (In[-1]): it is replaced."""
    base, grades = batch
    leaker = {t.test_id: t for t in grades["leaker"].tests}
    for test_id in ("test_add_hidden", "test_mul"):
        assert leaker[test_id].detail == f"AssertionError: {grade.WITHHELD}", leaker[test_id].detail
    assert leaker["test_add"].detail == "AssertionError: nothing to see"   # an ordinary message is kept
    assert grades["leaker"].answer_errors == {"mul": f"RuntimeError: {grade.WITHHELD}"}
    for text in ((base / "out" / "grades.csv").read_text(), (base / "out" / "feedback" / "leaker.txt").read_text()):
        for secret in ("### BEGIN HIDDEN", "### END HIDDEN", "add(-1.5, 1.5)"):
            assert secret not in text, text
    assert "withheld" in (base / "out" / "feedback" / "leaker.txt").read_text()


@pytest.mark.slow
def test_errors_in_answer_cells_are_reported(batch):
    """A SyntaxError in an answer cell makes the test fail with a NameError: the student must see both."""
    base, grades = batch
    assert grades["syntax"].answer_errors == {"add": "SyntaxError: expected ':' (line 1)"}
    assert grades["import_error"].answer_errors == \
        {"add": "ModuleNotFoundError: No module named 'numpy_does_not_exist'"}
    assert grades["perfect"].answer_errors == {} and grades["blank"].answer_errors == {}
    rows = list(csv.DictReader((base / "out" / "grades.csv").open()))
    total = next(r for r in rows if r["student"] == "syntax" and r["test_id"] == "TOTAL")
    assert (total["status"], total["flags"]) == ("graded", "answer_error:add")
    assert total["detail"] == "answer cell 'add' raised SyntaxError: expected ':' (line 1)"
    feedback = (base / "out" / "feedback" / "syntax.txt").read_text()
    assert "your answer cell 'add' raised SyntaxError: expected ':' (line 1)" in feedback, feedback


@pytest.mark.slow
def test_regrading_gives_the_same_grades_one_job_at_a_time(batch, tmp_path):
    base, first = batch
    for student in ("partial", "crash", "syntax"):
        shutil.copy(base / "submitted" / f"{student}.ipynb", tmp_path)
    again = grade_all(base / f"{EXERCISE}.ipynb", tmp_path, jobs=1, limits=TEST_LIMITS)
    assert grade.csv_rows(again) == grade.csv_rows([first[g.student] for g in again])


@pytest.mark.slow
def test_notebook_time_limit_stops_the_run(tmp_path):
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[code("x = 1"), code("import time\ntime.sleep(60)"), code("y = 2")])
    runs = execute.run_notebook(nb, tmp_path, cell_timeout=30, notebook_timeout=3).runs
    assert [r.status for r in runs] == ["ok", "timeout", "not_run"]
    assert runs[1].limit == "notebook"



# ---------------------------------------------------------------------------
# the kit's own exercises: solutions full marks, released exercises zero
# ---------------------------------------------------------------------------

SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_kit_solution_scores_full_marks_and_exercise_zero(solution, tmp_path):
    exercise = ROOT / "exercises" / solution.name
    assert exercise.exists(), f"{exercise} is missing: run `make exercises`"
    shutil.copy(solution, tmp_path / "solution.ipynb")
    shutil.copy(exercise, tmp_path / "exercise.ipynb")
    grades = {g.student: g for g in grade_all(solution, tmp_path, jobs=2, limits=Limits(cell=120, notebook=300))}
    full, empty = grades["solution"], grades["exercise"]
    assert (full.status, full.flags) == ("graded", []), (full.detail, full.flags)
    assert full.points == full.max_points > 0, [(t.test_id, t.status, t.detail) for t in full.tests]
    assert empty.status == "graded" and empty.points == 0, [(t.test_id, t.status) for t in empty.tests]


def _nbgrader_release(notebooks: dict, course: Path) -> Path:
    """``nbgrader generate_assignment`` over ``notebooks`` (name -> notebook) in ONE run (each run
    costs seconds of start-up); returns the folder of the student versions."""
    source = course / "source" / "ps1"
    source.mkdir(parents=True)
    for name, nb in notebooks.items():
        nbformat.write(nb, source / name)
    proc = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", "ps1", "--force",
                           "--CourseDirectory.root=" + str(course), "--CourseDirectory.db_url=sqlite:///"
                           + str(course / "gradebook.db")],
                          capture_output=True, text=True, timeout=300, cwd=course,
                          env=dict(os.environ, COURSE_DEVICE="cpu",  # nbgrader runs `alembic` from PATH
                                   PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return course / "release" / "ps1"


@pytest.fixture(scope="module")
def nbgrader_released(tmp_path_factory) -> Path:
    """nbgrader's student versions of every kit solution."""
    pytest.importorskip("nbgrader", reason="nbgrader is optional: pip install -e '.[nbgrader]'")
    return _nbgrader_release({p.name: nbformat.read(p, as_version=4) for p in SOLUTIONS},
                             tmp_path_factory.mktemp("nbgrader"))


def _released_as_nbgrader_does(solution: nbformat.NotebookNode, released: Path) -> None:
    text = released.read_text()
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    ours = student_notebook(solution)
    theirs = nbformat.reads(text, as_version=4)
    assert [submission.grade_id(c) for c in theirs.cells] == [submission.grade_id(c) for c in ours.cells], \
        "nbgrader and grader.build release different graded cells"


@pytest.mark.slow
@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_kit_solution_is_a_valid_nbgrader_source(solution, nbgrader_released):
    """nbgrader (an optional extra) generates the student version from our solution notebooks."""
    _released_as_nbgrader_does(nbformat.read(solution, as_version=4), nbgrader_released / solution.name)


def test_fixture_is_a_valid_nbgrader_source(tmp_path):
    """The fast check (not marked slow): nbgrader releases the fixture, in a run of its own."""
    pytest.importorskip("nbgrader", reason="nbgrader is optional: pip install -e '.[nbgrader]'")
    _released_as_nbgrader_does(solution_notebook(), _nbgrader_release({f"{EXERCISE}.ipynb": solution_notebook()},
                                                                       tmp_path) / f"{EXERCISE}.ipynb")


def test_a_kernel_that_cannot_start_is_reported_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setattr(execute, "KERNEL", "no-such-kernel")
    nbformat.write(solution_notebook(), tmp_path / f"{EXERCISE}.ipynb")
    (tmp_path / "in").mkdir()
    nbformat.write(fake_submissions()["perfect"], tmp_path / "in" / "amy.ipynb")
    (tmp_path / "in" / "bob.ipynb").write_text("not json")
    grades = grade_all(tmp_path / f"{EXERCISE}.ipynb", tmp_path / "in", jobs=2, limits=TEST_LIMITS)
    assert [(g.student, g.status, g.points) for g in grades] == [("amy", "grader_error", 0), ("bob", "unreadable", 0)]
    assert "kernel did not start" in grades[0].detail


def test_guard_adopts_a_library_rewrapping_its_own_function():
    import torch
    snap = guard.take_snapshot(["torch"])
    original = torch.manual_seed
    try:
        torch.manual_seed = torch._disable_dynamo(original)  # what `import torch._dynamo` does
        assert guard.check_and_restore(snap, emit=False) == []
        torch.manual_seed = lambda seed: None  # what a student might do
        assert guard.check_and_restore(snap, emit=False) == ["torch.manual_seed"]
    finally:
        torch.manual_seed = original


def _synthetic_runs(nb, **by_role_and_test):
    """A CellRun per cell: every cell ok, guards reporting nothing, except the ones named
    ``ROLE__TEST`` (role 'before'/'after'/'test') which get the given CellRun."""
    runs = []
    for cell in nb.cells:
        grader = cell.metadata.get(execute.ROLE_KEY, {})
        key = f"{grader['role']}__{grader['test_id']}" if grader else f"test__{submission.grade_id(cell)}"
        clean = '{"course_kit_guard": []}\n' if grader.get("role") in ("before", "after") else ""
        runs.append(by_role_and_test.get(key, execute.CellRun("ok", stdout=clean)))
    return runs


def test_score_voids_a_test_whose_guard_was_removed_and_stops_at_a_dead_kernel():
    nb = execute.instrument(solution_notebook(), ["numpy"])
    runs = _synthetic_runs(nb, before__test_add=execute.CellRun("error", "NameError", "name '_course_kit_guard'"),
                           test__test_add_hidden=execute.CellRun("died"))
    after = False
    for i, cell in enumerate(nb.cells):  # everything after the dead kernel never ran
        after = after or runs[i].status == "died"
        if after and runs[i].status != "died":
            runs[i] = execute.CellRun()
    tests = grade.test_cells(solution_notebook())
    status, detail, flags = grade.score(nb, runs, tests, TEST_LIMITS)
    got = [(t.test_id, t.points, t.status) for t in tests]
    assert got == [("test_add", 0, "tampered"), ("test_add_hidden", 0, "kernel_died"), ("test_mul", 0, "not_run")]
    assert status == "kernel_died" and "test_add_hidden" in detail and flags == ["tampered:test_add"]
    feedback = grade.feedback_text(grade.Grade("amy", EXERCISE, tests, status, detail, flags))
    assert "the grader's check around it" in feedback and "tampered:" not in feedback, feedback


@pytest.mark.parametrize("role, run, expected", [
    ("after", execute.CellRun("error", "MemoryError", ""), ("unverified", ["unverified:test_add"])),
    ("before", execute.CellRun("error", "RecursionError", "maximum recursion depth exceeded"),
     ("unverified", ["unverified:test_add"])),
    ("after", execute.CellRun("ok", stdout="no report\n"), ("tampered", ["tampered:test_add"])),
    ("after", execute.CellRun("error", "AttributeError",
                              "module 'grader.guard' has no attribute 'SNAPSHOT'"),
     ("tampered", ["tampered:test_add"])),
    ("before", execute.CellRun("error", "RuntimeError", "no snapshot: the grader's preamble cell did not run"),
     ("tampered", ["tampered:test_add"])),
])
def test_score_tells_a_check_that_raised_from_a_guard_that_was_removed(role, run, expected):
    """A check that raised (out of memory, say) leaves the pass unverified, in neutral words;
    only a guard that is gone or replaced makes the test ``tampered``. Both are flagged."""
    nb = execute.instrument(solution_notebook(), ["numpy"])
    tests = grade.test_cells(solution_notebook())
    status, detail, flags = grade.score(nb, _synthetic_runs(nb, **{f"{role}__test_add": run}), tests, TEST_LIMITS)
    assert (tests[0].status, flags) == expected and tests[0].points == 0, (tests[0], flags)
    assert [t.points for t in tests[1:]] == [2, 3] and status == "graded"
    feedback = grade.feedback_text(grade.Grade("amy", EXERCISE, tests, status, detail, flags))
    if expected[0] == "unverified":
        assert "could not be counted" in tests[0].detail and run.ename in tests[0].detail
        assert "tamper" not in feedback and "remove" not in feedback and "replace" not in feedback, feedback
        assert "the grader could not finish checking test 'test_add'" in feedback, feedback


def test_score_keeps_a_failure_whose_check_raised():
    """Only a pass needs the check: a failed test keeps its own status and message."""
    nb = execute.instrument(solution_notebook(), ["numpy"])
    runs = _synthetic_runs(nb, test__test_add=execute.CellRun("error", "AssertionError", "add(1, 2) gave -1"),
                           after__test_add=execute.CellRun("error", "MemoryError", ""))
    tests = grade.test_cells(solution_notebook())
    _, _, flags = grade.score(nb, runs, tests, TEST_LIMITS)
    assert (tests[0].status, tests[0].detail, flags) == ("failed", "AssertionError: add(1, 2) gave -1", [])


def test_score_voids_a_pass_whose_after_check_never_finished():
    """Patch, pass, then kill the kernel during the grader's check: the pass cannot be vouched for."""
    nb = execute.instrument(solution_notebook(), ["numpy"])
    runs = _synthetic_runs(nb, after__test_add=execute.CellRun("died"))
    stopped = False
    for i, cell in enumerate(nb.cells):
        stopped = stopped or runs[i].status == "died"
        if stopped and runs[i].status != "died":
            runs[i] = execute.CellRun()
    tests = grade.test_cells(solution_notebook())
    status, detail, flags = grade.score(nb, runs, tests, TEST_LIMITS)
    assert [(t.test_id, t.points, t.status) for t in tests] == [
        ("test_add", 0, "unverified"), ("test_add_hidden", 0, "not_run"), ("test_mul", 0, "not_run")]
    assert status == "kernel_died" and flags == ["unverified:test_add"]
    assert "could not be counted" in tests[0].detail
    feedback = grade.feedback_text(grade.Grade("amy", EXERCISE, tests, status, detail, flags))
    assert "the grader could not finish checking test 'test_add'" in feedback, feedback
    assert "unverified:" not in feedback and "tampered" not in feedback, feedback


def test_score_flags_what_the_answers_patched_and_passes_clean_tests():
    nb = execute.instrument(solution_notebook(), ["numpy"])
    patched = execute.CellRun("ok", stdout='{"course_kit_guard": ["numpy.allclose"]}\n')
    runs = _synthetic_runs(nb, before__test_add=patched, before__test_mul=patched)
    tests = grade.test_cells(solution_notebook())
    status, _, flags = grade.score(nb, runs, tests, TEST_LIMITS)
    assert [t.points for t in tests] == [1, 2, 3] and status == "graded"
    assert flags == ["patched:numpy.allclose"]


def test_answer_errors_name_the_cell_and_the_error_line():
    nb = execute.instrument(solution_notebook(), ["numpy"])
    syntax_error = execute.CellRun("error", "SyntaxError", "expected ':' (2031782527.py, line 2)")
    runs = _synthetic_runs(nb, test__add=syntax_error,
                           test__test_add=execute.CellRun("error", "NameError", "name 'add' is not defined"))
    assert grade.answer_errors(nb, runs) == {"add": "SyntaxError: expected ':' (line 2)"}  # test cells are not answers
    assert grade.answer_errors(nb, _synthetic_runs(nb)) == {}


def test_secret_lines_are_the_hidden_tests_and_the_model_answers():
    secrets = grade.secret_lines(solution_notebook())
    assert HIDDEN_LINE + ", 'a hidden check failed'" in secrets
    assert "return np.multiply(a, b)" in secrets
    assert "import numpy as np" not in secrets          # shown to students anyway
    assert set(grade.MARKERS) <= set(secrets)


@pytest.mark.parametrize("message, withheld", [
    ("AssertionError: ### BEGIN HIDDEN TESTS assert x", True),
    ("AssertionError: ...### END SOLUTION", True),
    ("ValueError: ### BEGIN SOLUTION", True),
    ("ValueError: ### END HIDDEN TESTS", True),
    (f"AssertionError: look: {HIDDEN_LINE}, 'a hidden check failed'", True),
    ("RuntimeError: x = 1 return np.multiply(a, b) y = 2", True),
    ("AssertionError: a hidden check failed", False),  # the hidden test's own message is for the student
    ("NotImplementedError: exercise 'add' is not done yet: replace this line with your code "
     "(the lesson is notebooks/00_fixture.ipynb)", False),
    ("NameError: name 'add' is not defined", False),
])
def test_withhold_replaces_messages_that_quote_hidden_code(message, withheld):
    secrets = grade.secret_lines(solution_notebook())
    expected = message.split(":", 1)[0] + ": " + grade.WITHHELD if withheld else message
    assert grade.withhold(message, secrets) == expected


def _grade(student, status):
    return grade.Grade(student, EXERCISE, [], status)


def test_summary_tells_graded_from_not_gradable():
    grades = [_grade("a", "graded"), _grade("b", "graded"), _grade("c", "timeout"), _grade("d", "kernel_died"),
              _grade("e", "unreadable"), _grade("f", "wrong_exercise"), _grade("g", "no_notebook"),
              _grade("h", "no_notebook")]
    assert grade.summary(grades) == ("8 submissions: 4 graded (of which timeout 1, kernel_died 1), "
                                     "4 not gradable (no_notebook 2, unreadable 1, wrong_exercise 1)")
    assert grade.summary([_grade("a", "graded")]) == "1 submission: 1 graded, 0 not gradable"


def test_feedback_of_a_submission_that_never_ran_says_why():
    feedback = grade.feedback_text(grade.Grade("leo", EXERCISE, grade.test_cells(solution_notebook()),
                                               "wrong_exercise", "the notebook belongs to notebooks/99_other.ipynb"))
    assert "Grading stopped" not in feedback
    assert "Not graded: this is not this exercise's notebook: the notebook belongs to notebooks/99_other" in feedback
    stopped = grade.feedback_text(grade.Grade("erin", EXERCISE, [], "timeout", "cell 'mul' ran past the limit"))
    assert "Grading stopped: timeout: cell 'mul' ran past the limit" in stopped


def test_kernel_gets_the_checkout_on_pythonpath_only_when_course_lib_needs_it(monkeypatch):
    """The checkout also holds solutions/: a kernel that imports course_lib without it does not get it."""
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setattr(execute, "_imports_checkout", lambda python_path: True)
    assert execute.kernel_env()["PYTHONPATH"] == "/elsewhere"
    monkeypatch.setattr(execute, "_imports_checkout", lambda python_path: False)
    assert execute.kernel_env()["PYTHONPATH"] == os.pathsep.join([str(execute.CHECKOUT), "/elsewhere"])
    assert execute.kernel_env()["COURSE_DEVICE"] == os.environ.get("COURSE_DEVICE", "cpu")


@pytest.mark.slow
def test_the_kernel_imports_this_checkouts_course_lib(tmp_path):
    cell = nbformat.v4.new_code_cell("import os, course_lib\nprint(course_lib.__file__)\n"
                                     "print(os.environ.get('PYTHONPATH', ''))")
    run, = execute.run_notebook(nbformat.v4.new_notebook(cells=[cell]), tmp_path, 60, 120).runs
    path, python_path = run.stdout.splitlines()
    assert Path(path).resolve() == (execute.CHECKOUT / "course_lib" / "__init__.py").resolve()
    installed = execute._imports_checkout(os.environ.get("PYTHONPATH", ""))
    assert (str(execute.CHECKOUT) in python_path.split(os.pathsep)) == (not installed), (python_path, installed)


def test_instructors_guide_step_4_describes_the_csv_as_written():
    text = (ROOT / "docs" / "instructors.md").read_text()
    step = " ".join(text.split("4. **Read**")[1].split("5. **Return**")[0].split())
    assert f"`{','.join(grade.COLUMNS)}`" in step
    for status in (*grade.TEST_STATUSES, *grade.RAN_STATUSES, *grade.NOT_GRADED):
        assert f"`{status}`" in step, status
    for kind in grade.FLAG_NOTES:
        assert f"`{kind}" in step, kind
    assert "`patched:NAME` is on the `TOTAL` row" in step


# ---- behaviour pinned down by mutation testing

def test_test_cells_mark_the_ones_with_hidden_checks():
    tests = grade.test_cells(solution_notebook())
    assert [(t.test_id, t.max_points, t.hidden) for t in tests] == [
        ("test_add", 1, False), ("test_add_hidden", 2, True), ("test_mul", 3, False)]
    feedback = grade.feedback_text(grade.Grade("amy", EXERCISE, tests, "graded"))
    assert "test_add_hidden (includes hidden checks)" in feedback and "test_mul (includes" not in feedback, feedback


def test_score_tells_an_assertion_from_another_exception():
    nb = execute.instrument(solution_notebook(), ["numpy"])
    runs = _synthetic_runs(nb, test__test_add=execute.CellRun("error", "NameError", "name 'add' is not defined"),
                           test__test_mul=execute.CellRun("error", "AssertionError", "mul(full(2, 3), 2)"))
    tests = grade.test_cells(solution_notebook())
    assert grade.score(nb, runs, tests, TEST_LIMITS)[0] == "graded"
    assert [(t.status, t.points, t.detail) for t in tests] == [
        ("error", 0, "NameError: name 'add' is not defined"), ("passed", 2, ""),
        ("failed", 0, "AssertionError: mul(full(2, 3), 2)")]


def test_stop_detail_names_the_limit_that_was_hit():
    cell, limits = _cell(solution_notebook(), "mul"), Limits(cell=7, notebook=99)
    assert grade._stop_detail(execute.CellRun("timeout", limit="cell"), cell, limits, True) == \
        "cell 'mul' ran past the 7 s cell time limit; the grader went on in a fresh kernel without it"
    assert grade._stop_detail(execute.CellRun("timeout", limit="notebook"), cell, limits, False) == \
        "cell 'mul' ran past the 99 s notebook time limit; the tests after it score 0"


def test_secret_lines_leave_out_what_students_see_short_lines_and_numbers():
    nb = solution_notebook()
    shown = _cell(nb, "test_add").source.splitlines()[1]          # a visible test, repeated in a hidden block
    _cell(nb, "test_mul").source += ("\n### BEGIN HIDDEN TESTS\n" + "\n".join(
        [shown, "assert ok(1)", "assert ok()", "[1.5, 2.5, 3.5, 4.5]"]) + "\n### END HIDDEN TESTS")
    secrets = grade.secret_lines(nb)
    assert "assert ok(1)" in secrets                                # 12 characters: long enough to give away
    assert "assert ok()" not in secrets and "[1.5, 2.5, 3.5, 4.5]" not in secrets
    assert shown not in secrets, "a line the students' copy shows anyway is no secret"


def test_withhold_hides_a_message_with_no_exception_name_and_sees_through_whitespace():
    secrets = grade.secret_lines(solution_notebook())
    assert grade.withhold("### BEGIN HIDDEN TESTS\nassert x", secrets) == grade.WITHHELD
    assert grade.withhold("AssertionError: look\n    return   np.multiply(a, b)", secrets) == \
        f"AssertionError: {grade.WITHHELD}"


def test_details_are_squashed_and_cut_to_max_detail():
    assert grade._short("a\n   b") == "a b"
    long = grade._short("word " * 200)
    assert len(long) == grade.MAX_DETAIL and long.endswith("...")


def test_grade_all_and_the_cli_refuse_bad_arguments_before_running_anything(tmp_path, capsys):
    with pytest.raises(ValueError, match="jobs must be at least 1, got 0"):
        grade_all(tmp_path / "nope.ipynb", tmp_path, jobs=0)
    with pytest.raises(ValueError, match="threads must be 0 .* or more, got -1"):
        grade_all(tmp_path / "nope.ipynb", tmp_path, limits=Limits(threads=-1))
    nb = solution_notebook()
    nb.cells = [c for c in nb.cells if not submission.grade_id(c) or not submission.grade_id(c).startswith("test_")]
    nbformat.write(nb, tmp_path / "no_tests.ipynb")
    with pytest.raises(ValueError, match="no test cells"):
        grade.load_instructor(tmp_path / "no_tests.ipynb")
    (tmp_path / "in").mkdir()
    assert grade.main([str(tmp_path / "no_tests.ipynb"), str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 2
    assert "error: " in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_guard_restores_submodules_builtins_and_sys_modules(capsys):
    import builtins

    import numpy as np
    import numpy.testing   # noqa: F401  numpy 2 loads it lazily: the snapshot covers loaded modules only
    snap = guard.take_snapshot(["numpy"])
    linalg, assert_allclose = np.linalg, np.testing.assert_allclose
    real_sorted, numpy_module = sorted, sys.modules["numpy"]
    try:
        np.linalg = types.SimpleNamespace()
        np.testing.assert_allclose = lambda *a, **k: None
        builtins.sorted = lambda *a, **k: []
        sys.modules["numpy"] = types.ModuleType("numpy")
        changed = guard.check_and_restore(snap)
        restored = (np.linalg, np.testing.assert_allclose, builtins.sorted, sys.modules["numpy"])
    finally:
        np.linalg, np.testing.assert_allclose, builtins.sorted = linalg, assert_allclose, real_sorted
        sys.modules["numpy"] = numpy_module
    assert sorted(changed) == ["builtins.sorted", "numpy.linalg", "numpy.testing.assert_allclose",
                               "sys.modules['numpy']"]
    assert restored == (linalg, assert_allclose, real_sorted, numpy_module)
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"course_kit_guard": changed}
    with pytest.raises(RuntimeError, match="no snapshot"):
        guard.check_and_restore({})


def test_guard_restores_ipythons_cell_transformers(monkeypatch):
    names = ("input_transformers_cleanup", "input_transformers_post", "ast_transformers")
    shell = types.SimpleNamespace(**{name: [] for name in names})
    monkeypatch.setattr(guard, "get_ipython", lambda: shell, raising=False)
    snap = guard.take_snapshot([])
    for name in names:
        getattr(shell, name).append(lambda lines: ["assert True"])
    assert guard.check_and_restore(snap, emit=False) == [f"IPython {name}" for name in names]
    assert [getattr(shell, name) for name in names] == [[], [], []]


def test_forget_volatile_stops_tracking_only_what_already_changed():
    import numpy as np
    snap = guard.take_snapshot(["numpy"])
    original = np.allclose
    try:
        np.allclose = lambda *a, **k: True      # as the kernel rebinds builtins.input for each request
        assert guard.forget_volatile(snap) == ["numpy.allclose"]
        assert guard.check_and_restore(snap, emit=False) == []
        np.isclose, isclose = None, np.isclose
        assert guard.check_and_restore(snap, emit=False) == ["numpy.isclose"] and np.isclose is isclose
    finally:
        np.allclose = original


def test_test_modules_ignores_answer_cells_and_relative_imports():
    nb = solution_notebook()
    _cell(nb, "add").source = "import json\n" + _cell(nb, "add").source
    _cell(nb, "test_mul").source = "from . import sibling\nfrom os import path\n" + _cell(nb, "test_mul").source
    assert execute.test_modules(nb) == ["numpy", "os", "sys", "warnings"]


def test_kernel_env_keeps_a_chosen_device_and_defaults_to_the_cpu(monkeypatch):
    monkeypatch.setattr(execute, "_imports_checkout", lambda python_path: True)
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    assert execute.kernel_env()["COURSE_DEVICE"] == "cuda"
    monkeypatch.delenv("COURSE_DEVICE")
    env = execute.kernel_env()
    assert (env["COURSE_DEVICE"], env["MPLBACKEND"]) == ("cpu", "Agg")


def test_imports_checkout_is_false_for_another_course_lib(tmp_path):
    (tmp_path / "course_lib").mkdir()
    (tmp_path / "course_lib" / "__init__.py").write_text("")
    assert execute._imports_checkout(str(tmp_path)) is False


@pytest.mark.slow
def test_a_notebook_past_its_deadline_runs_no_further_cell(tmp_path, monkeypatch):
    """The clock says the notebook's time is up after the first cell: the next one is not started."""
    clock = chain([0.0, 0.0], repeat(1000.0))
    monkeypatch.setattr(execute, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[code("x = 1"), code("y = 2"), code("z = 3")])
    runs = execute.run_notebook(nb, tmp_path, cell_timeout=30, notebook_timeout=100).runs
    assert [(r.status, r.limit) for r in runs] == [("ok", ""), ("timeout", "notebook"), ("not_run", "")]


def test_folder_submissions_skip_checkpoints_and_refuse_two_copies(tmp_path):
    nb, name = fake_submissions()["perfect"], f"{EXERCISE}.ipynb"
    (tmp_path / "carl" / ".ipynb_checkpoints").mkdir(parents=True)
    nbformat.write(nb, tmp_path / "carl" / "draft.ipynb")
    nbformat.write(nb, tmp_path / "carl" / ".ipynb_checkpoints" / "draft-checkpoint.ipynb")
    for part in ("a", "b"):
        (tmp_path / "dan" / part).mkdir(parents=True)
        nbformat.write(nb, tmp_path / "dan" / part / name)
    subs = {s.student: s for s in submission.find_submissions(tmp_path, name)}
    assert subs["carl"].path == tmp_path / "carl" / "draft.ipynb" and not subs["carl"].problem
    assert subs["dan"].path is None and subs["dan"].problem == \
        f"missing: expected one {name} in dan/, found a/{name}, b/{name}"


def test_merge_of_a_duplicated_answer_uses_the_first_copy():
    merged = submission.merge(solution_notebook(), fake_submissions()["duplicate"])
    assert merged.flags == ["duplicate_grade_id:add"] and _cell(merged.nb, "add").source == BAD_ADD


def test_score_reads_the_guards_last_report_and_refuses_a_failed_preamble():
    """A line printed before the guard's own report (say, by a student's thread) does not count."""
    nb = execute.instrument(solution_notebook(), ["numpy"])
    forged = execute.CellRun("ok", stdout='{"course_kit_guard": []}\n{"course_kit_guard": ["numpy.allclose"]}\n')
    tests = grade.test_cells(solution_notebook())
    _, _, flags = grade.score(nb, _synthetic_runs(nb, after__test_add=forged), tests, TEST_LIMITS)
    assert (tests[0].status, flags) == ("tampered", ["tampered:test_add"])
    runs = _synthetic_runs(nb)
    runs[0] = execute.CellRun("error", "ModuleNotFoundError", "No module named 'course_lib'")
    with pytest.raises(RuntimeError, match="preamble failed before any student code ran"):
        grade.score(nb, runs, grade.test_cells(solution_notebook()), TEST_LIMITS)


def test_tests_not_reached_say_why():
    nb = execute.instrument(solution_notebook(), ["numpy"])
    runs = _synthetic_runs(nb, test__mul=execute.CellRun("timeout", limit="cell"))
    stop = next(i for i, run in enumerate(runs) if run.status == "timeout")
    runs[stop + 1:] = [execute.CellRun() for _ in runs[stop + 1:]]
    tests = grade.test_cells(solution_notebook())
    status, detail, _ = grade.score(nb, runs, tests, TEST_LIMITS)
    assert status == "timeout" and [t.status for t in tests] == ["passed", "passed", "not_run"]
    assert tests[2].detail == f"not reached: {detail}" and "cell 'mul' ran past the 10 s cell" in detail


def test_merge_flags_a_shortened_test_but_not_whitespace():
    student = student_notebook(solution_notebook())
    _cell(student, "test_add").source = "import numpy as np"          # its assertion deleted
    _cell(student, "test_mul").source = "\n" + _cell(student, "test_mul").source.replace("\n", "   \n") + "\n\n"
    assert submission.merge(solution_notebook(), student).flags == ["edited_test:test_add"]


def test_a_missing_submissions_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"submissions folder {tmp_path / 'nope'} does not exist"):
        submission.find_submissions(tmp_path / "nope", f"{EXERCISE}.ipynb")


def test_a_report_from_a_check_that_raised_is_not_believed():
    """Output of a guard cell that failed (a thread of the student's may print anything) is no report."""
    nb = execute.instrument(solution_notebook(), ["numpy"])
    raised = execute.CellRun("error", "MemoryError", "", stdout='{"course_kit_guard": []}\n')
    tests = grade.test_cells(solution_notebook())
    _, _, flags = grade.score(nb, _synthetic_runs(nb, after__test_add=raised), tests, TEST_LIMITS)
    assert (tests[0].status, tests[0].points, flags) == ("unverified", 0, ["unverified:test_add"])


def test_output_cap_keeps_an_error_past_the_caps_and_restarts_after_a_clear_now():
    error = _message("error", ename="ValueError", evalue="bad", traceback=["ValueError: bad"])
    outs, client = _capped_outputs(*[_message("stream", name="stdout", text=f"line {i}\n") for i in range(60)], error)
    assert len(outs) == execute.MAX_OUTPUTS + 1 and outs[-1]["output_type"] == "error"
    outs, client = _capped_outputs(_message("stream", name="stdout", text="x" * (2 * MiB)), error)
    assert [o["output_type"] for o in outs] == ["stream", "error"]
    client.clear_output(outs, _message("clear_output", wait=False), 0)     # cleared at once
    client.output(outs, _message("stream", name="stdout", text="after\n"), None, 0)
    assert _text(outs) == "after\n" and (client.kept_bytes[0], client.dropped_bytes[0]) == (6, 0)


@pytest.mark.slow
def test_after_a_cell_past_its_limit_a_fresh_kernel_reruns_the_cells_before_and_goes_on(tmp_path):
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[code("x = 41"), code("import time\ntime.sleep(20)\nx = 0"),
                                         code("import os\nprint(x + 1, os.getpid())")])
    execution = execute.run_notebook(nb, tmp_path, cell_timeout=1, notebook_timeout=120)
    assert [(r.status, r.limit) for r in execution.runs] == [("ok", ""), ("timeout", "cell"), ("ok", "")]
    # x comes from the re-run of the first cell, not from the stuck one
    assert execution.restarts == 1 and execution.runs[2].stdout.split()[0] == "42"


@pytest.mark.slow
def test_kernel_restarts_are_bounded(tmp_path):
    """Every cell dies: after MAX_RESTARTS fresh kernels the rest is not run."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nos._exit(1)") for _ in range(6)])
    execution = execute.run_notebook(nb, tmp_path, cell_timeout=30, notebook_timeout=120)
    assert execution.restarts == execute.MAX_RESTARTS
    assert [r.status for r in execution.runs] == ["died"] * (execute.MAX_RESTARTS + 1) + \
        ["not_run"] * (5 - execute.MAX_RESTARTS)


@pytest.mark.slow
def test_patching_a_lazily_loaded_submodule_is_caught(tmp_path):
    """numpy loads numpy.testing on first use, so a kernel that has only imported numpy has
    not loaded it: the guard's snapshot must still cover ``np.testing.assert_allclose``, which
    the test cell reaches through ``np``, or an answer that replaces it scores full marks."""
    instructor = solution_notebook()
    _cell(instructor, "test_add").source = "import numpy as np\nnp.testing.assert_allclose(add(1.0, 2.0), 3.0)"
    assert "numpy.testing" in execute.test_modules(instructor)
    nbformat.write(instructor, tmp_path / f"{EXERCISE}.ipynb")
    (tmp_path / "in").mkdir()
    cheat = answered(student_notebook(instructor),
                     add="np.testing.assert_allclose = lambda *a, **k: None\n" + BAD_ADD, mul=GOOD_MUL)
    nbformat.write(cheat, tmp_path / "in" / "mallory.ipynb")
    g, = grade_all(tmp_path / f"{EXERCISE}.ipynb", tmp_path / "in", jobs=1, limits=TEST_LIMITS)
    tests = {t.test_id: t for t in g.tests}
    assert g.flags == ["patched:numpy.testing.assert_allclose"], g.flags
    assert (tests["test_add"].points, tests["test_add"].status) == (0, "failed"), tests["test_add"]
    assert (tests["test_mul"].points, tests["test_mul"].status) == (3, "passed")


def test_a_timed_cell_runs_alone_across_kernels():
    """Speed-graded cells wait for the cells running elsewhere, and hold new ones back until done."""
    gate, events, lock = execute.Gate(), [], threading.Lock()

    def cell(name: str, timed: bool, seconds: float, delay: float = 0.0):
        time.sleep(delay)
        with gate.cell(timed):
            with lock:
                events.append(f"{name} start")
            time.sleep(seconds)
            with lock:
                events.append(f"{name} end")

    threads = [threading.Thread(target=cell, args=("answer", False, 0.3)),
               threading.Thread(target=cell, args=("timed", True, 0.3, 0.05)),
               threading.Thread(target=cell, args=("other", False, 0.05, 0.1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert events == ["answer start", "answer end", "timed start", "timed end", "other start", "other end"]


def test_only_cells_marked_timed_take_the_gate_alone():
    code = nbformat.v4.new_code_cell
    assert execute.is_timed(code("x", metadata={"course_kit": {"timed": True}}))
    assert not execute.is_timed(code("x", metadata={"course_kit": {"timed": "yes"}}))
    assert not execute.is_timed(code("x"))


@pytest.mark.parametrize("alive, expected", [(True, ("timeout", "cell")), (False, ("died", ""))])
def test_a_dead_kernel_error_from_a_live_kernel_is_a_time_out(tmp_path, alive, expected):
    """Under load nbclient reports a silent cell with a missed heartbeat as a dead kernel: only a
    kernel whose process ended died; a live one ran past its time limit."""
    class Manager:
        async def is_alive(self):
            return alive

    class Client:
        km, timeout = Manager(), 0

        async def async_execute_cell(self, *args, **kwargs):
            raise DeadKernelError("Kernel died")

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("while True:\n    pass")])
    runs = [execute.CellRun()]
    plan = execute._Plan(None, None, [], cell_timeout=10, notebook_timeout=100, deadline=time.monotonic() + 100)
    assert asyncio.run(execute._run_cells(Client(), nb, runs, 0, plan, {})) == 0
    assert (runs[0].status, runs[0].limit) == expected


@pytest.mark.slow
def test_a_missed_heartbeat_does_not_kill_a_running_cell(tmp_path, monkeypatch):
    """On a loaded machine the heartbeat answers late; only the kernel's process says it died."""
    from jupyter_client.asynchronous.client import AsyncKernelClient

    async def never_beating(self):
        return False
    monkeypatch.setattr(AsyncKernelClient, "_async_is_alive", never_beating, raising=False)
    monkeypatch.setattr(AsyncKernelClient, "is_alive", never_beating)
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[code("import time\ntime.sleep(2.5)\nprint('done')")])
    run, = execute.run_notebook(nb, tmp_path, 30, 120).runs
    assert (run.status, run.stdout) == ("ok", "done\n")


def test_kernels_graded_at_once_share_the_cores(monkeypatch, tmp_path):
    """-j kernels each start their share of threads: two kernels each with a thread per core
    run small torch calls tens of times slower (threads_env). A variable the instructor set is kept."""
    monkeypatch.setattr(execute.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert [execute.cores_per_process(n) for n in (1, 2, 3, 8)] == [4, 2, 1, 1]
    for name in execute.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not set(execute.THREAD_VARIABLES) & set(execute.kernel_env())           # 0: the libraries choose
    assert {name: execute.kernel_env(2)[name] for name in execute.THREAD_VARIABLES} == \
        dict.fromkeys(execute.THREAD_VARIABLES, "2")
    assert execute.kernel_env(16)["OMP_NUM_THREADS"] == "16"
    assert execute.kernel_env(16)["COURSE_LIB_THREADS"] == "8"                     # course_lib's own cap
    from course_lib.machinery.threads import MAX_THREADS
    assert execute.COURSE_LIB_MAX_THREADS == MAX_THREADS                           # the grader's copy of it
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert execute.kernel_env(2)["OMP_NUM_THREADS"] == "3"

    asked = []
    monkeypatch.setattr(grade, "run_notebook", lambda *args, **kwargs: asked.append(kwargs["threads"]) or 1 / 0)
    nbformat.write(solution_notebook(), tmp_path / f"{EXERCISE}.ipynb")
    (tmp_path / "in").mkdir()
    for student in ("amy", "bob"):
        nbformat.write(fake_submissions()["perfect"], tmp_path / "in" / f"{student}.ipynb")
    grade_all(tmp_path / f"{EXERCISE}.ipynb", tmp_path / "in", jobs=2, limits=TEST_LIMITS)
    grade_all(tmp_path / f"{EXERCISE}.ipynb", tmp_path / "in", jobs=2, limits=Limits(threads=1))
    grade_all(tmp_path / f"{EXERCISE}.ipynb", tmp_path / "in", jobs=4)   # 2 submissions: 2 kernels at once
    grade.main([str(tmp_path / f"{EXERCISE}.ipynb"), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                "-j", "1", "--threads", "3"])
    assert asked == [2, 2, 1, 1, 2, 2, 3, 3]


def test_a_kernel_given_one_thread_runs_torch_on_one(tmp_path, monkeypatch):
    for name in execute.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cell = nbformat.v4.new_code_cell("import torch\nprint(torch.get_num_threads())")
    run, = execute.run_notebook(nbformat.v4.new_notebook(cells=[cell]), tmp_path, 60, 120, threads=1).runs
    assert run.stdout.strip() == "1", run
