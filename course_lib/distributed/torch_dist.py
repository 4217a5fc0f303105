"""The PyTorch twin of the kit's collectives: ``torch.distributed``, what students will use in practice.

``default_backend(P)``   gloo on CPU (TCP over loopback on one machine), NCCL
                         with one GPU per rank, unless ``COURSE_DEVICE=cpu``.
``ddp_on_rank_device``   a module on its rank's device, wrapped in ``DistributedDataParallel``.
``seeded_torch``         the same initial weights on every rank, without touching the caller's RNG.
``ddp_linear_worker``    data-parallel ``nn.Linear`` with DDP on one rank; ``linear_reference``
                         the same training in one process, which DDP must match.

Starting P processes with the process group initialised is not the lecture:
``course_lib.machinery.torch_launch`` (``launch_torch(fn, P)``, and
``torch_allreduce(arrays)`` beside the kit's ``allreduce``) does it.
"""

from __future__ import annotations

import contextlib

import numpy as np


def default_backend(world_size: int) -> str:
    """"nccl" when NCCL is built in and there is one GPU per rank, else "gloo".

    ``COURSE_DEVICE=cpu`` (``course_lib.machinery.device``) means gloo, as on a laptop.
    """
    import torch
    import torch.distributed as dist

    from course_lib.machinery.device import get_device
    if get_device().type == "cuda" and torch.cuda.device_count() >= world_size and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def ddp_on_rank_device(module, **ddp_kwargs):
    """Move ``module`` to this rank's device and wrap it in ``DistributedDataParallel``.

    Call it after joining the process group. Under NCCL, which reduces GPU
    tensors only, the device is this rank's GPU (``launch_torch`` selected it);
    under gloo, the CPU. Returns ``(ddp, device)``: inputs go to ``device`` too.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    ddp = DistributedDataParallel(module.to(device), device_ids=[device] if on_gpu else None, **ddp_kwargs)
    return ddp, device


@contextlib.contextmanager
def seeded_torch(seed: int):
    """Inside the block torch's CPU generator starts from ``seed``; after it, the caller's state is back.

    ``nn.Linear()`` and ``TorchLeNet5()`` draw their initial weights from torch's global
    generator. ``torch.manual_seed(seed)`` alone would give the same weights, but would also
    restart every later ``torch.randn`` of the caller (a notebook) from ``seed``: hidden global
    state (STYLE rule 6). The models here are built on the CPU (then moved), so only the CPU
    generator is seeded and restored; CUDA's generators are left alone.
    """
    import torch
    with torch.random.fork_rng(devices=[]):         # saves the CPU generator's state, restores it on exit
        torch.default_generator.manual_seed(seed)   # the CPU part of torch.manual_seed(seed)
        yield


def ddp_linear_worker(rank, world_size, X: np.ndarray, y: np.ndarray, steps: int, lr: float,
                      seed: int = 0) -> np.ndarray:
    """Train ``nn.Linear(D, 1)`` with ``DistributedDataParallel`` on this rank's rows; return the weights.

    Each rank takes its contiguous slice of the global batch (X: (n, D), y: (n,));
    DDP averages the gradients over ranks during ``backward()``, so with equal slices
    every step equals one step of single-process SGD on the whole batch
    (``linear_reference``). Returns the (1, D) weight and bias, flattened to (D + 1,).
    """
    import torch

    from .schedule import chunk_bounds
    with seeded_torch(seed):                      # the same initial weights on every rank
        linear = torch.nn.Linear(X.shape[1], 1, dtype=torch.float64)
    model, device = ddp_on_rank_device(linear)
    a, b = chunk_bounds(len(X), world_size)[rank]
    X_r, y_r = torch.from_numpy(X[a:b]).to(device), torch.from_numpy(y[a:b]).to(device)   # (n/P, D), (n/P,)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X_r).squeeze(1), y_r)
        loss.backward()                           # gradients all-reduced (averaged) here, in buckets
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.module.parameters()]).cpu().numpy()


def linear_reference(X: np.ndarray, y: np.ndarray, steps: int, lr: float, seed: int = 0) -> np.ndarray:
    """The same training in one process on the whole batch (what DDP must match)."""
    import torch
    with seeded_torch(seed):                      # the initial weights of ddp_linear_worker
        model = torch.nn.Linear(X.shape[1], 1, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(Xt).squeeze(1), yt).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
