"""Answers that look copied: a report for a person to read, never a grade.

    python -m grader SOLUTION SUBMISSIONS [--similarity-threshold 0.9]

writes ``similarity.csv`` beside ``grades.csv``. For each answer cell (nbgrader
``solution: true``, matched across students by ``grade_id``) it lists

* ``pair``: two students whose answers are near-identical;
* ``model_answer``: a student whose answer is near-identical to the instructor's;
* ``library``: a student function whose body is near-identical to the body of a
  function in ``course_lib/`` (the teaching library students can read).

Reading order
-------------
1. ``tokens``: a cell's code as a sequence of AST node names. Names the code
   binds (variables, arguments, its own functions) become ``v0, v1, ...`` by first
   appearance, every constant becomes ``Constant``, docstrings and comments
   vanish; attribute names (``np.zeros``), keyword names (``axis=``) and names it
   uses without binding them (``np``, ``range``, ``im2col``) are kept: they say
   which API is called. Code that does not parse is compared as its words and
   symbols, comments and whitespace dropped.
2. ``own_tokens``: what the student wrote: the tokens the released stub
   already has at the start and the end of the cell (the ``def`` line) are
   dropped. An answer with fewer than ``MIN_TOKENS`` of its own (the stub
   itself, ``return a + b``) is too short to tell copying from coincidence
   and is left out; only the first ``MAX_TOKENS`` of an answer are compared.
3. ``similarity``: ``difflib.SequenceMatcher``'s ratio of two token sequences,
   2 M / (len(a) + len(b)) with M the tokens of the longest matching blocks,
   in order: 1.0 is "identical after renaming", 0.0 "nothing in common".
4. ``find_matches``: every pair, the model answer, the library; at or above
   the threshold. ``write_report``: the CSV and one console line; it never raises.

CSV columns (``COLUMNS``): exercise, cell (the grade_id), student, other
(another student, ``model_answer`` or ``course_lib/PATH:FUNCTION``), score,
kind (pair, model_answer or library), note. A determined student can
restructure code so that none of this sees it; and short exercises with one
natural answer make honest students look alike. It is a prompt to look.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import nbformat

from grader.build import cell_role, student_cell
from grader.csvsafe import csv_text, write_atomically
from grader.submission import find_submissions, grade_id, read_submission, wrong_exercise

THRESHOLD = 0.9
MIN_TOKENS = 8   # an answer with fewer tokens of its own is too short to tell copying from coincidence
MAX_TOKENS = 2000   # only an answer's first 2000 tokens are compared: a ratio costs up to len(a) * len(b)
LIBRARY = Path(__file__).resolve().parents[1] / "course_lib"
COLUMNS = ["exercise", "cell", "student", "other", "score", "kind", "note"]
KINDS = ("pair", "model_answer", "library")


@dataclass(frozen=True)
class Match:
    """One row of similarity.csv: ``student``'s answer in ``cell`` resembles ``other``."""
    exercise: str
    cell: str
    student: str
    other: str    # another student, 'model_answer', or 'course_lib/conv.py:pad2d'
    score: float  # 0 to 1; 1.0: identical after renaming
    kind: str     # one of KINDS
    note: str = ""


# ---------------------------------------- 1. and 2. normalised tokens

def _bound_names(tree: ast.AST) -> set[str]:
    """Names ``tree`` binds: assigned, deleted, arguments, its own functions and classes,
    loop, ``with`` and ``except`` targets. Imported names are left out: ``np`` stays ``np``."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
        elif isinstance(getattr(node, "name", None), str) and not isinstance(node, ast.alias):
            bound.add(node.name)   # except E as name, match ... as name
    return bound


def _is_docstring(node: ast.AST) -> bool:
    """A statement that is a bare string: a docstring, or a string used as a comment."""
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _label(node: ast.AST, name) -> str:
    """One node's token: its type, and for a name the bound name's ``name(text)`` ('Name:v0',
    'arg:v1', 'FunctionDef:v2', 'Name:np'), the attribute or keyword used ('Attribute:zeros',
    'keyword:axis') or the module imported ('alias:numpy'); nothing else ('Constant', 'Add')."""
    kind = type(node).__name__
    if isinstance(node, ast.Name):
        return f"{kind}:{name(node.id)}"
    if isinstance(node, ast.arg):
        return f"{kind}:{name(node.arg)}"
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return f"{kind}:{name(node.name)}"
    if isinstance(node, ast.Attribute):
        return f"{kind}:{node.attr}"
    if isinstance(node, ast.keyword):   # f(axis=0); arg is None in f(**options)
        return f"{kind}:{node.arg}"
    if isinstance(node, ast.alias):     # import numpy as np
        return f"{kind}:{node.name}"
    return kind   # Constant, Assign, BinOp, Add, ...: the operands follow as tokens of their own


def _node_tokens(nodes: list[ast.AST], bound: set[str]) -> tuple[str, ...]:
    """Pre-order tokens of ``nodes``: 'Assign', 'Name:v0', 'Attribute:zeros', 'Constant', ...

    Each name in ``bound`` is renamed ``v0, v1, ...`` in order of first appearance.
    """
    renamed: dict[str, str] = {}
    out: list[str] = []

    def name(text: str) -> str:
        if text not in bound:
            return text
        return renamed.setdefault(text, f"v{len(renamed)}")

    stack = list(reversed(nodes))   # a stack, not recursion: 'x = 1+1+...+1' nests deep
    while stack:
        node = stack.pop()
        if not (isinstance(node, ast.expr_context) or _is_docstring(node)):
            out.append(_label(node, name))
            stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return tuple(out)


def _parse(source: str) -> ast.Module | None:
    """The cell's AST with IPython's ``%magic`` and ``!shell`` lines left out, or None."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    try:
        with warnings.catch_warnings():   # invalid escape sequences in a student's strings
            warnings.simplefilter("ignore")
            return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):   # RecursionError: nested too deep
        return None


def tokens(source: str) -> tuple[str, ...]:
    """A code cell's normalised tokens (module docstring: step 1).

    ``tokens("total = x + 1  # the sum") == tokens("s = x + 2")
    == ('Assign', 'Name:v0', 'BinOp', 'Name:x', 'Add', 'Constant')``: ``total``
    and ``s`` are bound here and become ``v0``; ``x`` is not, and stays. Code
    that does not parse: its words and symbols, comments dropped, each
    prefixed ``~`` (so it never matches parsed code).
    """
    tree = _parse(source)
    if tree is not None:
        return _node_tokens(tree.body, _bound_names(tree))
    text = re.sub(r"#[^\n]*", "", source)
    return tuple("~" + word for word in re.findall(r"\w+|[^\w\s]", text))


def own_tokens(answer: tuple[str, ...], stub: tuple[str, ...]) -> tuple[str, ...]:
    """``answer`` without the tokens it shares with the released ``stub`` at its start and its end."""
    start = 0
    while start < min(len(answer), len(stub)) and answer[start] == stub[start]:
        start += 1
    end = 0
    while end < min(len(answer), len(stub)) - start and answer[-1 - end] == stub[-1 - end]:
        end += 1
    return answer[start:len(answer) - end]


def function_bodies(tree: ast.AST, prefix: str = "") -> list[tuple[str, tuple[str, ...]]]:
    """``[(qualified name, tokens of its body)]`` for every function in ``tree``, methods and
    nested functions included; names are numbered from the body's first line, so a body
    pasted under another ``def`` line (other argument names, more arguments) still matches."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((prefix + node.name, _node_tokens(node.body, _bound_names(node))))
            found += function_bodies(node, prefix + node.name + ".")
        elif isinstance(node, ast.ClassDef):
            found += function_bodies(node, prefix + node.name + ".")
    return found


@functools.lru_cache(maxsize=4)
def library_index(root: Path = LIBRARY) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(('course_lib/conv.py:pad2d', body tokens), ...)`` for every function under ``root``
    with at least ``MIN_TOKENS`` tokens; each file is parsed once per process."""
    index = []
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        tree = _parse(path.read_text(encoding="utf-8"))
        label = f"{root.name}/{path.relative_to(root).as_posix()}"
        index += [(f"{label}:{name}", body) for name, body in function_bodies(tree or ast.Module([], []))
                  if len(body) >= MIN_TOKENS]
    return tuple(index)


# ---------------------------------------- 3. and 4. scores and matches

def similarity(a: tuple[str, ...], b: tuple[str, ...], threshold: float = 0.0) -> float:
    """SequenceMatcher's ratio of ``a`` and ``b``, 2 M / (len(a) + len(b)), in [0, 1].

    Below ``threshold`` it may return a cheaper upper bound instead (also below it):
    2 min(len) / (len(a) + len(b)) from the lengths alone, then the same count over
    the tokens as a multiset, order ignored.
    """
    if not a and not b:
        return 1.0
    by_length = 2 * min(len(a), len(b)) / (len(a) + len(b))
    if by_length < threshold:
        return by_length
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)   # autojunk would skip common tokens
    unordered = matcher.quick_ratio()
    return unordered if unordered < threshold else matcher.ratio()


def student_answers(instructor, folder: Path, notebook_name: str) -> dict[str, dict[str, str]]:
    """``{grade_id: {student: source}}`` for the instructor's code answer cells, from every
    submission in ``folder`` that can be read and is this exercise; a student's first cell
    with that ``grade_id`` counts (as in grading)."""
    ids = [grade_id(c) for c in instructor.cells if cell_role(c) == "solution" and c.cell_type == "code"]
    answers: dict[str, dict[str, str]] = {key: {} for key in ids}
    for sub in find_submissions(folder, notebook_name):
        nb, problem = (None, sub.problem) if sub.problem else read_submission(sub.path)
        if problem or wrong_exercise(instructor, nb):
            continue
        for cell in nb.cells:
            key = grade_id(cell)
            if key in answers and cell.cell_type == "code":
                answers[key].setdefault(sub.student, cell.source)
    return answers


def _pair_note(score: float, shared: int) -> str:
    if score < 1.0:
        return f"near-identical: {score:.0%} of their normalised tokens line up"
    return "identical after renaming" + (f"; {shared} students have this same answer" if shared > 2 else "")


def _cell_matches(exercise: str, key: str, own: dict[str, tuple], model: tuple, threshold: float) -> list[Match]:
    """The pairs of students, and the students close to the model answer, for one cell."""
    shared = Counter(own.values())
    found = []
    for a, b in combinations(sorted(own), 2):
        score = similarity(own[a], own[b], threshold)
        if score >= threshold:
            found.append(Match(exercise, key, a, b, score, "pair", _pair_note(score, shared[own[a]])))
    for student, answer in sorted(own.items()):
        score = similarity(answer, model, threshold) if len(model) >= MIN_TOKENS else 0.0
        if score >= threshold:
            note = "identical to the model answer after renaming" if score == 1.0 else "close to the model answer"
            found.append(Match(exercise, key, student, "model_answer", score, "model_answer", note))
    return found


def _library_matches(exercise: str, key: str, sources: dict[str, str], threshold: float,
                     library: Path) -> list[Match]:
    """Students' functions in cell ``key`` whose body is near-identical to a library function's."""
    found = []
    for student, source in sorted(sources.items()):
        tree = _parse(source)
        bodies = [(name, body[:MAX_TOKENS]) for name, body in function_bodies(tree) if len(body) >= MIN_TOKENS] \
            if tree else []
        for label, lib_body in library_index(library):
            best = max(((similarity(body, lib_body, threshold), name) for name, body in bodies), default=(0, ""))
            if best[0] >= threshold:
                found.append(Match(exercise, key, student, label, best[0], "library",
                                   f"the body of {best[1]}() matches {label.rpartition(':')[2]}() in the library"))
    return found


def find_matches(instructor, answers: dict[str, dict[str, str]], exercise: str,
                 threshold: float = THRESHOLD, library: Path | None = LIBRARY) -> list[Match]:
    """Every match at or above ``threshold``, cell by cell in notebook order, highest score first.

    ``answers``: ``student_answers``'s ``{grade_id: {student: source}}``; ``library``: the
    folder whose functions are compared (None: none).
    """
    check_threshold(threshold)
    lesson = instructor.metadata.get("course_kit", {}).get("lesson", "")
    found = []
    for cell in instructor.cells:
        key = grade_id(cell)
        if key not in answers or cell_role(cell) != "solution":
            continue
        stub = tokens(student_cell(cell, lesson).source)
        own = {s: own_tokens(tokens(src), stub) for s, src in answers[key].items()}
        own = {s: t[:MAX_TOKENS] for s, t in own.items() if len(t) >= MIN_TOKENS}   # the stub: left out
        model = own_tokens(tokens(cell.source), stub)[:MAX_TOKENS]
        cell_found = _cell_matches(exercise, key, own, model, threshold)
        if library is not None and library.is_dir():
            cell_found += _library_matches(exercise, key, {s: answers[key][s] for s in own}, threshold, library)
        found += sorted(cell_found, key=lambda m: (-m.score, KINDS.index(m.kind), m.student, m.other))
    return found


# ---------------------------------------- the CSV and the command line

def check_threshold(threshold: float) -> float:
    """``threshold``, or a ValueError that says what a threshold is."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the similarity threshold is a score between 0 and 1 (1.0: identical after renaming; "
                         f"the default {THRESHOLD} flags near-identical answers), got {threshold}")
    return threshold


def threshold_arg(text: str) -> float:
    """argparse ``type=`` for ``--similarity-threshold``: a float in (0, 1]."""
    try:
        return check_threshold(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def report_text(matches: list[Match]) -> str:
    """similarity.csv's text: ``COLUMNS``, then one row per match; every text field spreadsheet-safe."""
    rows = [dict(exercise=m.exercise, cell=m.cell, student=m.student, other=m.other, score=f"{m.score:.3f}",
                 kind=m.kind, note=m.note) for m in matches]
    return csv_text(COLUMNS, rows, numbers=("score",))


def summary(matches: list[Match], threshold: float, path: Path) -> str:
    """'similarity: 3 pairs to look at, 1 copy of the model answer, 0 of course_lib (score >= 0.9; PATH)'."""
    counts = Counter(m.kind for m in matches)
    pairs = f"{counts['pair']} pair{'s' if counts['pair'] != 1 else ''}"
    return (f"similarity: {pairs} to look at, {counts['model_answer']} close to the model answer, "
            f"{counts['library']} close to course_lib (score >= {threshold:g}; {path})")


def write_report(solution: Path, submissions: Path, out: Path, threshold: float = THRESHOLD,
                 library: Path | None = LIBRARY) -> str:
    """Write ``out/similarity.csv`` for this batch; return the console line. Never raises:
    a failure is reported in that line, and the grades are not touched either way."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nbformat.warnings.DuplicateCellId)
            instructor = nbformat.read(solution, as_version=4)
        answers = student_answers(instructor, submissions, solution.name)
        matches = find_matches(instructor, answers, solution.stem, threshold, library)
        write_atomically(out / "similarity.csv", report_text(matches))
    except Exception as err:  # noqa: BLE001 - a report that fails must never fail the grading
        return f"similarity: not written ({type(err).__name__}: {err}); the grades are not affected"
    return summary(matches, threshold, out / "similarity.csv")
