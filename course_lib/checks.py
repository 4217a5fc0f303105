"""Input checks shared by the lecture's modules: each check lives here, once.

Every message teaches (style rule 4): it names the argument, shows what was
received and says how to fix it. Nothing here is part of the lecture; the
modules that read like the slides call these first and then do the math.

``pair``             ``3 -> (3, 3)``, ``(1, 2) -> (1, 2)`` for kernel size, stride, padding
``check_int``        a plain int >= a lower bound, <= an upper one if given (``N``, ``world_size``, ``rank``)
``check_positive``   a count >= 1 (``integer=True``: filters, a batch) or a real number > 0 (seconds, a rate)
``check_nonnegative`` a finite real number >= 0 (seconds that may be zero: an emulated delay)
``check_array``      a floating-point ndarray of a given number of dimensions
``check_conv``       a convolution's x, w, b: shapes, dtypes, channels that match
``check_arrays``     one numeric array per rank, all of one shape and dtype
"""

from __future__ import annotations

import numpy as np

MAX_WORLD_SIZE = 64        # processes this kit starts on one machine


def _torch_hint(x) -> str:
    return (" (convert a torch tensor with .detach().cpu().numpy())"
            if type(x).__module__.startswith("torch") else "")


def pair(value, name: str, low: int) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(1, 2) -> (1, 2)``; with a teaching error otherwise."""
    both = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(both) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                             for v in both):
        raise TypeError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")
    if min(both) < low:
        raise ValueError(f"{name} = {value!r} must be >= {low}"
                         + (" (a stride of 0 would never move the window)" if name == "stride"
                            else " (padding is a number of zero rows/columns added per side)"
                            if name == "padding" else ""))
    return int(both[0]), int(both[1])


def _number(value, name: str, integer: bool):
    """The type check ``check_int`` and ``check_positive`` share: an int (never a bool), or any real number."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {value!r} "
                        f"({type(value).__name__})")
    return int(value) if integer else float(value)


def check_int(value, name: str, low: int, high: int | None = None, why: str = "") -> int:
    """``value`` as an int with ``low <= value <= high``, or a TypeError / ValueError saying what was wrong.

    ``why``, when given, ends the ValueError's message: the reason for the bound.
    """
    value = _number(value, name, integer=True)
    because = f" ({why})" if why else ""
    if value < low:
        raise ValueError(f"{name} = {value} must be >= {low}{because}")
    if high is not None and value > high:
        raise ValueError(f"{name} = {value} must be <= {high}{because}")
    return value


def check_positive(value, name: str, integer: bool = False):
    """``value`` > 0: an int (a count: ``integer=True``) or a float (seconds, a rate); else a teaching error."""
    value = _number(value, name, integer)
    if not value > 0:                                  # NaN is not > 0 either
        raise ValueError(f"{name} must be a positive int, got {value!r}" if integer
                         else f"{name} must be positive ({name} > 0), got {value!r}")
    return value


def check_nonnegative(value, name: str, why: str = "") -> float:
    """``value`` as a finite float >= 0 (0 allowed: "none"), else a teaching error; ``why`` ends the message."""
    value = _number(value, name, integer=False)
    if not 0 <= value < np.inf:                        # NaN and inf fail this too
        because = f" ({why})" if why else ""
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}{because}")
    return value


def check_array(x, name: str, ndim: int, layout: str, op: str = "convolution") -> np.ndarray:
    """Return x as an ndarray of a floating dtype and the given ndim, or raise a TypeError/ValueError."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape {layout}, got {type(x).__name__}"
                        + _torch_hint(x))
    if x.ndim != ndim:
        hint = " (for a single image use x[None])" if name == "x" and x.ndim == ndim - 1 else ""
        raise ValueError(f"{name} must have {ndim} dimensions {layout}, got shape {x.shape}{hint}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} has dtype {x.dtype}; {op} needs floating point "
                        f"(use {name}.astype(np.float32)) so that gradients are not truncated")
    return x


def check_conv(x, w, b=None):
    """Shapes, dtypes and the channel match of a convolution's operands; returns ``x, w, b``.

    x : (N, C, H, W);  w : (K, C, KH, KW), as many channels as x;  b : (K,) or None
    """
    x = check_array(x, "x", 4, "(N, C, H, W)")
    w = check_array(w, "w", 4, "(K, C, KH, KW)")
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"channel mismatch: x has C = {x.shape[1]} channels (shape {x.shape}) "
                         f"but w expects {w.shape[1]} (shape {w.shape} is (K, C, KH, KW))")
    if b is not None:
        b = check_array(b, "b", 1, "(K,)")
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"b has {b.shape[0]} entries but there are K = {w.shape[0]} filters")
    return x, w, b


def check_arrays(arrays) -> list[np.ndarray]:
    """Check that ``arrays`` is a non-empty list of numeric ndarrays of one shape and dtype.

    Raises TypeError / ValueError naming the offending rank, before any process starts.
    """
    if isinstance(arrays, np.ndarray) or not isinstance(arrays, (list, tuple)):
        raise TypeError(f"arrays must be a list with one numpy array per rank, got {type(arrays).__name__}"
                        + (" (for P ranks stacked in one array use list(arrays))"
                           if isinstance(arrays, np.ndarray) else ""))
    if len(arrays) == 0:
        raise ValueError("arrays is empty: give one array per rank (world_size = len(arrays) >= 1)")
    if len(arrays) > MAX_WORLD_SIZE:
        raise ValueError(f"{len(arrays)} ranks is more than this kit starts ({MAX_WORLD_SIZE}) on one machine")
    for rank, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"arrays[{rank}] (rank {rank}'s data) must be a numpy array, "
                            f"got {type(a).__name__}{_torch_hint(a)}")
        if a.dtype.kind not in "iuf":
            raise TypeError(f"arrays[{rank}] has dtype {a.dtype}; all-reduce sums integers or floats")
    first = arrays[0]
    for rank, a in enumerate(arrays[1:], start=1):
        if a.shape != first.shape:
            raise ValueError(f"every rank must hold the same shape: rank 0 has {first.shape}, "
                             f"rank {rank} has {a.shape}")
        if a.dtype != first.dtype:
            raise TypeError(f"every rank must hold the same dtype: rank 0 has {first.dtype}, "
                            f"rank {rank} has {a.dtype}")
    return list(arrays)
