"""Which code a call reaches: the check behind an exercise's "numpy only" rule.

An exercise that asks for a function in numpy must be able to tell an answer
that computes it from one that hands the work to ``torch`` or to the kit's own
implementation. ``first_call_into`` runs the answer once under
``sys.setprofile`` and reports the first call that lands in a forbidden
module or function, by name, so that the test's message can say what was
called::

    first_call_into(["torch", "course_lib.pooling"], avg_pool2d, x, 2)
    # -> 'torch.nn.functional.avg_pool2d' or None

A name is a module (``"torch"``: every module under the package, and every C
function whose ``__module__`` is under it) or a function (``"course_lib.conv.im2col"``:
that function alone, so that its module's helpers stay allowed).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable


def _resolve(name: str):
    """A module name -> ('module', its file or folder + os.sep); a function's -> ('code', its code object)."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        owner, attr = name.rsplit(".", 1)
        return "code", getattr(importlib.import_module(owner), attr).__code__
    path = os.path.abspath(module.__file__)
    if os.path.basename(path) == "__init__.py":
        path = os.path.dirname(path) + os.sep
    return "module", path


def first_call_into(banned: list[str], fn: Callable, *args, **kwargs) -> str | None:
    """Run ``fn(*args, **kwargs)`` once; the first call it makes into ``banned``, or None.

    banned : module names (a package bans everything under it, C functions by
        their ``__module__``) and function names (``"course_lib.conv.im2col"``)
    returns : ``"qualname (file.py)"`` for Python code, ``"module.name"`` for a C
        function; None when ``fn`` called none of them. ``fn``'s own exceptions
        propagate, as they would without the trace.
    """
    targets = [_resolve(name) for name in banned]
    paths = tuple(value for kind, value in targets if kind == "module")
    codes = {value for kind, value in targets if kind == "code"}
    packages = tuple(name for name, (kind, _) in zip(banned, targets) if kind == "module")
    found: list[str] = []

    def watch(frame, event, arg):
        if found:
            return
        code = frame.f_code
        if event == "call" and (code in codes or os.path.abspath(code.co_filename).startswith(paths)):
            found.append(f"{getattr(code, 'co_qualname', code.co_name)} ({os.path.basename(code.co_filename)})")
        elif event == "c_call":
            module = getattr(arg, "__module__", None) or ""
            if any(module == p or module.startswith(p + ".") for p in packages):
                found.append(f"{module}.{arg.__name__}")

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        fn(*args, **kwargs)
    finally:
        sys.setprofile(previous)
    return found[0] if found else None
