"""Downpour's throughput and its runtime-resource trade-off: a queueing bound.

Lecture 5, "Downpour SGD": "Need to tune ratio of parameter servers to
workers", and "Runtime-Resource Tradeoff in Downpour SGD" (Dean et al. 2012:
time to reach a target accuracy against the number of machines).

One replica step (n_fetch = n_push = 1, as in lesson 9): fetch w from every
shard, compute a gradient (``t_compute`` seconds), push it to every shard. A
server holding the whole model spends ``t_service`` seconds on one request; a
shard owning 1/n_shards of the model spends t_service / n_shards (its work is
its slice: copy, send, one Adagrad step). With ``requests`` requests per step
(2: a fetch and a push), each shard is busy

    D_shard = requests * t_service / n_shards      seconds per step.

Two limits on X, the steps per second of all R = ``n_replicas`` replicas together
(the asymptotic bounds of operational analysis: Lazowska et al., "Quantitative
System Performance", 1984, chapter 5):

* replica-bound: with nobody queued ahead of it, a replica's step lasts its
  compute plus its requests at the shards, which serve their slices in parallel:
      X <= R / (t_compute + D_shard)
* server-bound: every step keeps every shard busy D_shard seconds, and a shard
  cannot be busy more than 100% of the time:
      X <= 1 / D_shard = n_shards / (requests * t_service)

``throughput_bound`` is the smaller one; queueing near the knee, where the two
meet, keeps a real system below both. Setting them equal gives the shards that
R replicas need, ``shards_needed``: n_shards = requests * t_service * (R - 1) / t_compute,
a ratio of shards to replicas of about requests * t_service / t_compute.

``runtime_and_resources``: a target reached after ``steps`` steps at X steps per
second takes steps / X seconds on R + n_shards machines. More replicas need more
steps (their gradients are staler): time falls with diminishing returns while
machine-seconds grow, the lecture's trade-off.
"""

from __future__ import annotations

import math

from course_lib.checks import check_int, check_nonnegative, check_positive


def _check(n_shards, t_compute, t_service, requests) -> None:
    check_int(n_shards, "n_shards", 1)
    check_positive(t_compute, "t_compute")
    check_nonnegative(t_service, "t_service", why="seconds per request at a server holding the whole model")
    check_positive(requests, "requests")


def replica_bound(n_replicas: int, n_shards: int, t_compute: float, t_service: float,
                  requests: float = 2.0) -> float:
    """Steps per second when no replica ever waits in a queue: R / (t_compute + requests * t_service / n_shards)."""
    check_int(n_replicas, "n_replicas", 1)
    _check(n_shards, t_compute, t_service, requests)
    return n_replicas / (t_compute + requests * t_service / n_shards)


def server_bound(n_shards: int, t_service: float, requests: float = 2.0) -> float:
    """Steps per second that keep every shard 100% busy: n_shards / (requests * t_service); inf if t_service = 0."""
    _check(n_shards, 1.0, t_service, requests)
    return math.inf if t_service == 0 else n_shards / (requests * t_service)


def throughput_bound(n_replicas: int, n_shards: int, t_compute: float, t_service: float,
                     requests: float = 2.0) -> float:
    """X <= min(replica bound, server bound), in steps per second of all replicas together."""
    return min(replica_bound(n_replicas, n_shards, t_compute, t_service, requests),
               server_bound(n_shards, t_service, requests))


def shards_needed(n_replicas: int, t_compute: float, t_service: float, requests: float = 2.0) -> int:
    """The fewest shards that keep R replicas replica-bound: ceil(requests * t_service * (R - 1) / t_compute), >= 1."""
    check_int(n_replicas, "n_replicas", 1)
    _check(1, t_compute, t_service, requests)
    return max(1, math.ceil(requests * t_service * (n_replicas - 1) / t_compute - 1e-9))


def runtime_and_resources(steps: float, n_replicas: int, n_shards: int, throughput: float) -> tuple[float, float]:
    """(seconds, machine-seconds) to do ``steps`` steps at ``throughput`` steps per second on
    n_replicas + n_shards machines: steps / X, and that times (R + n_shards)."""
    check_positive(throughput, "throughput")
    seconds = steps / throughput
    return seconds, seconds * (n_replicas + n_shards)
