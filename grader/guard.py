"""What the test cells rely on, restored before each test (runs inside the student's kernel).

Test cells re-import what they use (``import numpy as np``), but Python hands
back the *same* module object, so a solution cell that did

    np.allclose = lambda *a, **k: True

would still fool ``assert np.allclose(...)``. The grader therefore runs, in
the student's kernel,

* before any student code: ``take_snapshot(modules)``, which imports the
  modules the instructor's test cells import and remembers every function,
  class and submodule each of them (and ``builtins``) holds, plus IPython's
  input and AST transformers (which could rewrite a test cell);
* in the next cell, ``forget_volatile(snapshot)``: what the kernel rebinds
  for every request (``builtins.input``) is not tracked;
* around every test cell: ``check_and_restore(snapshot)``, which puts back
  whatever was replaced or deleted and prints what it found as one JSON line,
  ``{"course_kit_guard": ["numpy.allclose", ...]}``.

Changes found *before* a test are the solution cells' doing (flagged, then
undone); changes made *during* a test mean the student's code patched the
checker while being checked, and the grader voids that test.

A replacement whose code lives in the package's own folder is the library's
doing (importing ``torch._dynamo`` wraps ``torch.manual_seed``): it is
adopted, not reported.

Limits: this runs in the same process as the student's code, so it stops
accidents and naive patches, not a determined attacker with full code
execution (that needs a container per submission, as otter-grader uses).
Plain data attributes (flags, counters, caches) are not tracked: libraries
change those legitimately.
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import sys
import types
import warnings

MISSING = object()
SNAPSHOT: dict = {}   # set by the grader's preamble cell, read by its guard cells


def _tracked(value) -> bool:
    """Functions, classes and modules: what a test calls to decide pass or fail."""
    return callable(value) or isinstance(value, types.ModuleType)


def _ipython_lists():
    """IPython's transformer lists (code that rewrites a cell before it runs)."""
    try:
        shell = get_ipython()  # noqa: F821  (defined inside IPython only)
    except NameError:
        return {}
    names = ("input_transformers_cleanup", "input_transformers_post", "ast_transformers")
    return {name: getattr(shell, name) for name in names if isinstance(getattr(shell, name, None), list)}


def take_snapshot(modules: list[str]) -> dict:
    """Import ``modules`` and remember what every loaded module under them holds.

    Parameters
    ----------
    modules : top-level or dotted module names the test cells import; one that
        fails to import is skipped (the test cell will report it).

    Returns
    -------
    snapshot : dict with 'modules' {name: (module, {attr: value})} and
        'ipython' {list name: (list, copy of its items)}
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the test cell itself shows the error
            pass
    roots = {name.split(".")[0] for name in modules} | {"builtins"}
    tracked = {}
    with warnings.catch_warnings():  # some libraries warn when a deprecated alias is touched
        warnings.simplefilter("ignore")
        for name, module in list(sys.modules.items()):
            if isinstance(module, types.ModuleType) and (name.split(".")[0] in roots or name == __name__):
                tracked[name] = (module, {k: v for k, v in vars(module).items() if _tracked(v)})
    ipython = {name: (items, list(items)) for name, items in _ipython_lists().items()}
    return {"modules": tracked, "ipython": ipython, "homes": {root: _home(root) for root in roots}}


def _home(root: str) -> str | None:
    """The folder a top-level package is installed in (None for built-in modules)."""
    path = getattr(sys.modules.get(root), "__file__", None)
    return os.path.dirname(os.path.abspath(path)) + os.sep if path else None


def _library_own(value, home: str | None) -> bool:
    """A replacement the library made itself: Python code from the package's own folder.

    (Importing ``torch._dynamo`` re-wraps ``torch.manual_seed``, for example.)
    A function written in a notebook cell lives in a kernel temp file instead.
    """
    code = getattr(value, "__code__", None)
    return bool(home) and code is not None and os.path.abspath(code.co_filename).startswith(home)


def forget_volatile(snapshot: dict) -> list[str]:
    """Stop tracking what the kernel itself rebinds on every cell; return those names.

    Run in a cell of its own after ``take_snapshot`` and before any student
    code: ipykernel sets ``builtins.input`` and ``sys.excepthook`` afresh for
    each request, which is not tampering.
    """
    volatile = []
    for name, (module, attrs) in snapshot["modules"].items():
        namespace = vars(module)
        for attr in [a for a, value in attrs.items() if namespace.get(a, MISSING) is not value]:
            del attrs[attr]
            volatile.append(f"{name}.{attr}")
    return volatile


def check_and_restore(snapshot: dict, emit: bool = True) -> list[str]:
    """Undo every replaced/deleted attribute and transformer; return (and print) their names."""
    if not snapshot:
        raise RuntimeError("no snapshot: the grader's preamble cell did not run")
    changed = []
    for name, (module, attrs) in snapshot["modules"].items():
        if sys.modules.get(name) is not module:
            sys.modules[name] = module
            changed.append(f"sys.modules[{name!r}]")
        namespace, home = vars(module), snapshot["homes"].get(name.split(".")[0])
        for attr, value in attrs.items():
            now = namespace.get(attr, MISSING)
            if now is value:
                continue
            if now is not MISSING and _library_own(now, home):
                attrs[attr] = now  # the library's own doing: the new normal
                continue
            namespace[attr] = value
            changed.append(f"{name}.{attr}")
    for name, (items, saved) in snapshot["ipython"].items():
        if items != saved:
            items[:] = saved
            changed.append(f"IPython {name}")
    if emit:
        builtins.print(json.dumps({"course_kit_guard": changed}))
    return changed
