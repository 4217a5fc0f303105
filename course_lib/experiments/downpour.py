"""Lesson 09's experiment: Downpour SGD's final loss against the number of replicas.

``robustness_sweep`` runs several arms (plain SGD, Adagrad, staleness-aware
learning rates, the synchronous baseline) at several numbers of replicas, all
with the same budget of gradient steps, in the seeded simulation of
``course_lib.distributed.downpour``. ``course_lib.viz.downpour.plot_robustness``
draws the result.
"""

from __future__ import annotations

import numpy as np

from course_lib.distributed.downpour import DownpourResult, simulate, train_synchronous
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
