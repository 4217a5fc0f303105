"""Lesson 08's experiment: does DDP's all-reduce really run while backprop continues?

The lecture, after Goyal et al. (2017): "as soon as the gradient for a layer is computed, it is
aggregated across workers, while gradient computation for the next layer continues". DDP does it
with buckets (``course_lib.ddp``). Whether the all-reduce *hides* behind backprop on a machine
depends on two things: backprop must last long enough after a bucket is ready for its all-reduce
to finish, and the all-reduce must get a core while backprop runs (on a 2-core laptop the two
ranks' backprop and gloo's threads share the two cores). Here each rank takes N/P images of a
global batch of N (the kit's N: the batch), P = ``world_size``.

``lenet5_layers``      LeNet-5 for ``scaling.iteration_timeline``: each layer's parameters and FLOPs
``overlap_worker``     one rank: logs backward passes under DDP and, between them, the same passes
                       without the all-reduce (``no_sync``: backprop alone); then times each
                       bucket's all-reduce alone, with no backprop beside it
``measure_overlap``    runs it on P processes (gloo); every rank's log on one clock
``measured_timeline``  one logged pass as a ``scaling.Timeline``: a layer's backprop runs from the
                       previous layer's last gradient to its own last gradient
``overlap_held``       did every bucket but the last finish before the slowest rank's last gradient?
``fit_comm_model``     the ring's alpha-beta cost fitted to the lone all-reduces
``modelled_timeline``  ``iteration_timeline`` for the measured setting, from backward()'s start
``median_pass``        the pass whose backward() time is the median, to show as typical
``pass_rows`` / ``overlap_study``  one row per logged pass, over one run or several

Times are seconds (the lesson's figure shows ms).
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from course_lib.ddp import global_batches
from course_lib.distributed.schedule import chunk_bounds
from course_lib.machinery.backward_log import BackwardLog
from course_lib.scaling import CommModel, LayerCost, Timeline, iteration_timeline

# The setting the lesson measures (its part 3b says why these values): N, MiB, logged passes
BATCH_SIZE, BUCKET_CAP_MB, PASSES = 512, 0.005, 10


def overlap_summary(events: list) -> dict:
    """What a backward-pass log shows about overlap.

    Returns a dict: ``grad_order`` (parameter names in the order their gradients were
    ready), ``launched_before_last_grad`` (buckets whose all-reduce started while some
    gradient was still being computed) and ``buckets`` (how many).
    """
    grads = [(e[1], i) for i, e in enumerate(events) if e[0] == "grad"]
    last_grad = max(i for _, i in grads) if grads else -1
    launches = [(e[1], i) for i, e in enumerate(events) if e[0] == "allreduce"]
    return {"grad_order": [name for name, _ in grads],
            "launched_before_last_grad": [b for b, i in launches if i < last_grad],
            "buckets": len(launches)}


def lenet5_layers() -> list[LayerCost]:
    """LeNet-5 (``TorchLeNet5``) in forward order, for one 32 x 32 image.

    A layer of C input and K output channels, KH x KH kernels and an H_out x H_out output holds
    C * K * KH * KH + K parameters (weights and biases) and costs 2 * C * K * KH * KH * H_out * H_out
    FLOPs (multiply-adds x 2); F6 and the output layer are the 1 x 1 case. 61,706 parameters in all.
    """
    #          name   C    K    KH  H_out
    shapes = [("c1", 1, 6, 5, 28), ("c3", 6, 16, 5, 10), ("c5", 16, 120, 5, 1),
              ("f6", 120, 84, 1, 1), ("out", 84, 10, 1, 1)]
    return [LayerCost(name, C * K * KH * KH + K, 2.0 * C * K * KH * KH * H_out * H_out)
            for name, C, K, KH, H_out in shapes]


def _logged_backward(ddp, log: BackwardLog, x: np.ndarray, y: np.ndarray) -> tuple[float, list]:
    """Forward, then one logged backward pass: (its start on this machine's clock, its events,
    from ("backward", t) to ("returned", t))."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    loss = F.cross_entropy(ddp(torch.from_numpy(x)), torch.from_numpy(y))      # mean over N/P images
    ddp.zero_grad()
    dist.barrier()            # the ranks start backprop together, so a bar times the all-reduce, not a late peer
    log.start()
    log.add("backward")
    loss.backward()
    log.add("returned")
    log.stop()
    return log.t0, log.events


def _lone_allreduces(events: list, module, repeats: int) -> dict:
    """Each bucket of ``events`` all-reduced alone: {bucket: (bytes, fastest of ``repeats`` in s)}.

    The buckets take turns, so that a burst of load from elsewhere falls on all of them; the
    fastest time is the all-reduce's own cost, with nothing in its way.
    """
    import torch
    import torch.distributed as dist
    params = dict(module.named_parameters())
    buckets = {e[1]: torch.zeros(sum(params[name].numel() for name in e[2]), dtype=params[e[2][0]].dtype)
               for e in events if e[0] == "allreduce"}                     # bucket -> (its elements,)
    seconds = {bucket: [] for bucket in buckets}
    for _ in range(repeats):
        for bucket, grads in buckets.items():
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(grads)
            seconds[bucket].append(time.perf_counter() - start)
    return {bucket: (grads.numel() * grads.element_size(), min(seconds[bucket]))
            for bucket, grads in buckets.items()}


def overlap_worker(rank: int, world_size: int, x: np.ndarray, y: np.ndarray, batch_size: int,
                   bucket_cap_mb: float, passes: int, warmup: int = 3, seed: int = 0,
                   repeats: int = 20) -> dict:
    """One rank (``torch.distributed`` initialised): log backward passes of a DDP LeNet-5.

    After ``warmup`` passes (DDP sorts its buckets after the first), the rank alternates a pass
    under DDP with a pass under ``ddp.no_sync()`` (no all-reduce: backprop alone), so that a
    burst of load from elsewhere falls on both kinds. The weights never change: the passes are
    timed, not trained. One torch thread per rank (``launch_torch`` sets it).

    Returns
    -------
    dict: ``ddp`` and ``compute``, ``passes`` (start, ``BackwardLog`` events) each, the start on
    ``time.perf_counter``'s clock (one clock for all processes of a machine on Linux and macOS);
    ``lone`` {bucket: (bytes, seconds of its all-reduce alone, the fastest of ``repeats``)}
    """
    from course_lib.distributed.torch_dist import ddp_on_rank_device, seeded_torch
    from course_lib.lenet import TorchLeNet5
    with seeded_torch(seed):
        model = TorchLeNet5()
    ddp, _ = ddp_on_rank_device(model, bucket_cap_mb=bucket_cap_mb)
    log = BackwardLog()
    log.attach(ddp)
    a, b = chunk_bounds(batch_size, world_size)[rank]
    out = {"ddp": [], "compute": []}
    for step, idx in enumerate(global_batches(len(x), batch_size, warmup + 2 * passes, seed)):
        synced = step < warmup or (step - warmup) % 2 == 0
        with contextlib.nullcontext() if synced else ddp.no_sync():
            logged = _logged_backward(ddp, log, x[idx[a:b]], y[idx[a:b]])
        if step >= warmup:
            out["ddp" if synced else "compute"].append(logged)
    out["lone"] = _lone_allreduces(out["ddp"][-1][1], ddp.module, repeats)
    return out


def measure_overlap(x: np.ndarray, y: np.ndarray, batch_size: int = BATCH_SIZE,
                    bucket_cap_mb: float = BUCKET_CAP_MB, passes: int = PASSES, world_size: int = 2, *,
                    warmup: int = 3, seed: int = 0, timeout: float = 120.0,
                    start_method: str | None = None) -> dict:
    """``overlap_worker`` on ``world_size`` local processes over gloo, every rank's log on one time axis.

    Returns
    -------
    dict: ``ddp`` and ``compute``, one list per pass of P event lists (one per rank), times in
    seconds since rank 0's backward() started; ``lone`` (rank 0's); the setting (``batch_size``,
    ``bucket_cap_mb``, ``world_size``)
    """
    from course_lib.machinery.torch_launch import launch_torch
    if batch_size % world_size:
        raise ValueError(f"batch_size = {batch_size} is not divisible by world_size = {world_size}: "
                         f"the ranks would time different amounts of backprop; use a multiple of {world_size}")
    ranks = launch_torch(overlap_worker, world_size, args=(x, y, batch_size, bucket_cap_mb, passes, warmup, seed),
                         backend="gloo", timeout=timeout, start_method=start_method)
    aligned = {kind: [[_shifted(events, t0 - ranks[0][kind][i][0]) for t0, events in (r[kind][i] for r in ranks)]
                      for i in range(passes)] for kind in ("ddp", "compute")}
    return dict(aligned, lone=ranks[0]["lone"], batch_size=batch_size, bucket_cap_mb=bucket_cap_mb,
                world_size=world_size)


def _shifted(events: list, dt: float) -> list:
    """Events with ``dt`` seconds added to every time (an event's last item)."""
    return [(*e[:-1], e[-1] + dt) for e in events]


def measured_timeline(events: list) -> Timeline:
    """One logged backward pass as a ``Timeline`` (seconds, as logged; ``forward`` = 0).

    A layer's backprop runs from the previous layer's last gradient to its own last gradient (the
    first layer's from the "backward" event, or 0); a bucket's all-reduce from its launch to its
    end; ``total`` is when backward() returned (or the last event, if the log has no "returned").
    """
    ends = {}                                                 # layer -> its last gradient, backprop order
    for e in events:
        if e[0] == "grad":
            ends[e[1].split(".")[0]] = e[2]
    backward, start = [], next((e[1] for e in events if e[0] == "backward"), 0.0)
    for layer, end in ends.items():
        backward.append((layer, start, end))
        start = end
    done = {e[1]: e[2] for e in events if e[0] == "done"}
    allreduce = [(f"bucket {e[1]}", e[3], done.get(e[1], e[3])) for e in events if e[0] == "allreduce"]
    returned = [e[1] for e in events if e[0] == "returned"]
    total = returned[0] if returned else max(e[-1] for e in events)
    return Timeline(0.0, backward, sorted(allreduce, key=lambda r: r[1]), total)


def overlap_held(timelines: list[Timeline]) -> bool:
    """One pass on every rank (or a modelled pass, ``[timeline]``): True when every all-reduce but
    the last ended before backprop had ended on every rank (the slowest rank's last gradient).

    That is the overlap the lesson teaches: the communication that can hide, hidden. The last
    bucket holds the last gradients: it always runs after backprop.
    """
    end_of_backprop = max(tl.backward[-1][2] for tl in timelines)
    return all(end <= end_of_backprop for tl in timelines for _, _, end in tl.allreduce[:-1])


def fit_comm_model(lone: dict, world_size: int, bucket_bytes: float = 0.0, bytes_per_param: int = 4) -> CommModel:
    """``CommModel`` whose ring cost fits the lone all-reduces {bucket: (bytes, seconds)}.

    The ring all-reduce of n bytes costs ``2(P-1) alpha + 2 n (P-1)/P / bandwidth``: a line
    a + b n with a = 2(P-1) alpha and b = 2(P-1) / (P bandwidth). Least squares gives a and b;
    a negative intercept is refitted through the origin (alpha = 0), a slope <= 0 means the
    sizes are too close to see the bandwidth (bandwidth = inf, alpha from the mean).
    """
    n, t = np.array(list(lone.values()), dtype=np.float64).T               # (buckets,) each
    P = world_size
    b, a = np.polyfit(n, t, 1) if len(set(n)) > 1 else (0.0, float(t.mean()))
    if a < 0:
        a, b = 0.0, float(n @ t / (n @ n))
    if b <= 0:
        a, b = float(t.mean()), 0.0
    bandwidth = 2 * (P - 1) / (P * b) if b > 0 else np.inf
    return CommModel(alpha=a / (2 * (P - 1)), bandwidth=bandwidth, bucket_bytes=bucket_bytes,
                     bytes_per_param=bytes_per_param)


def modelled_timeline(run: dict, layers: list[LayerCost] | None = None) -> tuple[Timeline, CommModel]:
    """The lecture's model of the measured setting: ``iteration_timeline`` with overlap.

    Compute: the model's backward pass is 2/3 of ``compute_s``, so compute_s = 1.5 x the median
    over passes of backward() under ``no_sync`` (backprop alone) on the slowest rank. Communication:
    ``fit_comm_model`` on the lone all-reduces, buckets of ``bucket_cap_mb`` MiB. Times are
    shifted to start at backward().
    """
    layers = lenet5_layers() if layers is None else layers
    backprop = float(np.median([max(_duration(events) for events in ranks) for ranks in run["compute"]]))
    comm = fit_comm_model(run["lone"], run["world_size"], run["bucket_cap_mb"] * 2 ** 20)
    tl = iteration_timeline(layers, 1.5 * backprop, run["world_size"], comm, overlap=True)
    f = tl.forward                                                      # move t = 0 to backward()'s start
    return Timeline(0.0, [(name, s - f, e - f) for name, s, e in tl.backward],
                    [(f"bucket {i}", s - f, e - f) for i, (_, s, e) in enumerate(tl.allreduce)],
                    tl.total - f), comm


def _duration(events: list) -> float:
    """Seconds from a logged backward() call to its return."""
    tl = measured_timeline(events)
    return tl.total - tl.backward[0][1]


def pass_rows(run: dict) -> list[dict]:
    """One row per DDP pass of ``run`` (seconds since rank 0's backward() started):
    ``backprop`` (the slowest rank's last gradient), ``returned`` (the last rank's backward()
    returned), ``exposed`` = returned - backprop (all-reduce time that no backprop hid),
    ``skew`` (the slowest rank's last gradient minus the fastest's), ``held`` (``overlap_held``),
    and ``compute``, the slowest rank's backward() under no_sync in the pass logged after it."""
    rows = []
    for i, (ranks, alone) in enumerate(zip(run["ddp"], run["compute"])):
        tls = [measured_timeline(events) for events in ranks]
        ends = [tl.backward[-1][2] for tl in tls]
        returned = max(tl.total for tl in tls)
        rows.append({"pass": i, "backprop": max(ends), "returned": returned, "exposed": returned - max(ends),
                     "skew": max(ends) - min(ends), "held": overlap_held(tls),
                     "compute": max(_duration(events) for events in alone)})
    return rows


def median_pass(run: dict) -> int:
    """Index of the DDP pass whose backward() time is the median (the lower middle one when the
    number of passes is even): the pass a figure shows as typical."""
    returned = [max(measured_timeline(events).total for events in ranks) for ranks in run["ddp"]]
    return int(np.argsort(returned, kind="stable")[(len(returned) - 1) // 2])


def overlap_study(x: np.ndarray, y: np.ndarray, runs: int, **setting) -> list[dict]:
    """``measure_overlap`` ``runs`` times (``setting``: its keyword arguments); every pass's row
    from ``pass_rows``, with ``run`` (0 .. runs - 1) added. About 1 to 2 s per run on 2 cores."""
    return [dict(row, run=r) for r in range(runs) for row in pass_rows(measure_overlap(x, y, **setting))]
