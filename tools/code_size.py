"""How big is what a student reads? Lines per module and per function of ``course_lib``.

    .venv/bin/python tools/code_size.py          # the table, then the limits and whether they hold

The reading order is every module of ``course_lib`` outside the machinery
(``machinery/``, ``experiments/``, ``viz/``): what ``course_lib/__init__.py`` tells a student to read.
Limits (CONTRIBUTING.md, tests/test_code_size.py):

* the reading order together: at most ``MAX_READING_LINES`` lines;
* one module of the reading order: at most ``MAX_MODULE_LINES`` lines;
* one function or method anywhere in ``course_lib`` or ``grader``: at most ``MAX_BODY_LINES``
  lines of body (its docstring not counted), about one screen.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "course_lib"
NOT_READ = ("machinery", "experiments", "viz")
GRADER = ROOT.parent / "grader"   # not the lecture, but held to the same one-screen functions
MAX_READING_LINES = 4000
MAX_MODULE_LINES = 300
MAX_BODY_LINES = 40


def modules(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def in_reading_order(path: Path, root: Path = ROOT) -> bool:
    return path.relative_to(root).parts[0] not in NOT_READ


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the function's last line."""
    body = node.body
    if (len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1


def long_functions(path: Path, limit: int = MAX_BODY_LINES) -> list[tuple[str, int]]:
    """``[(qualified name, body lines)]`` of the functions in ``path`` longer than ``limit``."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                if body_lines(child) > limit:
                    found.append((name, body_lines(child)))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(ast.parse(path.read_text()), "")
    return found


def report(root: Path = ROOT) -> tuple[str, list[str]]:
    """The table of the reading order's modules, and every limit that does not hold."""
    reading = [p for p in modules(root) if in_reading_order(p, root)]
    rows = [(str(p.relative_to(root.parent)), line_count(p)) for p in reading]
    total = sum(n for _, n in rows)
    problems = [f"{name}: {n} lines > {MAX_MODULE_LINES}" for name, n in rows if n > MAX_MODULE_LINES]
    if total > MAX_READING_LINES:
        problems.append(f"the reading order has {total} lines > {MAX_READING_LINES}")
    for p in modules(root) + (modules(GRADER) if root == ROOT else []):
        problems += [f"{p.relative_to(root.parent)}: {name} has {n} body lines > {MAX_BODY_LINES}"
                     for name, n in long_functions(p)]
    width = max(len(name) for name, _ in rows)
    table = "\n".join(f"{name:{width}s} {n:5d}" for name, n in rows)
    table += f"\n{'reading order, total':{width}s} {total:5d}  ({len(rows)} modules)"
    return table, problems


def main() -> int:
    table, problems = report()
    print(table)
    print(f"\nlimits: reading order <= {MAX_READING_LINES} lines, a module <= {MAX_MODULE_LINES}, "
          f"a function body <= {MAX_BODY_LINES} (anywhere in course_lib and grader)")
    print("\n".join(problems) if problems else "all limits hold")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
