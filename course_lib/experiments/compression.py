"""Lesson 12's experiment: data-parallel SGD with compressed gradients, over seeds.

``train_compressed`` is one run: P workers, each compressing its own gradient
with ``course_lib.distributed.compression``'s compressors (with or without
error feedback); the dense arm sends float32, as the compressed ones do.
``compression_over_seeds`` runs every scheme once per seed and
``compression_summary`` gives each scheme's final loss and test error as a
median and a range (``course_lib.experiments.seeds``) beside its bytes.

What a seed sets in ``train_compressed``: the initial weights and every
worker's minibatches, from two independent streams
(``np.random.SeedSequence(seed).spawn(2)``). All schemes of one seed share both, so a scheme minus
dense, seed by seed (``seeds.paired``), isolates what the compression did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from course_lib.distributed.compression import (DENSE_ITEMSIZE, decompress, sign_compress,
                                                threshold_compress, topk_compress)
from course_lib.experiments.seeds import summarize
from course_lib.models import TinyNet


@dataclass
class CompressedRun:
    scheme: str
    curve: np.ndarray             # (n_evals, 2): step, training loss of the shared parameters
    test_error: float
    bytes_per_worker_step: float  # mean message size (dense: 4N)
    dense_bytes: int
    world_size: int               # workers, each with its own minibatch of
    batch: int                    # this many examples per step


def _message(g, e, scheme: str, tau: float, k: int):
    """One worker's message: (what the others receive, dense float32; its bytes; the new residual)."""
    if scheme == "dense":
        return g.astype(np.float32), DENSE_ITEMSIZE * g.size, e
    if scheme == "sign":
        msg, new_e = sign_compress(g, e)
    elif scheme == "threshold":
        msg, new_e = threshold_compress(g, e, tau)
    else:
        msg, new_e = topk_compress(g, e, k)
    return decompress(msg), msg.nbytes, new_e


def train_compressed(model, data, scheme: str, world_size: int = 4, steps: int = 300,
                     lr: float = 0.5, batch: int = 16, error_feedback: bool = True,
                     tau: float = 0.01, k_fraction: float = 0.01, eval_every: int = 10,
                     seed: int = 0) -> CompressedRun:
    """SGD where each of ``world_size`` workers sends a compressed gradient.

    Every step each worker computes a gradient on its own minibatch,
    compresses it (keeping its own residual when ``error_feedback``), and all
    apply the mean of the decompressed messages: ``w <- w - lr * mean_r q_r``.
    "dense" sends the float32 gradient (4 bytes per element, no residual).

    Parameters
    ----------
    model : a ``course_lib.models.TinyNet`` (flat parameters)
    data : ``(x_train, y_train, x_test, y_test)``, x of shape (n, n_in)
    scheme : "dense", "sign", "threshold" or "topk"
    tau : Strom's threshold; k_fraction : top-k keeps k = ceil(k_fraction * N)
    eval_every : record the training loss every so many steps
    seed : the initial weights and the minibatches, from two independent streams
    """
    if scheme not in ("dense", "sign", "threshold", "topk"):
        raise ValueError(f"scheme {scheme!r} is not 'dense', 'sign', 'threshold' or 'topk'")
    x, y, x_test, y_test = data
    init_seed, batch_seed = np.random.SeedSequence(seed).spawn(2)
    w = model.init(np.random.default_rng(init_seed))
    rng = np.random.default_rng(batch_seed)
    k = max(1, int(np.ceil(k_fraction * w.size)))
    errors = [np.zeros_like(w) for _ in range(world_size)]
    curve, sent = [], []
    for t in range(steps):
        total = np.zeros_like(w)
        for r in range(world_size):
            idx = rng.integers(0, len(x), batch)
            _, g = model.loss_and_grad(w, x[idx], y[idx])
            q, nbytes, new_e = _message(g, errors[r] if error_feedback else None, scheme, tau, k)
            if error_feedback:
                errors[r] = new_e
            total += q
            sent.append(nbytes)
        w = w - lr * total / world_size
        if (t + 1) % eval_every == 0 or t + 1 == steps:
            curve.append((t + 1, model.loss(w, x, y)))
    return CompressedRun(scheme, np.array(curve), model.error(w, x_test, y_test), float(np.mean(sent)),
                         DENSE_ITEMSIZE * w.size, world_size, batch)


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
