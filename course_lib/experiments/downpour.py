"""Lesson 09's experiments: Downpour SGD over replicas, arms and seeds.

``robustness_sweep`` runs several arms (plain SGD, Adagrad, staleness-aware
learning rates, the synchronous baseline) at several numbers of replicas, all
with the same budget of gradient steps, in the seeded simulation of
``course_lib.distributed.downpour``. ``robustness_over_seeds`` repeats it
over seeds and summarizes each arm's final loss (median and range,
``course_lib.experiments.seeds``); ``runs_over_seeds`` repeats one
``simulate`` call. ``course_lib.viz.downpour`` draws the results.

The trade-offs: ``throughput_sweep`` runs Downpour on real processes at every
(n_shards, n_replicas), with emulated compute and service times, and puts the
model's bounds (``course_lib.distributed.downpour_throughput``) beside each
``measured_throughput``; ``steps_to_target_over_seeds`` counts, in the
simulation, the steps R replicas need to reach a target loss, and
``runtime_resource`` turns them into seconds and machine-seconds.

What a seed sets in ``simulate``: the initial weights, every replica's
minibatches (replica r draws from its own stream, ``[seed, r]``), and the
timing noise and network delays of the simulation, hence the staleness of
every update.
"""

from __future__ import annotations

import numpy as np

from course_lib.checks import check_int
from course_lib.distributed.downpour import DownpourResult, simulate, train_synchronous
from course_lib.distributed.downpour_throughput import (replica_bound, runtime_and_resources, server_bound,
                                                        throughput_bound)
from course_lib.experiments.seeds import summarize
from course_lib.machinery.downpour_processes import train_on_processes
from course_lib.models import TinyNet


def robustness_sweep(model: TinyNet, x: np.ndarray, y: np.ndarray, replicas, arms: dict,
                     total_steps: int, **common) -> dict[str, list[DownpourResult]]:
    """Run every arm at every number of replicas; the experiment of lesson 09.

    arms : {label: keyword arguments for ``simulate``}, or with
        ``synchronous=True`` for ``train_synchronous``; ``common`` goes to all.
        A Downpour arm that does not say ``n_shards`` gets 4 shards.
    Returns {label: [one DownpourResult per number of replicas]}.
    """
    out = {}
    for label, kwargs in arms.items():
        kwargs = dict(kwargs)
        run = train_synchronous if kwargs.pop("synchronous", False) else simulate
        if run is simulate:
            kwargs.setdefault("n_shards", 4)
        out[label] = [run(model, x, y, n_replicas=R, total_steps=total_steps, **kwargs, **common)
                      for R in replicas]
    return out


def robustness_over_seeds(model: TinyNet, x: np.ndarray, y: np.ndarray, replicas, arms: dict,
                          total_steps: int, seeds=range(5), **common) -> dict[str, dict[str, np.ndarray]]:
    """``robustness_sweep`` once per seed; per arm, the final loss over seeds.

    Returns ``{label: {"median": (n_R,), "min": (n_R,), "max": (n_R,), "all": (n_seeds, n_R)}}``,
    n_R = len(replicas) (``course_lib.experiments.seeds.summarize``).
    """
    sweeps = [robustness_sweep(model, x, y, replicas, arms, total_steps, seed=s, **common) for s in seeds]
    return {label: summarize([[r.final_loss for r in sweep[label]] for sweep in sweeps]) for label in arms}


def runs_over_seeds(model: TinyNet, x: np.ndarray, y: np.ndarray, seeds=range(5),
                    **simulate_kwargs) -> list[DownpourResult]:
    """The same ``simulate`` call once per seed (a healthy run, one with a dead replica, ...)."""
    return [simulate(model, x, y, seed=s, **simulate_kwargs) for s in seeds]


def final_losses(runs: list[DownpourResult]) -> np.ndarray:
    """(n_seeds,) the final training loss of each run."""
    return np.array([r.final_loss for r in runs])


# ---- The ratio of shards to replicas, on real processes ----------------------

def measured_throughput(result: DownpourResult) -> float:
    """Steps per second of a run on processes (``train_on_processes``), start-up and shut-down left out.

    From the parent's samples of the step counter (``result.curve`` rows of steps, seconds, loss)
    taken while steps were still being claimed (0 < steps < total): steps between the first and
    the last such sample over the seconds between them. Fewer than two: all steps over the whole run.
    """
    total = result.curve[-1, 0]
    inside = result.curve[:-1][(result.curve[:-1, 0] > 0) & (result.curve[:-1, 0] < total)]
    if len(inside) < 2 or inside[-1, 1] <= inside[0, 1]:
        return float(total / result.curve[-1, 1])
    return float((inside[-1, 0] - inside[0, 0]) / (inside[-1, 1] - inside[0, 1]))


def throughput_sweep(model: TinyNet, x: np.ndarray, y: np.ndarray, shards, replicas, *, compute_time: float,
                     service_time: float, seconds: float = 0.25, min_steps: int = 20, repeats: int = 2,
                     **train_kwargs) -> dict:
    """Downpour on real processes at every (n_shards, n_replicas), with emulated costs, beside the model.

    compute_time, service_time : the emulated t_compute and t_service (``train_on_processes``)
    seconds, min_steps : each run gets max(min_steps, seconds * bound) steps, about ``seconds`` of work
    repeats : passes over all the settings; each keeps its fastest run (other programs on the
        machine can only slow a run down, and a burst of load hits other settings in each pass)
    train_kwargs : for ``train_on_processes`` (optimizer, lr, start_method, ...)

    Returns ``{"measured", "bound", "replica_bound", "server_bound": (len(shards), len(replicas))
    steps per second, "runs": [[DownpourResult]]}``; row i is shards[i], column j is replicas[j].
    """
    train_kwargs.setdefault("eval_interval", 0.02)
    out = {k: np.zeros((len(shards), len(replicas))) for k in ("measured", "bound", "replica_bound", "server_bound")}
    out["runs"] = [[None] * len(replicas) for _ in shards]
    for _ in range(check_int(repeats, "repeats", 1)):
        for i, n_shards in enumerate(shards):
            for j, R in enumerate(replicas):
                out["replica_bound"][i, j] = replica_bound(R, n_shards, compute_time, service_time)
                out["server_bound"][i, j] = server_bound(n_shards, service_time)
                out["bound"][i, j] = bound = throughput_bound(R, n_shards, compute_time, service_time)
                res = train_on_processes(model, x, y, n_replicas=R, n_shards=n_shards,
                                         total_steps=max(min_steps, round(seconds * bound)),
                                         compute_time=compute_time, service_time=service_time, **train_kwargs)
                X = measured_throughput(res)
                if X > out["measured"][i, j]:                              # the fastest run so far
                    out["runs"][i][j], out["measured"][i, j] = res, X
    return out


# ---- The runtime-resource trade-off -------------------------------------------

def steps_to_target(result: DownpourResult, target: float) -> float:
    """Gradient steps done at the first record of ``result.curve`` at or below ``target``; inf if none."""
    hit = result.curve[result.curve[:, 2] <= target, 0]
    return float(hit[0]) if len(hit) else np.inf


def steps_to_target_over_seeds(model: TinyNet, x: np.ndarray, y: np.ndarray, replicas, target: float,
                               total_steps: int, seeds=range(5), **simulate_kwargs) -> dict[str, np.ndarray]:
    """Steps the simulation needs to reach a training loss of ``target``, per number of replicas and seed.

    Each run stops at the target (``simulate``'s ``target_loss``), or after ``total_steps`` (then inf).
    Returns ``summarize`` of the (n_seeds, n_R) steps: median, min, max over seeds, and all.
    """
    return summarize([[steps_to_target(simulate(model, x, y, n_replicas=R, total_steps=total_steps,
                                                target_loss=target, seed=s, **simulate_kwargs), target)
                       for R in replicas] for s in seeds])


def runtime_resource(steps: dict, replicas, shards, throughput) -> dict[str, dict[str, np.ndarray]]:
    """Seconds and machine-seconds to the target, per number of replicas (``runtime_and_resources``).

    steps : ``steps_to_target_over_seeds``' summary; shards, throughput : one per number of replicas
    (n_shards used, steps per second: measured, or the model's bound).
    Returns ``{"seconds": summary, "machine_seconds": summary}``, each ``summarize`` of (n_seeds, n_R).
    """
    both = [[runtime_and_resources(n, R, n_shards, X)
             for n, R, n_shards, X in zip(row, replicas, shards, throughput)]
            for row in steps["all"]]
    return {"seconds": summarize([[t for t, _ in row] for row in both]),
            "machine_seconds": summarize([[m for _, m in row] for row in both])}
