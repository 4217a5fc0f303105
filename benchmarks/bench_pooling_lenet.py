"""max_pool2d / max_pool2d_backward against PyTorch, and one LeNet-5 epoch, in one run.

Target (issue 14): forward <= 1.5x ``F.max_pool2d`` on (64,16,28,28) k2 s2 and
(16,64,112,112) k3 s2. The backward pass is reported beside autograd's kernel
(``max_pool2d_with_indices_backward``, which, like ours given ``argmax``,
reuses the winners found by the forward pass): at k2 s2 it is bound by its
masked writes into strided views (docs/benchmarks.md). One training epoch of the
numpy LeNet-5 against the PyTorch twin on the CPU is reported (no target),
with all cores and with one thread each.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import Result, median_time, same_threads
from course_lib.data import load_digits
from course_lib.experiments.lenet_training import train
from course_lib.lenet import LeNet5, TorchLeNet5, copy_weights
from course_lib.machinery.fast_pool import max_pool2d_backward_fast as max_pool2d_backward   # the tuned one
from course_lib.pooling import max_pool2d

# name, x shape (N, C, H, W), kernel, stride
CASES = [
    ("(64,16,28,28) k2 s2", (64, 16, 28, 28), 2, 2),
    ("(16,64,112,112) k3 s2", (16, 64, 112, 112), 3, 2),
]
FORWARD_TARGET = 1.5
BACKWARD_TARGET = None   # issue 14: reported (k2 s2 is bound by its masked writes; docs/benchmarks.md)


def _pooling(rng) -> list[Result]:
    results = []
    for name, shape, k, s in CASES:
        x = rng.standard_normal(shape, dtype=np.float32)
        xt = torch.from_numpy(x)
        out, argmax = max_pool2d(x, k, s, return_indices=True)
        dout = rng.standard_normal(out.shape, dtype=np.float32)
        doutt = torch.from_numpy(dout)
        with torch.no_grad():
            _, indices = F.max_pool2d(xt, k, s, return_indices=True)
            t_torch = median_time(lambda: F.max_pool2d(xt, k, s), min_time=0.05)
            t_ours = median_time(lambda: max_pool2d(x, k, s), min_time=0.05)
            tb_torch = median_time(lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                doutt, xt, [k, k], [s, s], [0, 0], [1, 1], False, indices), min_time=0.05)
            tb_ours = median_time(lambda: max_pool2d_backward(dout, x, k, s, argmax=argmax), min_time=0.05)
            t_idx = median_time(lambda: max_pool2d(x, k, s, return_indices=True), min_time=0.05)
            t_idx_torch = median_time(lambda: F.max_pool2d(xt, k, s, return_indices=True), min_time=0.05)
        results.append(Result("pool forward", name, t_ours / t_torch, FORWARD_TARGET,
                              note=f"torch {t_torch * 1e3:.2f} ms, ours {t_ours * 1e3:.2f} ms"))
        results.append(Result("pool forward", name + " with indices", t_idx / t_idx_torch,
                              note=f"torch {t_idx_torch * 1e3:.2f} ms, ours {t_idx * 1e3:.2f} ms"))
        results.append(Result("pool backward", name, tb_ours / tb_torch, BACKWARD_TARGET,
                              note=f"torch {tb_torch * 1e3:.2f} ms, ours {tb_ours * 1e3:.2f} ms (given the winners)"))
    return results


def _epoch_seconds(model, data, repeats: int = 3) -> float:
    """Median wall time of one training epoch (after a one-epoch warm-up on 64 images)."""
    warmup = data._replace(x_train=data.x_train[:64], y_train=data.y_train[:64],
                           x_test=data.x_test[:1], y_test=data.y_test[:1])
    timed = data._replace(x_test=data.x_test[:1], y_test=data.y_test[:1])   # leave evaluation out
    train(model, warmup, epochs=1, progress=False)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        train(model, timed, epochs=1, lr=0.01, progress=False)
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def _lenet() -> list[Result]:
    """One epoch with all cores, then with one thread each (BLAS and torch): on a busy
    machine, idle pool threads that spin for a core can make the first slower."""
    from threadpoolctl import threadpool_limits

    data, results = load_digits(), []
    for label, threads in (("all cores", None), ("1 thread each", 1)):
        ours, theirs = LeNet5(seed=0), TorchLeNet5()
        copy_weights(ours, theirs)
        before = torch.get_num_threads()
        with threadpool_limits(limits=threads):
            torch.set_num_threads(threads or before)
            t_torch = _epoch_seconds(theirs, data)
            t_ours = _epoch_seconds(ours, data)
        torch.set_num_threads(before)
        results.append(Result("LeNet-5 epoch", f"numpy / PyTorch CPU, {label}, {len(data.x_train)} digits, "
                              f"batch 32", t_ours / t_torch, note=f"torch {t_torch:.2f} s, numpy {t_ours:.2f} s"))
    return results


def run() -> list[Result]:
    threads = same_threads()
    results = _pooling(np.random.default_rng(0))
    results[0].note += f", {threads} threads"
    return results + _lenet()
