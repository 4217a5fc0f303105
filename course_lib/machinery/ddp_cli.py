"""``python -m course_lib.ddp``: lesson 8's DDP training as a script, alone or under ``torchrun``.

Not the lecture: the training is ``course_lib.ddp``'s (``ddp_worker``, ``train_ddp``,
``train_single``); this module only reads the command line and, under torchrun, joins the
process group that torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

    python -m course_lib.ddp --steps 20                           # 2 local ranks vs one process
    torchrun --standalone --nproc_per_node=2 -m course_lib.ddp    # one rank of a torchrun job
    torchrun ... -m course_lib.ddp --save final.npz               # rank 0 also writes its weights

Across machines (a torchrun on each, static or c10d rendezvous, the environment that matters,
SLURM, how failures show up): ``docs/multinode.md``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from course_lib.ddp import ddp_worker, train_ddp, train_single
from course_lib.distributed.torch_dist import default_backend


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m course_lib.ddp", description=(
        "Train LeNet-5 on the digits with DistributedDataParallel. Under torchrun (RANK and "
        "WORLD_SIZE set) this process is one rank; alone, it starts --world-size local ranks "
        "and checks them against single-process training."))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (all ranks together)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--world-size", type=int, default=2, help="local ranks when not under torchrun")
    parser.add_argument("--backend", default=None, help=(
        "gloo or nccl (default: under torchrun, nccl when every local rank has a GPU and COURSE_DEVICE "
        "is not cpu, else gloo; alone, gloo, to compare with single-process training on the CPU)"))
    parser.add_argument("--save", metavar="PATH", default=None, help=(
        "rank 0 writes its final weights and losses to this .npz file (params: (61706,) float64, "
        "losses: (steps,)), to compare a run with another, e.g. a multi-node one with train_single"))
    return parser.parse_args(argv)


def _save(path: str | None, out: dict) -> None:
    """Rank 0's ``ddp_worker`` result to ``path`` (.npz: ``params`` (61706,), ``losses`` (steps,))."""
    if path is not None:
        np.savez(path, params=out["params"], losses=out["losses"])


def _under_torchrun() -> bool:
    """True in a process that torchrun started as one rank (it sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def main(argv=None) -> int:
    from course_lib.data import load_digits
    args = _parse(argv)
    data = load_digits()
    if _under_torchrun():
        import torch.distributed as dist
        world_size = int(os.environ["WORLD_SIZE"])
        backend = args.backend or default_backend(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))        # one GPU per local rank
        dist.init_process_group(backend)              # reads MASTER_ADDR / MASTER_PORT from torchrun
        try:
            out = ddp_worker(dist.get_rank(), world_size, data.x_train, data.y_train, args.steps,
                             args.batch_size, args.lr)
        finally:
            dist.destroy_process_group()
        if int(os.environ["RANK"]) == 0:
            _save(args.save, out)
            print(f"rank 0 of {world_size}: final loss {out['losses'][-1]:.4f}, "
                  f"parameter checksum {out['params'].sum():.6f}")
        return 0
    ranks = train_ddp(data.x_train, data.y_train, args.steps, args.batch_size, args.world_size,
                      lr=args.lr, backend=args.backend or "gloo")
    _save(args.save, ranks[0])
    single = train_single(data.x_train, data.y_train, args.steps, args.batch_size, args.lr)
    gap = max(float(np.abs(r["params"] - single["params"]).max()) for r in ranks)
    print(f"{args.world_size} ranks, {args.steps} steps: final loss {ranks[0]['losses'][-1]:.4f} "
          f"(single process {single['losses'][-1]:.4f}); largest parameter difference {gap:.2e}")
    return 0


def run(argv=None) -> None:
    """``main``, then exit; a torchrun rank skips the interpreter's shutdown (``procs.exit_now``)."""
    code = main(argv)
    if _under_torchrun():                                      # a rank: skip the interpreter's
        from course_lib.machinery.procs import exit_now         # shutdown, see exit_now
        exit_now(code)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
