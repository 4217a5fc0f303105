"""Lesson 13's experiment: GPipe on S processes, timed against S and M, beside the alpha-beta model.

``measure`` runs one pipelined step of the same MLP for every S (one launch of S
gloo processes each, every M inside it), checks every output and gradient
against the one-process model, and times stages 0 and 1's messages.
``calibrate`` reads the model's numbers off the measurement: ``t_micro`` (one
micro-batch through the whole model) from S = 1, alpha and beta from the
ping-pong (best repeats: the machine least disturbed). ``model_rows`` puts measured and modelled times side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from course_lib.distributed.pipeline import bubble_fraction, pipeline_time, whole_model_step
from course_lib.machinery.pipeline_processes import run_pipeline

SMALL, LARGE = 4, 1 << 20        # ping-pong message sizes (bytes): alpha from the small, beta from both


@dataclass
class Sweep:
    """``runs[S]``: the ``PipelineRun`` of S stages; ``errors[S, M]``: the largest relative difference
    of outputs and gradients from the one-process model; the batch was N rows of ``widths[0]``."""
    widths: list
    N: int
    runs: dict
    errors: dict


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|: one number per array, the scale of float rounding."""
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def measure(widths, N: int, S_values=(1, 2, 3, 4), M_values=(1, 2, 4, 8), repeats: int = 5,
            seed: int = 0, timeout: float = 120.0) -> Sweep:
    """Time a GPipe step of ``mlp_layers(widths)`` on N random rows (float32) for every S and M."""
    import torch
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], N)
    out_ref, grads_ref = whole_model_step(widths, torch.from_numpy(X), torch.from_numpy(y),
                                          torch.nn.functional.cross_entropy, seed=seed)
    runs, errors, wanted = {}, {}, [out_ref.numpy()] + [g.numpy() for g in grads_ref]
    for S in S_values:
        runs[S] = run_pipeline(widths, X, y, S, M_values, repeats=repeats, seed=seed, timeout=timeout,
                               pingpong_sizes=(SMALL, LARGE) if S == 2 else ())
        for M in M_values:
            got = [runs[S].outputs[M]] + runs[S].grads[M]
            errors[S, M] = max(relative_error(g, w) for g, w in zip(got, wanted, strict=True))
    return Sweep(list(widths), N, runs, errors)


def calibrate(sweep: Sweep) -> dict:
    """The model's numbers: ``t_micro[M]`` = T(S=1, M) / M, alpha, beta, ``message_bytes[M]``.

    T(S=1, M) is the one-stage run's least CPU time of a batch: one process computing alone uses
    its core all the time, so its CPU seconds are its time on an idle machine, which another job
    on a shared one does not inflate (its wall-clock time it does)."""
    link = next(run.link for run in sweep.runs.values() if run.link)
    alpha = link[SMALL]
    beta = max(0.0, (link[LARGE] - link[SMALL]) / (LARGE - SMALL))
    one, width = sweep.runs[1], max(sweep.widths[1:-1])     # the widest boundary: every hidden layer's here
    itemsize = 4                                             # float32 activations
    return {"t_micro": {M: float(np.min(t)) / M for M, t in one.cpu.items()}, "alpha": alpha, "beta": beta,
            "message_bytes": {M: -(-sweep.N // M) * width * itemsize for M in one.times}}


def model_rows(sweep: Sweep, cal: dict, cores: int) -> list[dict]:
    """One row per (S, M): measured median [min, max] seconds, CPU seconds, the model (a core per
    stage, and ``cores`` shared), the bubble."""
    rows = []
    for S, run in sweep.runs.items():
        for M, t in run.times.items():
            args = (cal["t_micro"][M], cal["alpha"], cal["beta"], cal["message_bytes"][M])
            rows.append({"S": S, "M": M, "median": float(np.median(t)), "min": float(np.min(t)),
                         "max": float(np.max(t)), "cpu": float(np.median(run.cpu[M])),
                         "model": pipeline_time(S, M, *args), "model_cores": pipeline_time(S, M, *args, cores=cores),
                         "bubble": bubble_fraction(S, M)})
    return rows
