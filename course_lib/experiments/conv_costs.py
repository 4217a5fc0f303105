"""Lesson 2's experiments: what a convolution costs, in bytes and in seconds.

The algorithms are ``course_lib.conv`` (the lecture) and
``course_lib.machinery.fast_conv`` (the tuned ``conv2d``); this module
measures them:

``im2col_memory`` / ``format_memory``   bytes of the input and of its im2col matrix for
                                        real layers (``REAL_LAYERS``), the KH*KW blow-up
``median_seconds``                      wall time: warm-up, repeats, median (GPU-aware)
``time_layouts``                        three im2col layouts, each copy and each product apart
``conv_timings`` / ``format_timings``   every implementation against ``F.conv2d``, checked, then timed

Figures of these results are drawn by ``course_lib.viz.conv``.
Symbols are those of ``course_lib`` (N, C, H, W, K, KH, KW, S, P, H_out, W_out, L).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from course_lib.conv import conv2d_im2col, conv2d_naive, conv_geometry, conv_output_size, im2col
from course_lib.machinery.fast_conv import Workspace, conv2d, unfold_batched, window_view


# --------------------------------------------------------------------------
# The KH*KW memory blow-up
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvLayer:
    """One convolution layer of a real network, input (N, C, H, W), K filters KH x KW."""
    name: str
    N: int
    C: int
    H: int
    W: int
    K: int
    KH: int
    KW: int
    S: int = 1
    P: int = 0


REAL_LAYERS = (
    ConvLayer("LeNet-5 C1", 64, 1, 32, 32, 6, 5, 5),
    ConvLayer("LeNet-5 C3", 64, 6, 14, 14, 16, 5, 5),
    ConvLayer("AlexNet conv1 (11x11, S=4)", 64, 3, 227, 227, 96, 11, 11, S=4),
    ConvLayer("ResNet conv1 (7x7, S=2)", 64, 3, 224, 224, 64, 7, 7, S=2, P=3),
    ConvLayer("ResNet 3x3, 64 ch, 56x56", 64, 64, 56, 56, 64, 3, 3, P=1),
    ConvLayer("ResNet 3x3, 128 ch, S=2", 64, 64, 56, 56, 128, 3, 3, S=2, P=1),
    ConvLayer("VGG conv1_2 (3x3, 224x224)", 64, 64, 224, 224, 64, 3, 3, P=1),
)


def im2col_memory(layers=REAL_LAYERS, itemsize: int = 4) -> list[dict]:
    """Bytes of each layer's input and of its im2col matrix (float32 by default).

    cols holds N * C*KH*KW * L numbers, L = H_out*W_out: every pixel copied
    once per window covering it, about KH*KW/S^2 times the input.
    """
    rows = []
    for layer in layers:
        W_out = conv_output_size(layer.W, layer.KW, layer.P, layer.S, floor=True)
        H_out = conv_output_size(layer.H, layer.KH, layer.P, layer.S, floor=True, axis="height")
        input_bytes = layer.N * layer.C * layer.H * layer.W * itemsize
        cols_bytes = layer.N * layer.C * layer.KH * layer.KW * H_out * W_out * itemsize
        rows.append({"layer": layer.name, "N": layer.N, "input_bytes": input_bytes, "cols_bytes": cols_bytes,
                     "ratio": cols_bytes / input_bytes, "kernel_area": layer.KH * layer.KW,
                     "stride": layer.S, "itemsize": itemsize})
    return rows


def format_memory(rows: list[dict]) -> str:
    """``im2col_memory``'s rows as a fixed-width text table (MiB)."""
    lines = [f"{'layer':30s} {'input MiB':>10s} {'cols MiB':>10s} {'cols/input':>10s} {'KH*KW/S^2':>10s}"]
    for r in rows:
        lines.append(f"{r['layer']:30s} {r['input_bytes'] / 2**20:10.1f} {r['cols_bytes'] / 2**20:10.1f} "
                     f"{r['ratio']:10.2f} {r['kernel_area'] / r['stride'] ** 2:10.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Timings (warm-up, repeats, median)
# --------------------------------------------------------------------------

def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
                   sync: Callable[[], None] = lambda: None) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed ones.

    ``sync`` is called before reading the clock (a GPU queues work and returns
    at once; ``course_lib.device.synchronize`` waits for it).
    """
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _padded_nhwc(x: np.ndarray, PH: int, PW: int) -> np.ndarray:
    """(N, C, H, W) -> zero-padded, contiguous channels-last (N, H + 2PH, W + 2PW, C)."""
    N, C, H, W = x.shape
    xp = np.zeros((N, H + 2 * PH, W + 2 * PW, C), dtype=x.dtype)
    xp[:, PH:PH + H, PW:PW + W, :] = x.transpose(0, 2, 3, 1)  # one pass: NCHW -> NHWC
    return xp


def time_layouts(x: np.ndarray, w: np.ndarray, stride=1, padding=0, repeats: int = 5) -> dict:
    """Split three im2col convolutions into their copy and their matrix multiply.

    - ``F.unfold`` layout (``conv2d_im2col``): cols (N, C*KH*KW, L), then N
      matmuls (K, C*KH*KW) @ (C*KH*KW, L);
    - batched (the tuned ``conv2d``): cols (C*KH*KW, N*L), F.unfold's rows with
      the images side by side, written into a reused ``Workspace``, then ONE
      GEMM (K, C*KH*KW) @ (C*KH*KW, N*L);
    - channels-last: cols (N*L, KH*KW*C), each row one window read from
      KH runs of KW*C numbers of an (N, H, W, C) copy of x, then ONE GEMM
      with the weights as a (KH*KW*C, K) matrix.

    The batched and channels-last outputs still have to be put back into NCHW
    order (not timed); the F.unfold layout's output already is NCHW.
    Returns seconds per step.
    """
    (K, C, KH, KW), N = w.shape, x.shape[0]
    (SH, SW), (PH, PW), (H_out, W_out) = conv_geometry(x, KH, KW, stride, padding)
    unfold_copy = lambda: im2col(x, (KH, KW), stride, padding)                        # (N, C*KH*KW, L)
    workspace = Workspace()                                                           # reused, as in LeNet5
    batched_copy = lambda: unfold_batched(x, KH, KW, SH, SW, PH, PW, H_out, W_out, workspace)  # (C*KH*KW, N*L)
    cl_copy = lambda: window_view(                                                    # NHWC memory, NCHW view
        _padded_nhwc(x, PH, PW).transpose(0, 3, 1, 2), KH, KW, SH, SW, H_out, W_out   # [n, c, u, v, i, j]
    ).transpose(0, 4, 5, 2, 3, 1).reshape(N * H_out * W_out, KH * KW * C)             # (N*L, KH*KW*C)
    cols_unfold, cols_batched, cols_cl = unfold_copy(), batched_copy(), cl_copy()
    w_row = w.reshape(K, -1)                                                          # (K, C*KH*KW)
    w_mat = w.transpose(2, 3, 1, 0).reshape(-1, K)                                    # (KH*KW*C, K)
    return {
        "F.unfold layout: im2col copy": median_seconds(unfold_copy, repeats),
        "F.unfold layout: N matmuls": median_seconds(lambda: w_row @ cols_unfold, repeats),
        "batched: im2col copy": median_seconds(batched_copy, repeats),
        "batched: one GEMM": median_seconds(lambda: w_row @ cols_batched, repeats),
        "channels-last: window copy": median_seconds(cl_copy, repeats),
        "channels-last: one GEMM": median_seconds(lambda: cols_cl @ w_mat, repeats),
    }


IMPLEMENTATIONS = ("conv2d_naive", "conv2d_im2col", "conv2d", "PyTorch CPU", "PyTorch GPU")


def _implementations(x, w, b, stride, padding, device) -> tuple[dict, dict]:
    """``{name: call}`` for every implementation on one case, and ``{name: sync}`` for the GPU."""
    import torch
    import torch.nn.functional as F

    from course_lib.device import synchronize

    xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
    workspace = Workspace()                                  # the tuned conv2d's, reused as in LeNet5
    calls = {"conv2d_naive": lambda: conv2d_naive(x, w, b, stride, padding),
             "conv2d_im2col": lambda: conv2d_im2col(x, w, b, stride, padding),
             "conv2d": lambda: conv2d(x, w, b, stride, padding, workspace=workspace),
             "PyTorch CPU": lambda: F.conv2d(xt, wt, bt, stride, padding)}
    syncs = {}
    if device is not None and torch.device(device).type != "cpu":
        dev = torch.device(device)
        xd, wd, bd = xt.to(dev), wt.to(dev), bt.to(dev)
        calls["PyTorch GPU"] = lambda: F.conv2d(xd, wd, bd, stride, padding)
        syncs["PyTorch GPU"] = lambda: synchronize(dev)
    return calls, syncs


def conv_timings(cases: list[tuple], device=None, repeats: int = 5, warmup: int = 1,
                 naive_max_windows: int = 50_000, seed: int = 0) -> list[dict]:
    """Time every implementation on each case; check each one against F.conv2d first.

    cases : list of (name, x_shape, w_shape, stride, padding)
    device : a torch.device; "PyTorch GPU" is timed when it is not the CPU
    naive_max_windows : conv2d_naive is skipped (seconds = nan) when it would
        loop over more than this many (n, k, i, j) positions
    Returns one dict per (case, implementation): case, implementation, seconds.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for name, x_shape, w_shape, stride, padding in cases:
        x, w = rng.standard_normal(x_shape, dtype=np.float32), rng.standard_normal(w_shape, dtype=np.float32)
        b = rng.standard_normal(w_shape[0], dtype=np.float32)
        calls, syncs = _implementations(x, w, b, stride, padding, device)
        reference = calls["PyTorch CPU"]().numpy()                      # (N, K, H_out, W_out)
        if reference.size > naive_max_windows:
            calls.pop("conv2d_naive")
        scale = float(np.max(np.abs(reference)))
        for impl in IMPLEMENTATIONS:
            if impl not in calls:
                rows.append({"case": name, "implementation": impl, "seconds": math.nan})
                continue
            out = calls[impl]()
            out = out.cpu().numpy() if hasattr(out, "cpu") else out         # a torch tensor, maybe on a GPU
            error = float(np.max(np.abs(out - reference)))
            if error > (1e-2 if impl == "PyTorch GPU" else 1e-4) * scale:  # GPUs may use TF32 (10-bit mantissa)
                raise AssertionError(f"{impl} differs from F.conv2d on {name}: max abs diff "
                                     f"{error:.3g}, largest output {scale:.3g}")
            seconds = median_seconds(calls[impl], repeats, warmup, syncs.get(impl, lambda: None))
            rows.append({"case": name, "implementation": impl, "seconds": seconds})
    return rows


def format_timings(rows: list[dict]) -> str:
    """A text table: milliseconds per call and the ratio to PyTorch on the CPU."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    impls = [i for i in IMPLEMENTATIONS
             if any(r["implementation"] == i and not math.isnan(r["seconds"]) for r in rows)]
    width = max([28] + [len(c) + 2 for c in cases])
    lines = [f"{'case':{width}s}" + "".join(f"{i:>20s}" for i in impls)]
    for case in cases:
        got = {r["implementation"]: r["seconds"] for r in rows if r["case"] == case}
        base = got["PyTorch CPU"]
        cells = ["skipped" if math.isnan(got[i]) else f"{got[i] * 1e3:.2f} ms ({got[i] / base:.2g}x)"
                 for i in impls]
        lines.append(f"{case:{width}s}" + "".join(f"{c:>20s}" for c in cells))
    return "\n".join(lines) + "\n(ratio = time / PyTorch CPU time; lower is faster)"
