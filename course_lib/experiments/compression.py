"""Lesson 12's experiment: data-parallel SGD with compressed gradients, over seeds.

``course_lib.distributed.compression.train_compressed`` is one run: P workers,
each compressing its own gradient (with or without error feedback).
``compression_over_seeds`` runs every scheme once per seed and
``compression_summary`` gives each scheme's final loss and test error as a
median and a range (``course_lib.experiments.seeds``) beside its bytes.

What a seed sets in ``train_compressed``: the initial weights and every
worker's minibatches. All schemes of one seed share both, so a scheme minus
dense, seed by seed (``seeds.paired``), isolates what the compression did.
"""

from __future__ import annotations

import numpy as np

from course_lib.distributed.compression import CompressedRun, train_compressed
from course_lib.experiments.seeds import summarize
from course_lib.models import TinyNet


def compression_over_seeds(model: TinyNet, data, schemes: dict, seeds=range(5),
                           **common) -> dict[str, list[CompressedRun]]:
    """Every scheme once per seed.

    schemes : {label: keyword arguments for ``train_compressed``, with "scheme"}, e.g.
        ``{"top-1%": dict(scheme="topk", k_fraction=0.01)}``; ``common`` goes to all
    Returns {label: [one CompressedRun per seed]}.
    """
    seeds = list(seeds)
    return {label: [train_compressed(model, data, **kwargs, **common, seed=s) for s in seeds]
            for label, kwargs in schemes.items()}


def compression_summary(runs: dict[str, list[CompressedRun]]) -> dict[str, dict]:
    """Per scheme: ``{"loss": summary, "test_error": summary, "bytes": float, "dense_bytes": int}``.

    loss is the final training loss; each summary is ``seeds.summarize``'s
    (median, min, max over seeds); bytes is the mean message per worker per step
    (the median over seeds: threshold messages vary a little with the seed).
    """
    return {label: {"loss": summarize([r.curve[-1, 1] for r in rs]),
                    "test_error": summarize([r.test_error for r in rs]),
                    "bytes": float(np.median([r.bytes_per_worker_step for r in rs])),
                    "dense_bytes": rs[0].dense_bytes}
            for label, rs in runs.items()}
