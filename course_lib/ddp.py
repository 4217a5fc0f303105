"""Data-parallel LeNet-5 with ``torch.nn.parallel.DistributedDataParallel`` (lesson 08).

Lecture 5, data parallelism: every learner holds a full copy of the model,
takes its share of each global minibatch, and the gradients are summed (here
averaged) across learners before every update, so all copies stay identical.
With P = ``world_size`` ranks and a global batch of N images, rank r takes the
contiguous slice ``chunk_bounds(N, P)[r]`` of each batch (N / P images). Its
loss is the mean over its slice; DDP *averages* the gradients over ranks, so
the averaged gradient is the mean over all N images, exactly the gradient of
single-process training on the whole batch (up to the order of additions).

DDP does not wait for the whole backward pass: it groups parameters into
*buckets* (about ``bucket_cap_mb`` MiB each, in reverse order of
``model.parameters()``, which is roughly the order backprop produces their
gradients) and starts a bucket's all-reduce as soon as its last gradient is
ready, while backprop carries on with earlier layers: "no data dependency
between gradients across layers", the overlap Goyal et al. (2017) rely on.
A ``BackwardLog`` (``record_step=``) logs every gradient and every bucket's all-reduce: timing
machinery, not the lecture (``course_lib.machinery.backward_log``).

Reading order
-------------
1. ``global_batches``  the same shuffled global batches for every rank and the twin.
2. ``train_lenet``     the training loop, one function for both cases: a plain
                       model in one process, or a DDP-wrapped model on one rank.
3. ``ddp_worker``      what each rank runs (inside ``launch_torch`` or ``torchrun``); it
                       lives here, never in a notebook: a spawned rank imports it by name.
4. ``train_single`` / ``train_ddp``  the single-process twin and the P-rank run.
``python -m course_lib.ddp`` runs the same training as a script, alone or under ``torchrun``; its
command line is machinery (``course_lib.machinery.ddp_cli``), not the lecture.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.checks import check_int
from course_lib.distributed.schedule import chunk_bounds
from course_lib.distributed.torch_dist import ddp_on_rank_device, seeded_torch
from course_lib.lenet import TorchLeNet5
from course_lib.machinery.backward_log import BackwardLog   # timing hooks, not the lecture

TORCHRUN_COMMAND = ("torchrun --nnodes=2 --nproc_per_node=1 --node_rank=0 "
                    "--master_addr=10.0.0.1 --master_port=29500 -m course_lib.ddp --steps 50")


def _check_batch(batch_size: int, world_size: int) -> None:
    """Each rank must get the same number of images, or DDP's average is not the global mean."""
    check_int(batch_size, "batch_size", 1)
    if batch_size % world_size:
        raise ValueError(f"global batch_size = {batch_size} is not divisible by world_size = {world_size}: "
                         f"ranks would get {batch_size // world_size} or {batch_size // world_size + 1} images, "
                         f"and DDP's average of their mean gradients would not be the mean over the batch; "
                         f"use a multiple of {world_size}")


def global_batches(n: int, batch_size: int, steps: int, seed: int = 0) -> np.ndarray:
    """Indices of ``steps`` global minibatches over n examples, reshuffled every epoch.

    Returns
    -------
    idx : int64 ndarray, shape (steps, batch_size); every rank computes the same one from ``seed``
    """
    if batch_size > n:
        raise ValueError(f"batch_size = {batch_size} is larger than the data set ({n} examples)")
    rng, batches, order = np.random.default_rng(seed), [], np.empty(0, dtype=np.int64)
    while len(batches) < steps:
        if len(order) < batch_size:                       # start a new epoch; drop the ragged end
            order = rng.permutation(n)
        batches.append(order[:batch_size])
        order = order[batch_size:]
    return np.array(batches, dtype=np.int64).reshape(steps, batch_size)


def flat_parameters(model: torch.nn.Module) -> np.ndarray:
    """Every parameter, in ``model.parameters()`` order, as one float64 vector (61,706 for LeNet-5)."""
    return torch.cat([p.detach().reshape(-1).cpu().double() for p in model.parameters()]).numpy()


def train_lenet(model, x: np.ndarray, y: np.ndarray, batches: np.ndarray, *, lr: float, momentum: float,
                rank: int = 0, world_size: int = 1, log: BackwardLog | None = None,
                record_step: int | None = None) -> dict:
    """SGD on ``model`` (plain, or DDP-wrapped on rank ``rank`` of P) over the global ``batches``.

    Parameters
    ----------
    model : TorchLeNet5, or ``DistributedDataParallel(TorchLeNet5())`` on each of P ranks
    x : (n, 1, 32, 32) float32 images; y : (n,) int64 labels
    batches : (steps, N) int indices from ``global_batches``; rank r uses its slice of each
    log, record_step : a ``BackwardLog`` attached to the DDP model logs this step's backward pass

    Returns
    -------
    dict with ``losses`` (steps,), the mean loss over each *global* batch
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    first = next(model.parameters())
    device, dtype, losses = first.device, first.dtype, []
    for step, idx in enumerate(batches):
        a, b = chunk_bounds(len(idx), world_size)[rank]
        xb = torch.from_numpy(x[idx[a:b]]).to(device, dtype)          # (N/P, 1, 32, 32)
        yb = torch.from_numpy(y[idx[a:b]]).to(device)                  # (N/P,)
        loss = F.cross_entropy(model(xb), yb)         # mean over my N/P images
        opt.zero_grad()
        if log is not None and step == record_step:
            log.start()
        loss.backward()                                # under DDP: gradients averaged over ranks, in buckets
        if log is not None:
            log.stop()
        opt.step()
        losses.append(_global_mean(loss.detach(), world_size))
    return {"losses": np.array(losses)}


def _global_mean(loss: torch.Tensor, world_size: int) -> float:
    """The mean of the ranks' losses = the mean over the global batch (equal slices)."""
    if world_size > 1:
        import torch.distributed as dist
        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= world_size
    return float(loss)


def _new_model(seed: int, dtype=torch.float32) -> TorchLeNet5:
    """A LeNet-5 whose initial weights depend only on ``seed`` (the same on every rank and in the
    twin), drawn without touching the caller's torch random state (see ``seeded_torch``)."""
    with seeded_torch(seed):
        return TorchLeNet5().to(dtype)


def ddp_worker(rank: int, world_size: int, x: np.ndarray, y: np.ndarray, steps: int, batch_size: int,
               lr: float = 0.05, momentum: float = 0.9, seed: int = 0, bucket_cap_mb: float | None = None,
               record_step: int | None = None, dtype: str = "float32") -> dict:
    """One rank of data-parallel training (``torch.distributed`` already initialised).

    Wraps a ``TorchLeNet5`` in ``DistributedDataParallel`` (DDP also broadcasts rank 0's
    weights at the start) and trains it on this rank's slice of each global batch.

    Parameters
    ----------
    x, y : all training images (n, 1, 32, 32) and labels (n,); the rank takes its slices
    steps, batch_size : number of SGD steps and the *global* batch N (divisible by P)
    bucket_cap_mb : DDP's bucket size in MiB (None: DDP's default, 25)
    record_step : log this step's backward pass (a ``BackwardLog``)
    dtype : "float32" or "float64", the model's (images are converted to it)

    Returns
    -------
    dict: ``params`` (61706,) float64, ``losses`` (steps,), ``events`` (the recorded step's
    ``BackwardLog``), ``buckets`` (parameter names per bucket, from the log)
    """
    _check_batch(batch_size, world_size)
    torch.set_num_threads(1)                          # P processes share the cores
    ddp, _ = ddp_on_rank_device(_new_model(seed, getattr(torch, dtype)), bucket_cap_mb=bucket_cap_mb)
    log = BackwardLog()
    if record_step is not None:
        log.attach(ddp)
    out = train_lenet(ddp, x, y, global_batches(len(x), batch_size, steps, seed), lr=lr, momentum=momentum,
                      rank=rank, world_size=world_size, log=log, record_step=record_step)
    out["events"] = log.events
    out["params"] = flat_parameters(ddp.module)
    out["buckets"] = [e[2] for e in out["events"] if e[0] == "allreduce"]
    return out


def train_single(x: np.ndarray, y: np.ndarray, steps: int, batch_size: int, lr: float = 0.05,
                 momentum: float = 0.9, seed: int = 0, dtype: str = "float32") -> dict:
    """The single-process twin: the same model, batches and optimizer on the whole global batch.

    Returns a dict with ``params`` (61706,) and ``losses`` (steps,), as ``ddp_worker``.
    """
    _check_batch(batch_size, 1)
    model = _new_model(seed, getattr(torch, dtype))
    out = train_lenet(model, x, y, global_batches(len(x), batch_size, steps, seed), lr=lr, momentum=momentum)
    out["params"] = flat_parameters(model)
    return out


def train_ddp(x: np.ndarray, y: np.ndarray, steps: int, batch_size: int, world_size: int = 2, *,
              lr: float = 0.05, momentum: float = 0.9, seed: int = 0, bucket_cap_mb: float | None = None,
              record_step: int | None = None, dtype: str = "float32", backend: str = "gloo",
              timeout: float = 120.0, start_method: str | None = None) -> list[dict]:
    """Train LeNet-5 with DDP on ``world_size`` local processes; return every rank's ``ddp_worker`` dict.

    Starting the ranks (a process each, joining the group) takes a few seconds; under the
    "spawn" start method each rank also imports torch itself (fork inherits it).
    """
    from course_lib.machinery.torch_launch import launch_torch
    _check_batch(batch_size, world_size)
    return launch_torch(ddp_worker, world_size, args=(x, y, steps, batch_size, lr, momentum, seed,
                                                      bucket_cap_mb, record_step, dtype),
                        backend=backend, timeout=timeout, start_method=start_method)


if __name__ == "__main__":        # python -m course_lib.ddp, alone or under torchrun: machinery.ddp_cli
    from course_lib.machinery.ddp_cli import run
    run()
