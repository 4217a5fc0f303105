"""Exercise 11's experiment: DDP's ``bucket_cap_mb`` swept on P processes, and what a model needs.

Lesson 11 models one iteration as a timeline: backprop produces gradients from the last layer to
the first, and each bucket's ring all-reduce, ``2(P-1) alpha + 2 n (P-1)/P / bandwidth`` for n
bytes, can start once the bucket's last gradient is ready. Small buckets start early but pay the
latency ``2(P-1) alpha`` many times; one large bucket pays it once but waits for all of backprop.
Exercise 11 predicts the best bucket size from measurements; this module measures.

``sweep_mlp``      the network: ``depth`` layers ``Linear(width, width)`` + ReLU (many small
                   gradients, little compute: the latency side of the trade-off)
``sweep_worker``   one rank: logs when each gradient is ready (backprop alone, ``no_sync``), times
                   lone all-reduces of several sizes, then times backward() under DDP for every
                   ``bucket_cap_mb``, the caps taking turns round after round
``measure_sweep``  runs it on ``world_size`` processes (gloo) and returns the **profile**: a dict
                   of plain numbers (its keys are listed in ``measure_sweep``'s docstring)

Times are seconds. Every timed step starts after a barrier, so that both ranks start together.
"""

from __future__ import annotations

import time

import numpy as np

from course_lib.distributed.torch_dist import ddp_on_rank_device, seeded_torch

CAPS_MB = (0.0005, 0.02, 0.1, 25.0)      # one bucket per gradient ... one bucket for all of them


def sweep_mlp(width: int = 64, depth: int = 32, seed: int = 0):
    """``depth`` x (``Linear(width, width)``, ReLU): 2 * depth gradients of width^2 and width elements."""
    import torch
    with seeded_torch(seed):
        layers = [m for _ in range(depth) for m in (torch.nn.Linear(width, width), torch.nn.ReLU())]
        return torch.nn.Sequential(*layers)


def _step(ddp, x) -> tuple[float, float]:
    """One forward and backward pass, both ranks starting together: (forward s, backward s)."""
    import torch.distributed as dist
    dist.barrier()
    start = time.perf_counter()
    loss = ddp(x).square().mean()
    middle = time.perf_counter()
    ddp.zero_grad()
    loss.backward()
    return middle - start, time.perf_counter() - middle


def _ready_times(ddp, x, passes: int) -> tuple[list, list]:
    """Backprop alone (``no_sync``): per pass, {parameter name: s after backward() began}; forward times."""
    log, clock = {}, [0.0]
    handles = [p.register_post_accumulate_grad_hook(lambda p, name=name: log.__setitem__(
        name, time.perf_counter() - clock[0])) for name, p in ddp.module.named_parameters()]
    ready, forward = [], []
    with ddp.no_sync():
        for _ in range(passes):
            log.clear()
            import torch.distributed as dist
            dist.barrier()
            start = time.perf_counter()
            loss = ddp(x).square().mean()
            ddp.zero_grad()
            clock[0] = time.perf_counter()
            forward.append(clock[0] - start)
            loss.backward()
            ready.append(dict(log))
    for handle in handles:
        handle.remove()
    return ready, forward


def _lone_allreduces(sizes_bytes, repeats: int) -> list[tuple[int, float]]:
    """(bytes, s) of float32 all-reduces of each size, alone, the sizes taking turns."""
    import torch
    import torch.distributed as dist
    buffers = [torch.zeros(max(1, n // 4)) for n in sizes_bytes]
    out = []
    for _ in range(repeats):
        for buf in buffers:
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(buf)
            out.append((4 * buf.numel(), time.perf_counter() - start))
    return out


def sweep_worker(rank: int, world_size: int, caps_mb, width: int, depth: int, batch_size: int,
                 rounds: int, warmup: int, seed: int) -> dict:
    """One rank (``torch.distributed`` initialised); see ``measure_sweep``."""
    import torch
    x = torch.randn(batch_size // world_size, width, generator=torch.Generator().manual_seed(seed + rank))
    models = [ddp_on_rank_device(sweep_mlp(width, depth, seed), bucket_cap_mb=cap)[0] for cap in caps_mb]
    for _ in range(warmup):                   # DDP re-forms its buckets after the first step
        for ddp in models:
            _step(ddp, x)
    ready, forward = _ready_times(models[0], x, rounds)
    lone = _lone_allreduces([4 * width, 4 * width * width, 4 * width * (width + 1) * depth], rounds)
    backward = [[_step(ddp, x)[1] for ddp in models] for _ in range(rounds)]
    return {"params": [(name, p.numel()) for name, p in models[0].module.named_parameters()],
            "ready": ready, "forward": forward, "lone": lone, "backward": backward}


def measure_sweep(caps_mb=CAPS_MB, width: int = 64, depth: int = 32, batch_size: int = 64, rounds: int = 15,
                  warmup: int = 3, world_size: int = 2, seed: int = 0, *, timeout: float = 120.0,
                  start_method: str | None = None) -> dict:
    """``sweep_worker`` on ``world_size`` local processes over gloo; the profile, every rank's times merged.

    Returns
    -------
    dict with
    ``world_size``: P; ``itemsize``: 4 (float32 gradients); ``caps_mb``: the caps swept;
    ``params``: [(name, elements)] in ``model.parameters()`` order;
    ``ready``: one entry per logged pass of backprop alone, a list of P dicts (one per rank)
    {parameter name: s from the start of backward() until its gradient was ready};
    ``forward``: (passes, P) array, s of each forward pass;
    ``lone``: [(bytes, s)], every repeat of a lone all-reduce, the slower rank's time;
    ``backward``: {cap_mb: (rounds, P) array}, s of backward() under DDP with that cap
    """
    from course_lib.experiments.comm_hooks import import_what_ddp_imports
    from course_lib.machinery.torch_launch import launch_torch
    import_what_ddp_imports()
    ranks = launch_torch(sweep_worker, world_size, args=(tuple(caps_mb), width, depth, batch_size, rounds,
                                                          warmup, seed),
                         backend="gloo", timeout=timeout, start_method=start_method)
    backward = np.array([r["backward"] for r in ranks])                # (P, rounds, caps)
    lone = [(n, max(r["lone"][i][1] for r in ranks)) for i, (n, _) in enumerate(ranks[0]["lone"])]
    return {"world_size": world_size, "itemsize": 4, "caps_mb": tuple(caps_mb), "params": ranks[0]["params"],
            "ready": [[r["ready"][i] for r in ranks] for i in range(rounds)],
            "forward": np.array([r["forward"] for r in ranks]).T, "lone": lone,
            "backward": {cap: backward[:, :, k].T for k, cap in enumerate(caps_mb)}}
