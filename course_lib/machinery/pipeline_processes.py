"""GPipe's stages on S processes: ``torch.distributed`` point-to-point send/recv over gloo.

Not the lecture: the schedule, the per-stage step and the time model are
``course_lib.distributed.pipeline``; this module only gives ``run_stage`` a
transport (``dist.send`` / ``dist.recv``) and starts the S stages with
``torch_launch.launch_torch`` (which uses ``procs.run_processes``: timeouts,
clean-up, a failing stage named as its rank).

``run_pipeline(widths, X, y, S, M_values)`` runs one pipelined forward and
backward step per micro-batch count M (``repeats`` times, timed) and returns the
outputs and every parameter's gradient in model order, to compare with
``pipeline.whole_model_step``. ``pingpong_sizes`` also times one-way messages
between stages 0 and 1 (alpha and beta of the alpha-beta model).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np

from course_lib.checks import check_int
from course_lib.distributed.pipeline import mlp_layers, run_stage, split_layers
from course_lib.distributed.schedule import chunk_bounds

from .torch_launch import launch_torch


@dataclass
class PipelineRun:
    """What ``run_pipeline`` measured, by micro-batch count M.

    outputs[M] : (N, widths[-1]) ndarray, the last stage's outputs, micro-batches in order
    grads[M]   : list of ndarrays, d loss/d p for every parameter of the whole model, in model order
    times[M]   : (repeats,) seconds per batch, the slowest stage's (barrier to barrier)
    cpu[M]     : (repeats,) CPU seconds per batch, summed over the S stages (more than times[M]:
                 stages computed at once; equal: they took turns)
    link       : {message bytes: one-way seconds between stages 0 and 1}, empty unless asked
    """
    S: int
    outputs: dict = field(default_factory=dict)
    grads: dict = field(default_factory=dict)
    times: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)
    link: dict = field(default_factory=dict)


def _transport(dtype, die_on_send: bool):
    """``send(tensor, dst)`` and ``recv(src, shape)`` (a new ``dtype`` tensor) on ``torch.distributed``;
    a stage told to die SIGKILLs itself at its first send (tests: a stage lost mid-step)."""
    import torch
    import torch.distributed as dist

    def send(t, dst):
        if die_on_send:
            os.kill(os.getpid(), signal.SIGKILL)
        dist.send(t.contiguous(), dst)

    def recv(src, shape):
        buf = torch.empty(shape, dtype=dtype)
        dist.recv(buf, src)
        return buf
    return send, recv


def _pingpong(rank, sizes, repeats) -> dict:
    """Stages 0 and 1 bounce messages of each size; half the best round trip is one message's time
    (the best: the link itself, with the receiver waiting on its own core; on a busy machine a message
    often waits longer, for its receiver to be scheduled, and the median shows that instead)."""
    import torch
    import torch.distributed as dist
    one_way = {}
    for size in sizes:
        buf, trips = torch.zeros(max(1, size // 4), dtype=torch.float32), []
        for _ in range(1 + repeats):                         # the first connects the pair
            start = time.perf_counter()
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            elif rank == 1:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            trips.append(time.perf_counter() - start)
        one_way[size] = min(trips[1:]) / 2
    dist.barrier()
    return one_way if rank == 0 else {}


def pipeline_worker(rank, S, widths, X, y, M_values, repeats, seed, dtype, pingpong_sizes=(), die_stage=None):
    """In a worker: stage ``rank`` of S runs ``pipeline.run_stage`` for every M, ``repeats`` times each.

    Returns {"link": ..., M: (outputs or None, [grads of my parameters], [seconds, CPU seconds per repeat])}.
    """
    import torch
    import torch.distributed as dist
    layers = mlp_layers(widths, seed, getattr(torch, dtype))
    block = torch.nn.Sequential(*split_layers(layers, S)[rank])
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    features = widths[sum(len(g) for g in split_layers(layers, S)[:rank])]   # my input's width
    send, recv = _transport(getattr(torch, dtype), die_on_send=rank == die_stage)
    result = {"link": _pingpong(rank, pingpong_sizes, 20) if pingpong_sizes and S > 1 else {}}
    for M in M_values:
        in_shapes = [(b - a, features) for a, b in chunk_bounds(len(X), M)]
        times = []
        for _ in range(1 + repeats):                         # the first is a warm-up: gloo connects lazily
            block.zero_grad(set_to_none=True)
            dist.barrier()
            start, cpu_start = time.perf_counter(), time.process_time()
            outs = run_stage(rank, S, block, Xt, yt, M, torch.nn.functional.cross_entropy, send, recv, in_shapes)
            dist.barrier()                                   # the batch ends when every stage is done
            times.append((time.perf_counter() - start, time.process_time() - cpu_start))
        out = torch.cat(outs).numpy() if rank == S - 1 else None
        result[M] = (out, [p.grad.numpy().copy() for p in block.parameters()], np.array(times[1:]).T)
    return result


def run_pipeline(widths, X: np.ndarray, y: np.ndarray, S: int, M_values=(1,), *, repeats: int = 1, seed: int = 0,
                 timeout: float = 120.0, pingpong_sizes=(), die_stage: int | None = None) -> PipelineRun:
    """One GPipe step of ``mlp_layers(widths, seed)`` on S gloo processes for each M in ``M_values``.

    X : (N, widths[0]) float32 or float64 ndarray; y : (N,) int64 class indices
    Raises ``CollectiveError`` naming the stage (its rank) that raised, died or hung.
    """
    S, repeats = check_int(S, "S (stages)", 1), check_int(repeats, "repeats", 1)
    per_rank = launch_torch(pipeline_worker, S, backend="gloo", timeout=timeout,
                            args=(widths, X, y, tuple(M_values), repeats, seed, str(X.dtype),
                                  tuple(pingpong_sizes), die_stage))
    run = PipelineRun(S, link=per_rank[0]["link"])
    for M in M_values:
        run.outputs[M] = per_rank[-1][M][0]
        run.grads[M] = [g for r in per_rank for g in r[M][1]]                # stage order = model order
        run.times[M] = np.max([r[M][2][0] for r in per_rank], axis=0)        # (repeats,), slowest stage
        run.cpu[M] = np.sum([r[M][2][1] for r in per_rank], axis=0)          # (repeats,), all stages
    return run
