"""Lesson 09's experiments: Downpour SGD over replicas, arms and seeds.

``robustness_sweep`` runs several arms (plain SGD, Adagrad, staleness-aware
learning rates, the synchronous baseline) at several numbers of replicas, all
with the same budget of gradient steps, in the seeded simulation of
``course_lib.distributed.downpour``. ``robustness_over_seeds`` repeats it
over seeds and summarizes each arm's final loss (median and range,
``course_lib.experiments.seeds``); ``runs_over_seeds`` repeats one
``simulate`` call. ``course_lib.viz.downpour`` draws the results.

What a seed sets in ``simulate``: the initial weights, every replica's
minibatches (replica r draws from its own stream, ``[seed, r]``), and the
timing noise and network delays of the simulation, hence the staleness of
every update.
"""

from __future__ import annotations

import numpy as np

from course_lib.distributed.downpour import DownpourResult, simulate, train_synchronous
from course_lib.experiments.seeds import summarize
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
