"""first_call_into: the exercises' "numpy only" check names what an answer called."""

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.conv import im2col, pad2d
from course_lib.machinery.calltrace import first_call_into

X = np.arange(25.0).reshape(1, 1, 5, 5)


def test_a_torch_operator_is_named_by_its_module():
    assert first_call_into(["torch"], lambda: F.avg_pool2d(torch.from_numpy(X), 2)) == "torch.from_numpy"
    as_tensor = torch.as_tensor(X)
    assert first_call_into(["torch"], lambda: F.unfold(as_tensor, 2)) == "unfold (functional.py)"


def test_a_banned_function_leaves_the_rest_of_its_module_allowed():
    assert first_call_into(["course_lib.conv.im2col"], im2col, X, 2) == "im2col (conv.py)"
    assert first_call_into(["course_lib.conv.im2col", "torch"], pad2d, X, 1) is None


def test_a_banned_package_covers_its_modules_and_numpy_alone_passes():
    from course_lib.machinery import calltrace
    banned = ["course_lib.machinery", "threading"]
    assert first_call_into(banned, np.pad, X, 1) is None
    assert first_call_into(banned, calltrace._resolve, "numpy") == "_resolve (calltrace.py)"
    assert first_call_into(["threading"], lambda: __import__("threading").Lock().locked()) is None   # C only
    assert first_call_into(["threading"], lambda: __import__("threading").Event().is_set()) == \
        "Event.__init__ (threading.py)"


def test_the_answer_runs_once_and_its_errors_propagate():
    calls = []
    assert first_call_into(["torch"], calls.append, 1) is None and calls == [1]
    try:
        first_call_into(["torch"], lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("the answer's exception was swallowed")
    import sys
    assert sys.getprofile() is None
