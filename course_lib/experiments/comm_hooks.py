"""Exercise 8's experiment: a DDP communication hook written in a notebook, run on P processes.

``DistributedDataParallel.register_comm_hook(state, hook)`` replaces DDP's all-reduce of each
gradient bucket by ``hook(state, bucket)``, which returns a ``torch.futures.Future`` whose value
is the bucket's averaged gradient (lesson 8, section 3: ``BackwardLog`` wraps DDP's all-reduce
in such a hook). Here the hook is a student's, defined in a notebook. A spawned rank cannot import
a notebook's functions (STYLE rule 12), so the hook travels as **source text**: ``hook_source``
reads it in the notebook, and each rank executes it (``load_hook``) in a fresh namespace holding
``torch``, ``dist`` (``torch.distributed``), ``np`` and ``math``, and nothing of the notebook.

``hook_source``     the source of notebook functions, to send to the ranks
``load_hook``       the function that a source defines, by name, in a fresh namespace
``bytes_written``   bytes this process has written so far, sockets included (Linux), else None
``digits_mlp``      the tiny deterministic problem: the 8x8 digits, a 64-256-256-10 MLP (85,002 weights)
``hook_worker``     one rank: trains the MLP twice from the same weights, with DDP's own all-reduce and
                    with the hook; records the hook's buckets (input and output) and the bytes sent
``run_hook``        ``hook_worker`` on ``world_size`` processes (gloo); every rank's record

Bytes "on the wire" are what the rank's process wrote, counted by the kernel (``/proc/self/io``,
``wchar``: every ``write`` and ``send``, gloo's sockets included) during ``backward()``, where DDP
reduces its buckets: the lecture's formulas plus gloo's headers (a few hundred bytes a message).
"""

from __future__ import annotations

import inspect

import numpy as np

from course_lib.ddp import flat_parameters, global_batches
from course_lib.distributed.schedule import chunk_bounds
from course_lib.distributed.torch_dist import ddp_on_rank_device, seeded_torch

HOOK_FILE = "<your hook>"        # the file name a traceback from the hook's source shows


def hook_source(*functions) -> str:
    """The source of ``functions`` (defined in a notebook cell or a module), one after another."""
    return "\n\n".join(inspect.getsource(f) for f in functions)


def load_hook(source: str, name: str):
    """Execute ``source`` in a fresh namespace (``torch``, ``dist``, ``np``, ``math``); return ``name``.

    The namespace is the rank's own: a name that the notebook defined elsewhere is not in it.
    """
    import math

    import torch
    import torch.distributed as dist
    namespace = {"torch": torch, "dist": dist, "np": np, "math": math, "__name__": "hook"}
    exec(compile(source, HOOK_FILE, "exec"), namespace)
    if not callable(namespace.get(name)):
        raise NameError(f"the hook's source defines no function {name!r}; it defines "
                        f"{sorted(k for k, v in namespace.items() if callable(v) and k not in ('torch', 'dist'))}")
    return namespace[name]


def bytes_written() -> int | None:
    """Bytes this process has written so far (``wchar`` of ``/proc/self/io``: files, pipes and
    sockets, every thread), or None where there is no ``/proc`` (macOS, Windows)."""
    try:
        with open("/proc/self/io") as f:
            fields = dict(line.split(": ") for line in f.read().splitlines() if line)
        return int(fields["wchar"])
    except (OSError, KeyError, ValueError):
        return None


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits' training images as vectors, x (1347, 64) float32 in [0, 1], and labels y (1347,) int64."""
    from course_lib.data import load_digits
    data = load_digits(size=8)
    return data.x_train.reshape(len(data.x_train), 64), data.y_train          # (n, 1, 8, 8) -> (n, 64)


def digits_mlp(seed: int = 0):
    """A 64-256-256-10 ReLU MLP (85,002 weights) whose initial weights depend on ``seed`` only."""
    import torch
    with seeded_torch(seed):
        return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                   torch.nn.ReLU(), torch.nn.Linear(256, 10))


def _recording(hook, records: list, step: list, record_steps: int):
    """``hook``, with each bucket's input and the value of its future kept for the first steps."""
    import torch

    def recorded(state, bucket):
        grad = bucket.buffer().detach().numpy().copy() if step[0] < record_steps else None
        fut = hook(state, bucket)
        if not isinstance(fut, torch._C.Future):              # torch.futures.Future, or a collective's
            raise TypeError(f"the hook must return a torch.futures.Future, it returned {type(fut).__name__}")
        if grad is None:
            return fut

        def keep(done):
            value = done.value()
            kept = value.detach().numpy().copy() if isinstance(value, torch.Tensor) else repr(value)[:200]
            records.append((step[0], bucket.index(), grad, kept))   # numpy: a tensor cannot leave the rank
            return value
        return fut.then(keep)
    return recorded


def _train(ddp, x, y, batches, rank: int, world_size: int, lr: float, momentum: float, step: list) -> dict:
    """SGD on this rank's slice of each global batch; the bytes written during each backward()."""
    import torch
    import torch.nn.functional as F
    opt = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=momentum)
    losses, sent = [], []
    for i, idx in enumerate(batches):
        step[0] = i                               # the recording hook reads it
        a, b = chunk_bounds(len(idx), world_size)[rank]
        loss = F.cross_entropy(ddp(torch.from_numpy(x[idx[a:b]])), torch.from_numpy(y[idx[a:b]]))
        opt.zero_grad()
        before = bytes_written()
        loss.backward()                           # DDP reduces every bucket here, through the hook
        after = bytes_written()
        sent.append(None if before is None else after - before)
        opt.step()
        losses.append(loss.item())
    return {"losses": np.array(losses), "sent": sent, "params": flat_parameters(ddp.module)}


def hook_worker(rank: int, world_size: int, x: np.ndarray, y: np.ndarray, source: str, hook_name: str,
                steps: int = 30, batch_size: int = 64, lr: float = 0.1, momentum: float = 0.9,
                bucket_cap_mb: float = 0.1, record_steps: int = 3, seed: int = 0) -> dict:
    """One rank (``torch.distributed`` initialised): ``digits_mlp`` trained twice, the same batches.

    Arm "allreduce": DDP as it comes. Arm "hook": the same model and batches with
    ``register_comm_hook(state, hook)``, ``state`` a dict that starts empty and belongs to the hook.
    DDP puts every gradient in one bucket at step 0, then re-forms its buckets (lesson 8, section 3):
    with ``bucket_cap_mb = 0.1`` two buckets, of 68,362 and 16,640 gradients.

    Returns
    -------
    dict: per arm ``losses`` (steps,), ``sent`` (bytes written during each backward(), or None),
    ``params`` (85002,) float64; for the hook also ``records`` [(step, bucket index, input (n,),
    the future's value)] for the first ``record_steps`` steps, and ``state`` {key: (shape, dtype)} at the end
    """
    batches = global_batches(len(x), batch_size, steps, seed)
    out = {}
    for arm in ("allreduce", "hook"):
        ddp, _ = ddp_on_rank_device(digits_mlp(seed), bucket_cap_mb=bucket_cap_mb)
        step, records, state = [0], [], {}
        if arm == "hook":
            ddp.register_comm_hook(state, _recording(load_hook(source, hook_name), records, step, record_steps))
        out[arm] = _train(ddp, x, y, batches, rank, world_size, lr, momentum, step)
    out["hook"]["records"] = records
    out["hook"]["state"] = {key: (tuple(getattr(v, "shape", ())), str(getattr(v, "dtype", type(v).__name__)))
                            for key, v in state.items()}
    return out


def run_hook(source: str, hook_name: str, world_size: int = 2, *, timeout: float = 120.0,
             start_method: str | None = None, **setting) -> list[dict]:
    """``hook_worker`` on ``world_size`` local processes over gloo; every rank's dict, by rank.

    ``setting``: ``hook_worker``'s keyword arguments. A hook that raises (in any rank) raises
    ``HookFailed`` here, with the rank and the last line of its error. About 2 s on 2 cores.
    """
    from course_lib.machinery.procs import CollectiveError
    from course_lib.machinery.torch_launch import launch_torch
    import_what_ddp_imports()
    try:
        x, y = digits_data()
        return launch_torch(hook_worker, world_size, args=(x, y, source, hook_name, *_ordered(setting)),
                            backend="gloo", timeout=timeout, start_method=start_method)
    except CollectiveError as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise HookFailed(f"rank {err.rank}: {lines[-1].strip() if lines else err}") from None


def import_what_ddp_imports() -> None:
    """Import ``torch._dynamo`` here, once: ``DistributedDataParallel`` imports it when it wraps a model,
    which takes seconds in every rank (docs/benchmarks.md); forked ranks inherit it from this process."""
    import torch._dynamo  # noqa: F401


class HookFailed(RuntimeError):
    """The hook (or the run around it) raised in a rank; the message is that rank's error."""


def _ordered(setting: dict) -> tuple:
    """``hook_worker``'s keyword arguments after ``hook_name``, in order, defaults filled in."""
    params = list(inspect.signature(hook_worker).parameters.values())[6:]
    unknown = set(setting) - {p.name for p in params}
    if unknown:
        raise TypeError(f"run_hook got unknown settings {sorted(unknown)}; known: {[p.name for p in params]}")
    return tuple(setting.get(p.name, p.default) for p in params)
