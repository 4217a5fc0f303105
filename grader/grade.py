"""Grade a class's exercise notebooks: a grades CSV and one feedback file per student.

    python -m grader solutions/02_conv_dilation_groups_exercise.ipynb submitted/ -j 2
    make grade EXERCISE=02_conv_dilation_groups_exercise SUBMISSIONS=submitted/

writes ``grades/<exercise>/grades.csv`` and ``grades/<exercise>/feedback/<student>.txt``,
and, where cells are graded by hand, ``grades/<exercise>/manual.csv`` for the
instructor to fill in (``grader.manual``); run again, it puts those points in
and runs no notebook again that has not changed (``grader.store``).

Reading order
-------------
1. ``grade_submission``: one student: read (``submission.read_submission``),
   merge into the instructor's notebook (``submission.merge``), run it in a
   fresh kernel in a temporary folder (``execute.run_notebook``), ``score``.
2. ``score``: a test cell earns its points only if it ran without raising and
   the guard cells around it found nothing patched *during* it and the guard
   itself in place (else ``tampered``); a test not reached (time limit, dead
   kernel) scores zero, and so does a pass whose guard check before or after
   it did not finish (it raised, the kernel died, a time limit: ``unverified``).
   A test whose value is a number earns that many points (``partial_credit``,
   nbgrader's rule). ``answer_errors``: the answer cells that raised (a
   SyntaxError, say). Cells a person grades (manually graded answers, tasks:
   ``graded_cells``) wait for one (``needs_manual``), unless left as
   released (``not_answered``, 0 points, as nbgrader's 'No response.').
3. ``secret_lines`` / ``withhold``: a message that quotes the hidden tests or
   the model answers (a student's code can read them) is replaced.
4. ``grade_all``: every submission, ``jobs`` at a time; a bad submission is a
   row with a reason, never a stopped batch; one unchanged since the last run
   takes its stored grade.
5. ``keep_and_merge``: store the grades, then give them the points filled in
   ``manual.csv``.
6. ``write_csv`` / ``feedback_text`` / ``summary``: the outputs, the files
   written atomically.

CSV columns (``COLUMNS``): student, exercise, test_id, points, max_points,
status, flags, detail; one row per graded cell (test cells and cells graded
by hand, in notebook order) and one ``TOTAL`` row per student, whose detail
says how many points await grading by hand. Test statuses
(``TEST_STATUSES``): passed, partial (nbgrader's partial credit), failed
(AssertionError), error (another exception), timeout, kernel_died, not_run,
tampered, unverified (it passed, but the grader's check around it did not
finish, so the pass is not counted), ungraded. Cells graded by hand
(``HAND_STATUSES``): needs_manual, not_answered, graded_by_hand (or
ungraded). TOTAL statuses: ``RAN_STATUSES`` (the
notebook ran: graded, timeout, kernel_died) or ``NOT_GRADED`` (no test ran:
no_notebook, missing, unreadable, wrong_exercise, duplicate, grader_error).
Flags are listed in ``grader.submission``, plus ``patched:NAME``
when the answer cells replaced a function the tests use, ``tampered:TEST``
when the code under test did so while TEST ran, or the grader's guard around
TEST was removed or replaced, ``unverified:TEST`` when TEST passed but the
check before or after it did not finish (TEST scores 0 in both cases),
``answer_error:ID`` when answer cell ID raised (the error is in the TOTAL
row's detail), and ``withheld:ID`` when ID's message was withheld. Every flag
is on the TOTAL row; a flag that names a test is also on that test's row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import nbformat

from grader import manual, similarity, store
from grader.build import BEGIN_HIDDEN, BEGIN_MARK_SCHEME, BEGIN_SOLUTION, END_HIDDEN, END_MARK_SCHEME, \
    END_SOLUTION, cell_role, hand_graded, has_block, student_notebook
from grader.csvsafe import csv_text, feedback_path, write_atomically
from grader.execute import ROLE_KEY, CellRun, cores_per_process, instrument, run_notebook, test_modules
from grader.gradebook import read_roster, write_gradebooks
from grader.sandbox import GIB, Confinement, SandboxUnavailable, choose
from grader.submission import Submission, find_submissions, grade_id, hand_graded_answers, merge, \
    read_submission, wrong_exercise

COLUMNS = ["student", "exercise", "test_id", "points", "max_points", "status", "flags", "detail", "mode"]
MAX_DETAIL = 300
TEST_STATUSES = ("passed", "partial", "failed", "error", "timeout", "kernel_died", "not_run", "tampered",
                 "unverified", "ungraded")
# a cell a person grades: awaiting its points, not answered (0, nothing to grade), or given its points
HAND_STATUSES = ("needs_manual", "not_answered", "graded_by_hand")
RAN_STATUSES = ("graded", "timeout", "kernel_died")   # TOTAL: the notebook ran, maybe not to the end
NOT_GRADED = {   # TOTAL: no test ran, and what the student's feedback says about it
    "no_notebook": "no notebook was found",
    "missing": "the grader could not tell which notebook to grade",
    "unreadable": "the grader could not read your file",
    "wrong_exercise": "this is not this exercise's notebook",
    "duplicate": "you submitted more than once",
    "grader_error": "the grader itself failed on your submission (not your fault; your instructor has the details)",
}
MARKERS = (BEGIN_HIDDEN, END_HIDDEN, BEGIN_SOLUTION, END_SOLUTION, BEGIN_MARK_SCHEME, END_MARK_SCHEME)
MIN_SECRET_LINE = 12   # characters; shorter lines ('return x') give nothing away
WITHHELD = "[message withheld: it quoted the instructor's hidden tests or model answer]"
# a guard cell's error that names one of these found the guard removed or replaced (tampered);
# any other error is the check's own failure (MemoryError, RecursionError: unverified)
GUARD_NAMES = ("_course_kit_guard", "grader.guard", "check_and_restore", "SNAPSHOT",
               "no snapshot")


@dataclass
class Limits:
    """Time limits in seconds (one cell; all cells of one notebook together), what else one
    submission may use (``confinement``: memory, processes, file size, sandbox or not) and
    the folders it must not see (``hidden``: the solution's, the submissions, the grades).
    ``threads``: the threads its kernel's libraries start (torch, OpenMP, BLAS); 0: one per
    core, or in ``grade_all`` the cores shared among the kernels running at once."""
    cell: float = 60.0
    notebook: float = 600.0
    confinement: Confinement = field(default_factory=Confinement)
    hidden: tuple[Path, ...] = ()
    threads: int = 0


@dataclass
class TestResult:
    """One graded cell's result: a test cell (``kind`` 'test'), or a cell a person
    grades ('manual': a manually graded answer; 'task')."""
    test_id: str
    points: float
    max_points: float
    status: str
    detail: str = ""
    hidden: bool = False
    flags: list[str] = field(default_factory=list)
    kind: str = "test"
    answer: str | None = None   # for a person: the student's answer (None: none given)


@dataclass
class Grade:
    student: str
    exercise: str
    tests: list[TestResult]
    status: str
    detail: str = ""
    flags: list[str] = field(default_factory=list)
    answer_errors: dict[str, str] = field(default_factory=dict)   # answer cell id -> 'ename: evalue'
    mode: str = ""   # where it ran: 'sandbox' or 'limited' ('' when no kernel ran)
    memory: int = Confinement.memory   # its memory limit per process, bytes
    key: str = ""          # the fingerprint it is stored under (``grader.store``); '' when not stored
    reused: bool = False   # taken from the last run's store, not run again

    @property
    def points(self) -> float:
        return sum(t.points for t in self.tests)

    @property
    def max_points(self) -> float:
        return sum(t.max_points for t in self.tests)

    @property
    def pending(self) -> list[TestResult]:
        """The cells still awaiting a person's points."""
        return [t for t in self.tests if t.status == "needs_manual"]


def graded_cells(instructor) -> list[TestResult]:
    """Every cell with points, in notebook order: the test cells (status 'not_run' until
    they run) and the cells a person grades ('needs_manual' until they do)."""
    cells = []
    for c in instructor.cells:
        points = float(c.metadata.get("nbgrader", {}).get("points", 0))
        if hand_graded(c):
            kind = "task" if c.metadata.nbgrader.get("task") else "manual"
            cells.append(TestResult(grade_id(c), 0.0, points, "needs_manual", kind=kind))
        elif cell_role(c) == "test" and c.cell_type == "code":
            cells.append(TestResult(grade_id(c), 0.0, points, "not_run", hidden=has_block(c.source, BEGIN_HIDDEN)))
    return cells


def test_cells(instructor) -> list[TestResult]:
    """The instructor's auto-graded test cells, each as a not-yet-run result."""
    return [t for t in graded_cells(instructor) if t.kind == "test"]


def _squash(text: str) -> str:
    return " ".join(str(text).split())


def _short(text: str) -> str:
    text = _squash(text)
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 3] + "..."


def _error_text(run: CellRun) -> str:
    """'ename: evalue', shortened; a SyntaxError's place loses IPython's file name: '(line 2)'."""
    evalue = run.evalue
    if run.ename in ("SyntaxError", "IndentationError", "TabError"):
        evalue = re.sub(r"\([^(),]+, line (\d+)\)$", r"(line \1)", evalue)   # '(2031782527.py, line 2)'
    return _short(f"{run.ename}: {evalue}" if evalue else run.ename)


def _guard_report(run: CellRun) -> list[str] | None:
    """Names the guard cell restored, or None when it did not report (it failed or was subverted)."""
    if run.status != "ok":
        return None
    for line in reversed(run.stdout.splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and isinstance(report.get("course_kit_guard"), list):
            return [str(name) for name in report["course_kit_guard"]]
    return None


def _stop_detail(run: CellRun, cell, limits: Limits, went_on: bool) -> str:
    """Why the kernel stopped in ``cell``, and what happened next (``went_on``: grading
    went on in a fresh kernel, with the answer cells before it run again, this one left out)."""
    grader = cell.metadata.get(ROLE_KEY)
    if grader:
        what = f"the grader's check around test {grader.get('test_id')!r}"
    else:
        what = f"cell {grade_id(cell) or 'without a grade id'!r}"
    after = ("the grader went on in a fresh kernel without it" if went_on else "the tests after it score 0")
    if run.status == "died":
        return f"the kernel died in {what} (it may have run out of memory); {after}"
    seconds = limits.cell if run.limit == "cell" else limits.notebook
    return f"{what} ran past the {seconds:g} s {run.limit} time limit; {after}"


def _void(test: TestResult, why: str, status: str, flags: list[str]) -> None:
    """Score ``test`` 0 with ``status`` ('tampered' or 'unverified') and flag it 'STATUS:TEST'."""
    test.status, test.points, test.detail = status, 0.0, _short(why)
    if f"{status}:{test.test_id}" not in flags:
        flags.append(f"{status}:{test.test_id}")


def partial_credit(value: str, max_points: float) -> float:
    """The points a test cell that ran without error earns, by nbgrader's rule
    (``nbgrader.utils.get_partial_grade``) from its value (the text of its
    execute_result, '' for none): a number from 0 to ``max_points`` is the
    points; anything else (no value, text, ``np.float64(0.5)``, a negative
    number, nan) earns ``max_points``. Raises ValueError for a number above
    ``max_points`` (nbgrader then refuses to grade the notebook).
    """
    try:
        points = float(value)
    except ValueError:
        return max_points
    if not points >= 0:
        return max_points
    if points > max_points:
        raise ValueError(f"the test's value {value} is more than its {max_points:g} points")
    return points


def _passed(test: TestResult, run: CellRun) -> None:
    """A test cell that ran without error: its points, or part of them (``partial_credit``)."""
    try:
        test.points = partial_credit(run.result, test.max_points)
    except ValueError as err:
        test.status, test.detail = "error", _short(str(err))
        return
    test.status = "passed" if test.points == test.max_points else "partial"
    if test.status == "partial":
        test.detail = f"partial credit: the test's value is {_short(run.result)}"


def _unverified(test: TestResult, when: str, why: str, flags: list[str]) -> None:
    """A pass whose guard check (``when``: 'before' or 'after' it) did not finish: not counted."""
    if test.status in ("passed", "partial"):
        _void(test, f"the test passed, but the grader's check {when} it did not finish ({why}), "
                    "so the pass could not be counted", "unverified", flags)


def _guard_gone(run: CellRun) -> bool:
    """Whether a guard cell that gave no report found the guard removed or replaced: it ran
    and printed nothing, or its error names the guard (not, say, a MemoryError of its own)."""
    return run.status == "ok" or any(name in f"{run.ename}: {run.evalue}" for name in GUARD_NAMES)


def _apply_guard(role: str, run: CellRun, test: TestResult | None, flags: list[str]) -> bool:
    """A guard cell's report. Before a test: what the answer cells patched (flagged,
    undone). After it: what the code under test patched while it ran (the test is void).

    Returns whether the check raised for a reason of its own (out of memory, say), so
    that a pass around it cannot be vouched for (``unverified``, decided by ``score``).
    """
    if test is None or run.status not in ("ok", "error"):
        return False
    restored = _guard_report(run)
    if restored is None and not _guard_gone(run):
        return True
    if restored is None:
        _void(test, f"the grader's check {role} the test found its guard removed or replaced "
                    f"({_error_text(run) if run.ename else 'no report'}), so the test's environment "
                    "could not be checked", "tampered", flags)
    elif role == "before":
        flags += [f"patched:{name}" for name in restored if f"patched:{name}" not in flags]
    elif restored:
        _void(test, f"the code under test replaced {', '.join(restored)} while the test ran", "tampered", flags)
    return False


def score(nb, runs: list[CellRun], tests: list[TestResult], limits: Limits) -> tuple[str, str, list[str]]:
    """Fill ``tests`` in place from the runs of the instrumented ``nb``; return (status, detail, flags)."""
    by_id = {t.test_id: t for t in tests}
    status, details, flags = "graded", [], []
    unchecked: dict[str, tuple[str, CellRun]] = {}   # test id -> (role, run) of a check that raised
    for index, (cell, run) in enumerate(zip(nb.cells, runs)):
        role = cell.metadata.get(ROLE_KEY, {}).get("role")
        test = by_id.get(grade_id(cell)) if cell_role(cell) == "test" else None
        if role == "preamble" and run.status == "error":
            raise RuntimeError(f"the grader's preamble failed before any student code ran: "
                               f"{run.ename}: {run.evalue}")
        if role in ("before", "after"):
            test_id = cell.metadata[ROLE_KEY]["test_id"]
            if _apply_guard(role, run, by_id.get(test_id), flags):
                unchecked.setdefault(test_id, (role, run))
        elif test is not None and test.status == "not_run" and run.status in ("ok", "error"):
            if run.status == "ok":
                _passed(test, run)
            else:
                test.status = "failed" if run.ename == "AssertionError" else "error"
                test.detail = _error_text(run)
        if run.status in ("timeout", "died"):
            kind = "timeout" if run.status == "timeout" else "kernel_died"
            status = kind if status == "graded" else status
            details.append(_stop_detail(run, cell, limits, any(r.status != "not_run" for r in runs[index + 1:])))
            if test is not None and test.status == "not_run":
                test.status, test.detail = kind, details[-1]
            guarded = by_id.get(cell.metadata.get(ROLE_KEY, {}).get("test_id")) if role == "after" else None
            if guarded is not None:   # its check never finished: a pass we cannot vouch for
                _unverified(guarded, "after", details[-1], flags)
    for test_id, (role, run) in unchecked.items():   # a check that raised: the same
        _unverified(by_id[test_id], role, _error_text(run), flags)
    for test in tests:
        if test.status == "not_run":
            test.detail = "not reached: " + (details[-1] if details else "the notebook stopped before it")
    return status, "; ".join(details), flags


def answer_errors(nb, runs: list[CellRun]) -> dict[str, str]:
    """Answer cell grade_id -> 'ename: evalue', for each answer (solution) cell of ``nb`` that raised.

    The tests that use such a cell fail on their own terms (a SyntaxError in
    the answer shows up as a NameError in the test), so the cause is reported apart.
    """
    return {grade_id(cell): _error_text(run) for cell, run in zip(nb.cells, runs)
            if cell_role(cell) == "solution" and run.status == "error"}


def secret_lines(instructor) -> list[str]:
    """What no message may quote: the markers (and their words, 'BEGIN HIDDEN TESTS'),
    and every line (whitespace collapsed) of the instructor's notebook that the
    students' copy does not show: hidden tests, model answers, mark schemes.

    Lines shorter than MIN_SECRET_LINE, and lines of numbers alone (rows of an
    array that a test may print), are left out: they give nothing away.
    """
    shown = {_squash(line) for cell in student_notebook(instructor).cells for line in cell.source.splitlines()}
    secrets = set(MARKERS) | {marker.lstrip("# ") for marker in MARKERS}
    for cell in instructor.cells:
        for line in map(_squash, cell.source.splitlines()):
            if len(line) >= MIN_SECRET_LINE and line not in shown and re.search(r"[A-Za-z_]{2}", line):
                secrets.add(line)
    return sorted(secrets)


def withhold(message: str, secrets: list[str]) -> str:
    """``message``, or its exception name and WITHHELD when it quotes one of ``secrets``."""
    text = _squash(message)
    if not any(secret in text for secret in secrets):
        return message
    name = message.split(":", 1)[0]
    return f"{name}: {WITHHELD}" if name.isidentifier() else WITHHELD


def _withhold_all(tests: list[TestResult], errors: dict[str, str], secrets: list[str]) -> list[str]:
    """Withhold (in place) every test message and answer error that quotes a secret; the flags."""
    flags = []
    for test in tests:
        clean = withhold(test.detail, secrets)
        if clean != test.detail:
            test.detail = clean
            flags.append(f"withheld:{test.test_id}")
    for key, message in errors.items():
        clean = withhold(message, secrets)
        if clean != message:
            errors[key] = clean
            flags.append(f"withheld:{key}")
    return flags


def _hand_graded(items: list[TestResult], answers: dict[str, str | None]) -> None:
    """Mark (in place) the cells a person grades: 'not_answered' (0 points, as nbgrader's
    'No response.') for a manually graded answer missing or as released; else 'needs_manual'."""
    for item in items:
        if item.kind == "test":
            continue
        item.answer = answers.get(item.test_id)
        if item.kind == "manual" and item.answer is None:
            item.status, item.detail = "not_answered", "the cell is missing or as released: no answer"
        else:
            item.status, item.detail = "needs_manual", "to be graded by hand"


def grade_submission(instructor, sub: Submission, exercise: str, limits: Limits,
                     modules: list[str] | None = None, files: dict[str, Path] | None = None) -> Grade:
    """Grade one student; every problem becomes the Grade's status and detail.

    ``modules``: what the test cells import (``execute.test_modules(instructor)``,
    computed once per batch when not given). ``files``: the assignment's other
    files, copied into the kernel's folder (``assignment_files``).
    """
    items = graded_cells(instructor)
    tests = [t for t in items if t.kind == "test"]
    problem, nb = sub.problem, None
    if not problem:
        nb, problem = read_submission(sub.path)
    if not problem:
        problem = wrong_exercise(instructor, nb)
    if problem:
        kind, _, why = problem.partition(": ")
        for item in items:
            item.status, item.detail = "ungraded", "no gradable submission"
        return Grade(sub.student, exercise, items, kind, _short(why))
    merged = merge(instructor, nb)
    _hand_graded(items, hand_graded_answers(instructor, nb))
    runnable = instrument(merged.nb, test_modules(instructor) if modules is None else modules)
    with tempfile.TemporaryDirectory(prefix="course-kit-grade-") as workdir:
        execution = run_notebook(runnable, Path(workdir), limits.cell, limits.notebook,
                                 confinement=limits.confinement, hidden=list(limits.hidden), files=files or {},
                                 threads=limits.threads)
    runs = execution.runs
    status, detail, patched = score(runnable, runs, tests, limits)
    errors = answer_errors(runnable, runs)
    withheld = _withhold_all(tests, errors, secret_lines(instructor))
    flags = merged.flags + patched + [f"answer_error:{key}" for key in errors] + withheld
    flags += [f"out_of_memory:{grade_id(cell)}" for cell, run in zip(runnable.cells, runs)
              if run.ename == "MemoryError" and grade_id(cell)]
    if execution.leftovers:
        flags.append(f"leftover_processes:{execution.leftovers}")
    for item in items:
        item.flags = [f for f in flags if f.split(":", 1)[-1] == item.test_id]
    reasons = ([detail] if detail else []) + [f"answer cell {key!r} raised {error}" for key, error in errors.items()]
    return Grade(sub.student, exercise, items, status, _short("; ".join(reasons)), flags, errors, execution.mode,
                 limits.confinement.memory)


def _grade_safely(instructor, sub, exercise, limits, modules, files=None) -> Grade:
    try:
        return grade_submission(instructor, sub, exercise, limits, modules, files)
    except Exception as err:  # noqa: BLE001 - one broken submission never stops the batch
        items = graded_cells(instructor)
        for item in items:
            item.status, item.detail = "ungraded", "the grader failed on this submission"
        return Grade(sub.student, exercise, items, "grader_error", _short(f"{type(err).__name__}: {err}"))


def load_instructor(solution: Path):
    """The instructor's notebook, checked the way ``make exercises`` checks it."""
    with warnings.catch_warnings():  # duplicate cell ids, which nbformat repairs (a copied cell)
        warnings.simplefilter("ignore", nbformat.warnings.DuplicateCellId)
        nb = nbformat.read(solution, as_version=4)
    try:
        student_notebook(nb)  # raises ValueError on duplicated grade ids or unpaired markers
    except ValueError as err:
        raise ValueError(f"{solution}: {err}") from None
    if not graded_cells(nb):
        raise ValueError(f"{solution}: no test cells (nbgrader grade: true) and no cells graded by hand "
                         "(nbgrader grade and solution: true, or task: true) to grade")
    return nb


def assignment_files(folder: Path | None) -> dict[str, Path]:
    """The files a notebook may open (data, images) by their path relative to ``folder``:
    every file below it except notebooks and hidden entries (``.ipynb_checkpoints``),
    as nbgrader's autograde copies those of ``source/ps1/``. None: no files."""
    if folder is None:
        return {}
    if not folder.is_dir():
        raise FileNotFoundError(f"assignment files folder {folder} does not exist")
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".ipynb"
            and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(folder).parts)}


def _submission_key(context: str, sub: Submission) -> str:
    """The fingerprint of ``sub``'s grade (``grader.store``); '' for a submission with no file to run."""
    if sub.problem or sub.path is None:
        return ""
    try:
        return store.fingerprint(context, sub.student, sub.path.read_bytes())
    except OSError:
        return ""


def _from_store(data: dict) -> Grade:
    return Grade(**{**data, "tests": [TestResult(**t) for t in data["tests"]], "reused": True})


def grade_all(solution: Path, submissions: Path, jobs: int = 2, limits: Limits | None = None,
              files_from: Path | None = None, reuse: dict[str, dict] | None = None) -> list[Grade]:
    """Grade every submission in ``submissions`` against ``solution``, ``jobs`` kernels at a time.

    ``files_from``: a folder whose files (``assignment_files``) each kernel's folder gets.
    ``reuse``: the last run's grades (``store.load``): a submission whose fingerprint is
    there is not run again; each grade gets its fingerprint (``Grade.key``). None: no
    fingerprints. Returns the grades sorted by student; the order and the points do not
    depend on ``jobs``.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if limits is not None and limits.threads < 0:
        raise ValueError(f"threads must be 0 (the cores divided among the jobs) or more, got {limits.threads}")
    limits = limits or Limits()
    limits = replace(limits, hidden=(*limits.hidden, solution.resolve().parent, submissions.resolve()))
    choose(limits.confinement)   # refuse now, not once per student, when the sandbox is required and cannot start
    instructor = load_instructor(solution)
    subs = find_submissions(submissions, solution.name)
    # the kernels running at once share the cores (threads_env: else -j 2 runs tens of times slower)
    limits = replace(limits, threads=limits.threads or cores_per_process(min(jobs, max(1, len(subs)))))
    exercise, modules, files = solution.stem, test_modules(instructor), assignment_files(files_from)
    settings = (limits.cell, limits.notebook, repr(limits.confinement))
    context = store.context(solution, files, settings) if reuse is not None else ""

    def one(sub: Submission) -> Grade:
        key = _submission_key(context, sub) if reuse is not None else ""
        if key in (reuse or {}):
            with contextlib.suppress(TypeError, KeyError):   # a store from another version: grade again
                return _from_store(reuse[key])
        g = _grade_safely(instructor, sub, exercise, limits, modules, files)
        g.key = key
        return g
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, subs))


def _points(x: float) -> str:
    return f"{x:g}"


def pending_note(g: Grade) -> str:
    """'3 of 10 points await grading by hand (2 cells)', or '' when none do."""
    pending = g.pending
    if not pending:
        return ""
    cells = f"{len(pending)} cell{'s' if len(pending) != 1 else ''}"
    return (f"{_points(sum(t.max_points for t in pending))} of {_points(g.max_points)} points await "
            f"grading by hand ({cells})")


def csv_rows(grades: list[Grade]) -> list[dict]:
    rows = []
    for g in grades:
        for t in g.tests:
            rows.append(dict(student=g.student, exercise=g.exercise, test_id=t.test_id,
                             points=_points(t.points), max_points=_points(t.max_points),
                             status=t.status, flags=";".join(t.flags), detail=t.detail, mode=g.mode))
        rows.append(dict(student=g.student, exercise=g.exercise, test_id="TOTAL",
                         points=_points(g.points), max_points=_points(g.max_points), status=g.status,
                         flags=";".join(g.flags), detail="; ".join(filter(None, (g.detail, pending_note(g)))),
                         mode=g.mode))
    return rows


def write_csv(path: Path, grades: list[Grade]) -> None:
    """``csv_rows`` as CSV: every text cell spreadsheet-safe and quoted (``csvsafe``), the points numbers."""
    write_atomically(path, csv_text(COLUMNS, csv_rows(grades), numbers=("points", "max_points")))


FLAG_NOTES = {
    "edited_test": "you changed test cell {id}; your copy was ignored and the original test ran",
    "deleted_test": "test cell {id} was missing; the original test ran",
    "edited_locked": "you changed read-only cell {id}; the original ran",
    "deleted_locked": "read-only cell {id} was missing; the original ran",
    "missing_solution": "answer cell {id} was missing, so it counted as not done",
    "duplicate_grade_id": "two cells carry the id {id}; only the first one was graded",
    "dropped_cells": "{id} code cell(s) you added outside the answer cells were not run: "
                     "put everything your answer needs inside the answer cells",
    "patched": "your answer cells replaced {id}, which the tests use; it was put back before each test",
    "tampered": "your code replaced something test {id} uses while it ran, or removed the grader's check "
                "around it, so the test scores 0",
    "unverified": "the grader could not finish checking test {id} (for example it ran out of memory, or the "
                  "kernel died or ran past a time limit), so its pass could not be counted",
    "answer_error": "your answer cell {id} raised {error}; the cell stopped at that error, so the tests "
                    "could not use what it defines from there on (a test's NameError may come from this)",
    "withheld": "the message of {id} was withheld: it quoted the hidden tests or the model answer",
    "out_of_memory": "cell {id} ran out of memory (the grader's limit per process is {memory}); a test that "
                     "needs what it defines fails",
    "leftover_processes": "{id} process(es) your code started were still running after grading; the grader "
                          "ended them",
}


HAND_LABELS = {"needs_manual": "to be graded by hand", "not_answered": "not answered",
               "graded_by_hand": "graded by hand", "ungraded": "ungraded"}


def _hand_lines(g: Grade) -> list[str]:
    """The feedback's lines for the cells a person grades (none: no lines)."""
    items = [t for t in g.tests if t.kind != "test"]
    if not items:
        return []
    lines = ["", "Graded by hand"]
    for t in items:
        points = "?" if t.status == "needs_manual" else _points(t.points)
        why = f"\n      {t.detail}" if t.detail and t.status in ("graded_by_hand", "not_answered") else ""
        lines.append(f"  {HAND_LABELS.get(t.status, t.status):<21} {points:>4} / {_points(t.max_points):<4} "
                     f"{t.test_id}{' (task)' if t.kind == 'task' else ''}{why}")
    return lines


def feedback_text(g: Grade) -> str:
    """What the student reads: score, each test's result and why; never a hidden test's source."""
    pending = sum(t.max_points for t in g.pending)
    lines = [f"Feedback for {g.student} on {g.exercise}",
             f"Score: {_points(g.points)} / {_points(g.max_points)}"
             + (f" ({_points(pending)} points still to be graded by hand)" if pending else ""), ""]
    if g.status in NOT_GRADED:
        lines += [f"Not graded: {NOT_GRADED[g.status]}" + (f": {g.detail}" if g.detail else ""),
                  "Every test scores 0: none of the tests ran.", ""]
    elif g.status != "graded":
        lines += [f"Grading stopped: {g.status}" + (f": {g.detail}" if g.detail else ""), ""]
    tests = [t for t in g.tests if t.kind == "test"]
    lines += ["Tests"] if tests else []
    for t in tests:
        hidden = " (includes hidden checks)" if t.hidden else ""
        why = f"\n      {t.detail}" if t.detail and t.status != "passed" else ""
        lines.append(f"  {t.status:<11} {_points(t.points):>4} / {_points(t.max_points):<4} {t.test_id}{hidden}{why}")
    lines += _hand_lines(g)[0 if tests else 1:]
    notes = []
    for flag in g.flags:
        kind, _, ident = flag.partition(":")
        notes.append("  - " + FLAG_NOTES.get(kind, flag).format(
            id=ident if kind in ("dropped_cells", "leftover_processes") else repr(ident),
            error=g.answer_errors.get(ident, "an error"), memory=f"{g.memory / GIB:g} GiB"))
    if notes:
        lines += ["", "Notes", *notes]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, grades: list[Grade]) -> Path:
    """``out/grades.csv``, ``out/feedback/<student>.txt`` and, where cells are graded by
    hand, ``out/manual.csv`` (``manual.sheet_text``: rows already there kept as they are);
    returns the CSV's path."""
    for g in grades:
        write_atomically(feedback_path(out / "feedback", g.student), feedback_text(g))
    write_csv(out / "grades.csv", grades)
    sheet = out / "manual.csv"
    if sheet.exists() or any(t.kind != "test" for g in grades for t in g.tests):
        existing = sheet.read_text(encoding="utf-8") if sheet.exists() else ""
        write_atomically(sheet, manual.sheet_text(grades, existing))
    return out / "grades.csv"


def keep_and_merge(out: Path, grades: list[Grade]) -> list[str]:
    """Store ``grades`` as run (``out/grades.json``, for the next run), then give them the
    points filled in ``out/manual.csv``; returns what could not be applied."""
    write_atomically(out / store.STORE, store.dumps([(g.key, asdict(g)) for g in grades
                                                     if g.key and g.status != "grader_error"]))
    sheet = out / "manual.csv"
    return manual.apply_sheet(sheet.read_text(encoding="utf-8"), grades) if sheet.exists() else []


def summary(grades: list[Grade]) -> str:
    """'13 submissions: 9 graded (of which timeout 1), 4 not gradable (no_notebook 2, unreadable 1, ...)'."""
    counts = Counter(g.status for g in grades)

    def breakdown(statuses, lead: str = "") -> str:   # ' (timeout 1, kernel_died 2)', or '' when none
        listed = ", ".join(f"{status} {counts[status]}" for status in statuses if counts[status])
        return f" ({lead}{listed})" if listed else ""
    ran = sum(counts[status] for status in RAN_STATUSES)
    plural = "s" if len(grades) != 1 else ""
    return (f"{len(grades)} submission{plural}: {ran} graded{breakdown(RAN_STATUSES[1:], 'of which ')}, "
            f"{len(grades) - ran} not gradable{breakdown(NOT_GRADED)}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m grader", description=__doc__.split("\n\n")[0])
    parser.add_argument("solution", type=Path,
                        help="the instructor's notebook, e.g. solutions/02_conv_dilation_groups_exercise.ipynb")
    parser.add_argument("submissions", type=Path, help="folder: one STUDENT.ipynb or one STUDENT/ folder per student")
    parser.add_argument("--out", type=Path, help="output folder (default grades/<exercise>)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="submissions graded at once (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="threads each kernel's torch and BLAS start "
                        "(default: the cores divided among the jobs; OMP_NUM_THREADS and the like, if set, win)")
    parser.add_argument("--cell-timeout", type=float, default=Limits.cell, help="seconds per cell (default 60)")
    parser.add_argument("--timeout", type=float, default=Limits.notebook, help="seconds per notebook (default 600)")
    default = Confinement()
    parser.add_argument("--memory-gib", type=float, default=default.memory / GIB,
                        help=f"memory per process of a submission, GiB (default {default.memory / GIB:g})")
    parser.add_argument("--max-processes", type=int, default=default.nproc,
                        help=f"processes and threads of a submission (default {default.nproc})")
    parser.add_argument("--max-file-gib", type=float, default=default.fsize / GIB,
                        help=f"largest file a submission may write, GiB (default {default.fsize / GIB:g})")
    sandboxing = parser.add_mutually_exclusive_group()
    sandboxing.add_argument("--require-sandbox", action="store_true",
                            help="refuse to grade where the sandbox cannot start "
                                 "(default: fall back to the limited mode)")
    sandboxing.add_argument("--no-sandbox", action="store_true", help="grade in the limited mode even where the "
                                                                      "sandbox could start")
    parser.add_argument("--roster", type=Path, help="CSV with columns submission,name,id[,sis_user_id,sis_login_id,"
                        "section]: also write gradebook_canvas.csv and gradebook.csv")
    parser.add_argument("--assignment-name", help="the Canvas gradebook's column, e.g. 'Exercise 1 (12345)' "
                        "(default: the exercise's name)")
    parser.add_argument("--similarity-threshold", type=similarity.threshold_arg, default=similarity.THRESHOLD,
                        help="list answers at least this similar in similarity.csv, 0 to 1 (default 0.9)")
    parser.add_argument("--files", type=Path, help="a folder whose files (data, images; not notebooks) every "
                                                   "kernel's folder gets, as nbgrader copies source/ASSIGNMENT/")
    parser.add_argument("--regrade", action="store_true",
                        help="run every notebook again, even one unchanged since the last run (grades.json)")
    return parser


def mode_line(grades: list[Grade], confinement: Confinement) -> str:
    """The console's last line: which mode graded the submissions, and why when not the sandbox."""
    counts = Counter(g.mode for g in grades if g.mode)
    if not counts:
        return "mode: no kernel ran"
    mode = choose(confinement)
    where = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
    if mode.name == "sandbox":
        return f"mode: {where} (bubblewrap: {mode.bwrap})"
    return f"mode: {where}: NOT sandboxed: {mode.reason}"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    out = args.out or Path("grades") / args.solution.stem
    confinement = Confinement(int(args.memory_gib * GIB), args.max_processes, int(args.max_file_gib * GIB),
                              require_sandbox=args.require_sandbox, use_sandbox=not args.no_sandbox)
    try:
        roster = read_roster(args.roster) if args.roster else None   # checked before the batch, not after
        grades = grade_all(args.solution, args.submissions, args.jobs,
                           Limits(args.cell_timeout, args.timeout, confinement, (out.resolve(),), args.threads),
                           args.files, reuse={} if args.regrade else store.load(out))
    except (OSError, ValueError, SandboxUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems = keep_and_merge(out, grades)
    csv_path = write_outputs(out, grades)
    for g in grades:
        print(f"{g.student:<24} {_points(g.points):>5} / {_points(g.max_points):<5} {g.status}"
              + (f"  [{';'.join(g.flags)}]" if g.flags else "") + (f"  ({pending_note(g)})" if g.pending else ""))
    for problem in problems:
        print(problem, file=sys.stderr)
    if roster is not None:
        max_points = sum(t.max_points for t in test_cells(load_instructor(args.solution)))
        print("\n".join(write_gradebooks(out, grades, roster, args.assignment_name or args.solution.stem,
                                         max_points)))
    print(similarity.write_report(args.solution, args.submissions, csv_path.parent, args.similarity_threshold))
    print(f"{summary(grades)}; {time.perf_counter() - start:.0f} s; wrote {csv_path}{_rerun_note(grades, out)}")
    print(mode_line(grades, confinement))
    return 0


def _rerun_note(grades: list[Grade], out: Path) -> str:
    """What the console's last line adds: grades reused, cells awaiting a person."""
    reused, pending = sum(g.reused for g in grades), [t for g in grades for t in g.pending]
    note = f"; {reused} unchanged since the last run, not run again (--regrade runs them)" if reused else ""
    if pending:
        note += (f"; {len(pending)} cell(s), {_points(sum(t.max_points for t in pending))} points, await grading "
                 f"by hand: fill in points in {out / 'manual.csv'} and run this again")
    return note


if __name__ == "__main__":
    sys.exit(main())
