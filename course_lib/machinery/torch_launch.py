"""Start P processes with ``torch.distributed`` initialised: ``launch_torch`` and ``torch_allreduce``.

Not the lecture: the lesson's PyTorch twin (default backend, DDP on a rank's
device, seeded initial weights, a DDP worker) is
``course_lib.distributed.torch_dist``; this module only starts it.

``launch_torch(fn, P, args=...)`` starts P processes with the process group
initialised (rendezvous through a temporary file, no port to choose) and runs
``fn(rank, world_size, *args)`` in each: the data-parallel lesson gives it a
training function that wraps its model in ``DistributedDataParallel``. The
same function runs under ``torchrun`` on several machines, where torchrun
sets RANK / WORLD_SIZE / MASTER_ADDR and ``init_process_group("gloo")`` reads them.

``torch_allreduce(arrays)`` runs ``torch.distributed.all_reduce`` on P
processes and returns the same ``AllreduceResult`` as ``launch.allreduce``, so
a notebook or the benchmark can put the two side by side. The backend is
gloo on CPU (TCP over loopback on one machine) and NCCL when there are at
least P GPUs (one per rank), unless ``COURSE_DEVICE=cpu``.

Process start-up, failures and clean-up are ``procs.run_processes``'s.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import timedelta
from multiprocessing import get_context, shared_memory

import numpy as np

from course_lib.checks import check_arrays, check_int
from course_lib.distributed.torch_dist import default_backend

from .launch import AllreduceResult, through_shared_rows
from .procs import run_processes


def _torch_worker(rank, world_size, init_file, backend, timeout, fn, args):
    """In a worker: join the process group, run fn(rank, world_size, *args), leave the group."""
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)                      # P processes share the cores
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout))
    result = fn(rank, world_size, *args)
    dist.destroy_process_group()   # only on success: after a failure, leaving the group before the
    return result                  # parent has our report would make the peers fail first


def _choose_backend(backend: str | None, world_size: int) -> str:
    """``backend``, or ``default_backend(P)`` when None; a ValueError unless "gloo" or "nccl"."""
    backend = backend or default_backend(world_size)      # a ValueError when COURSE_DEVICE cannot be had
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    return backend


def launch_torch(fn, world_size: int, *, args: tuple = (), backend: str | None = None,
                 timeout: float = 120.0, start_method: str | None = None) -> list:
    """Run ``fn(rank, world_size, *args)`` on P processes with ``torch.distributed`` initialised.

    Parameters
    ----------
    fn : a function of a course_lib module (not a notebook)
    world_size : number of processes P
    backend : "gloo", "nccl" or None (``default_backend(P)``)
    timeout : seconds for everything, start-up (importing torch in every rank) included
    start_method : None means the platform default, except "spawn" for NCCL (CUDA cannot fork)

    Returns the P return values, by rank; raises ``CollectiveError`` naming a failed rank.
    """
    world_size = check_int(world_size, "world_size", 1)
    import torch.distributed  # noqa: F401  imported once here, forked children need not import it
    backend = _choose_backend(backend, world_size)
    if backend == "nccl" and start_method in (None, "fork"):
        start_method = "spawn"
    with tempfile.TemporaryDirectory(prefix="course_lib_rdv_") as tmp:
        init_file = os.path.join(tmp, "rendezvous")     # must not exist yet; removed with tmp
        rank_args = [(world_size, init_file, backend, timeout, fn, tuple(args))] * world_size
        return run_processes(_torch_worker, rank_args, timeout=timeout, start_method=start_method)


def _torch_allreduce_fn(rank, world_size, io_name, N, dtype, repeats):
    """In a worker: all_reduce my row of the shared (P, N) array ``repeats`` times, timed."""
    import torch
    import torch.distributed as dist
    io = shared_memory.SharedMemory(name=io_name)
    try:
        rows = np.ndarray((world_size, N), np.dtype(dtype), io.buf)         # (P, N)
        x = torch.from_numpy(rows[rank])                                   # shares the memory
        cuda = dist.get_backend() == "nccl"
        work = x.clone().cuda() if cuda else x.clone()
        elapsed = []
        for _ in range(repeats):
            work.copy_(x)
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(work, op=dist.ReduceOp.SUM)
            if cuda:
                torch.cuda.synchronize()
            elapsed.append(time.perf_counter() - start)
        x.copy_(work.cpu())
        return elapsed
    finally:
        rows = x = None
        io.close()


def torch_allreduce(arrays, *, backend: str | None = None, timeout: float = 120.0, repeats: int = 1,
                    start_method: str | None = None) -> AllreduceResult:
    """``torch.distributed.all_reduce`` (SUM) of P arrays on P processes.

    Parameters and result as ``launch.allreduce``; ``bytes_sent``/``bytes_received``
    are zeros (torch does not report them), ``transport`` is the backend name.
    """
    arrays = check_arrays(arrays)
    P, shape, dtype = len(arrays), arrays[0].shape, arrays[0].dtype
    repeats = check_int(repeats, "repeats", 1)
    backend = _choose_backend(backend, P)               # every check before the segment exists
    N = int(np.prod(shape))
    outputs, elapsed = through_shared_rows(arrays, lambda io_name: launch_torch(
        _torch_allreduce_fn, P, args=(io_name, N, dtype.str, repeats), backend=backend, timeout=timeout,
        start_method=start_method))
    zeros = np.zeros(P, dtype=np.int64)
    return AllreduceResult(outputs, zeros, zeros.copy(), np.array(elapsed).T, "torch.distributed", backend,
                           1, start_method or get_context().get_start_method(), N * dtype.itemsize)


def failing_worker(rank, world_size, bad_rank: int) -> int:
    """Tests: rank ``bad_rank`` raises, the others wait in a barrier (which then fails)."""
    import torch.distributed as dist
    if rank == bad_rank:
        raise ValueError(f"rank {rank} was told to fail")
    dist.barrier()
    return rank
