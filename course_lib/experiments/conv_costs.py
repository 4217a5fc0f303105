"""Lesson 2's experiments: what a convolution costs, in bytes and in seconds.

The algorithms are ``course_lib.conv`` (the lecture) and
``course_lib.machinery.fast_conv`` (the tuned ``conv2d``); this module
measures them:

``im2col_memory``       bytes of the input and of its im2col matrix for real
                        layers (``REAL_LAYERS``), the KH*KW blow-up
``median_seconds``      wall time: warm-up, repeats, median (GPU-aware)
``im2col_gemm_timings`` an im2col convolution's two steps apart (the copy, numpy's
                        GEMM) beside PyTorch's whole ``F.conv2d``, with bytes and flops
``conv_timings``        every implementation against ``F.conv2d``, checked, then timed

The measurements return plain rows (dicts); ``course_lib.viz.conv`` turns them into
tables (pandas DataFrames) and figures.
Symbols are those of ``course_lib`` (N, C, H, W, K, KH, KW, S, P, H_out, W_out, L).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from course_lib.conv import conv2d_im2col, conv2d_naive, conv_geometry, conv_output_size
from course_lib.machinery.fast_conv import Workspace, conv2d, unfold_batched


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


# --------------------------------------------------------------------------
# Timings (warm-up, repeats, median)
# --------------------------------------------------------------------------

def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
                   sync: Callable[[], None] = lambda: None) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed ones.

    ``sync`` is called before reading the clock (a GPU queues work and returns
    at once; ``course_lib.machinery.device.synchronize`` waits for it).
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


def _check_close(out: np.ndarray, reference: np.ndarray, impl: str, case: str, tolerance: float = 1e-4) -> None:
    """Raise AssertionError unless ``out`` equals F.conv2d's ``reference`` to ``tolerance`` x its largest value."""
    scale = float(np.max(np.abs(reference)))
    error = float(np.max(np.abs(out - reference)))
    if error > tolerance * scale:
        raise AssertionError(f"{impl} differs from F.conv2d on {case}: max abs diff "
                             f"{error:.3g}, largest output {scale:.3g}")


# --------------------------------------------------------------------------
# An im2col convolution's two steps, apart, against PyTorch's whole convolution
# --------------------------------------------------------------------------

def _copy_gemm_conv(layer: ConvLayer, x: np.ndarray, w: np.ndarray) -> tuple:
    """The three calls ``im2col_gemm_timings`` times on one layer, after checking the GEMM's result."""
    import torch
    import torch.nn.functional as F

    (SH, SW), (PH, PW), (H_out, W_out) = conv_geometry(x, layer.KH, layer.KW, layer.S, layer.P)
    geometry = (layer.KH, layer.KW, SH, SW, PH, PW, H_out, W_out)
    workspace = Workspace()                                      # reused, as conv2d's is in LeNet5
    copy = lambda: unfold_batched(x, *geometry, workspace)       # cols (C*KH*KW, N*L), the KH*KW-fold copy
    cols = unfold_batched(x, *geometry)                          # built once, for the GEMM alone
    w_row = w.reshape(layer.K, -1)                               # (K, C*KH*KW)
    out = np.empty((layer.K, cols.shape[1]), dtype=np.float32)   # (K, N*L)
    gemm = lambda: np.matmul(w_row, cols, out=out)               # the one GEMM
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    conv = lambda: F.conv2d(xt, wt, None, layer.S, layer.P)      # PyTorch's whole convolution
    gemm()
    nchw = out.reshape(layer.K, layer.N, H_out, W_out).transpose(1, 0, 2, 3)   # (N, K, H_out, W_out)
    _check_close(nchw, conv().numpy(), "im2col + GEMM", layer.name)
    return copy, gemm, conv


def im2col_gemm_timings(layers, repeats: int = 5, warmup: int = 1, seed: int = 0) -> list[dict]:
    """An im2col convolution's two steps timed apart, beside PyTorch's whole ``F.conv2d`` (CPU, float32).

    For each ``ConvLayer`` (random input and filters, no bias), with L = H_out*W_out:

    - copy: the im2col matrix cols (C*KH*KW, N*L), written by the tuned
      one-GEMM route's copy (``unfold_batched``, into a reused ``Workspace``,
      split over the cores; ``conv2d`` copies less on wide layers, ``takes_row_shift``):
      N*C*KH*KW*L numbers, about KH*KW/S^2 times the input;
    - gemm: numpy's GEMM alone, W_row (K, C*KH*KW) @ cols -> (K, N*L), its
      columns already built: 2*K*C*KH*KW*N*L flops (one multiply, one add each);
    - torch: PyTorch's whole ``F.conv2d`` on the CPU (oneDNN): the same flops.

    The GEMM's result is checked against ``F.conv2d`` before anything is timed.
    Returns one row per layer: ``im2col_memory``'s fields (layer, N, input_bytes,
    cols_bytes, ratio, ...) plus ``flops`` and the median seconds ``copy_s``,
    ``gemm_s``, ``torch_s`` (``median_seconds``: ``warmup`` calls, then ``repeats``).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for layer, row in zip(layers, im2col_memory(layers)):
        x = rng.standard_normal((layer.N, layer.C, layer.H, layer.W), dtype=np.float32)   # (N, C, H, W)
        w = rng.standard_normal((layer.K, layer.C, layer.KH, layer.KW), dtype=np.float32)  # (K, C, KH, KW)
        copy, gemm, conv = _copy_gemm_conv(layer, x, w)
        cols_numbers = row["cols_bytes"] // row["itemsize"]      # N*C*KH*KW*L
        rows.append({**row, "flops": 2 * layer.K * cols_numbers,  # each met by K filter rows: 2*K*C*KH*KW*N*L
                     "copy_s": median_seconds(copy, repeats, warmup),
                     "gemm_s": median_seconds(gemm, repeats, warmup),
                     "torch_s": median_seconds(conv, repeats, warmup)})
    return rows


IMPLEMENTATIONS = ("conv2d_naive", "conv2d_im2col", "conv2d", "PyTorch CPU", "PyTorch GPU")


def _implementations(x, w, b, stride, padding, device) -> tuple[dict, dict]:
    """``{name: call}`` for every implementation on one case, and ``{name: sync}`` for the GPU."""
    import torch
    import torch.nn.functional as F

    from course_lib.machinery.device import synchronize

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
        for impl in IMPLEMENTATIONS:
            if impl not in calls:
                rows.append({"case": name, "implementation": impl, "seconds": math.nan})
                continue
            out = calls[impl]()
            out = out.cpu().numpy() if hasattr(out, "cpu") else out         # a torch tensor, maybe on a GPU
            _check_close(out, reference, impl, name,                        # GPUs may use TF32 (10-bit mantissa)
                         tolerance=1e-2 if impl == "PyTorch GPU" else 1e-4)
            seconds = median_seconds(calls[impl], repeats, warmup, syncs.get(impl, lambda: None))
            rows.append({"case": name, "implementation": impl, "seconds": seconds})
    return rows

