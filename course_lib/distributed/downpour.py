"""Downpour SGD: a sharded parameter server and asynchronous model replicas.

Lecture 5, "Downpour SGD" (Dean et al. 2012, "Large Scale Distributed Deep Networks"): the
parameter server is cut into ``n_shards`` shards, each owning a slice of the parameters and
updating it on its own, with its own optimizer state ("Adagrad implemented locally within each
parameter server shard"); the shards never talk to each other. ``n_replicas`` model replicas
train independently on their own part of the data: every ``n_fetch`` steps a replica fetches
fresh parameters, every ``n_push`` steps it pushes its accumulated gradient.

Reading order
-------------
1. ``stale_lr`` and ``Shard``: one parameter-server shard. ``Shard.push`` is the heart of Downpour:
   staleness = updates this shard applied since the replica fetched, then one optimizer step
   (``course_lib.optim``'s SGD or Adagrad), optionally with lr / staleness ("Gupta et al. 2016" in
   the lecture: Zhang et al., "Staleness-aware Async-SGD for Distributed Deep Learning", IJCAI 2016).
2. ``Replica``: fetch/compute/push bookkeeping; ``split_data`` gives each its data.
3. ``simulate``: a seeded, event-driven simulation in virtual time; replica speeds, network
   delays and failures are parameters: the same call, the same answer.
4. ``train_synchronous``: the baseline, synchronous SGD over the replicas.

The model is ``course_lib.models.TinyNet`` (one flat parameter vector: a shard is a slice of
it); the same ``Shard`` and ``Replica`` run on real processes in
``course_lib.machinery.downpour_processes`` (not the lecture). A *step* is one minibatch gradient
of one replica, an *update* one push applied by one shard; ``version`` counts a shard's updates.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np

from course_lib.checks import check_int
from course_lib.models import TinyNet
from course_lib.optim import SGD, Adagrad

from .schedule import chunk_bounds


# ---- 1. A parameter-server shard ---------------------------------------------

def stale_lr(lr: float, staleness: int) -> float:
    """Staleness-dependent learning rate (Gupta et al. 2016): ``lr / staleness``,
    and ``lr`` for a fresh gradient (staleness 0)."""
    if staleness < 0:
        raise ValueError(f"staleness counts missed updates and cannot be negative, got {staleness}")
    return lr / max(1, staleness)


class ShardFailure(RuntimeError):
    """A parameter-server shard is gone: its slice of the model and its optimizer state are lost."""


class Shard:
    """One parameter-server shard: parameters ``w[lo:hi]`` and their optimizer.

    Attributes
    ----------
    index, lo, hi : which shard, and the slice of the flat vector it owns
    params : float64 (hi - lo,), updated in place by ``push``
    optimizer : ``course_lib.optim.SGD`` or ``Adagrad`` over [params]
    version : number of updates applied so far
    staleness : list of int, the staleness of every update, in order
    """

    def __init__(self, index: int, lo: int, hi: int, params: np.ndarray, optimizer: str = "adagrad",
                 lr: float = 0.1, staleness_lr: bool = False):
        if optimizer not in ("sgd", "adagrad"):
            raise ValueError(f"optimizer must be 'sgd' or 'adagrad', got {optimizer!r}")
        self.index, self.lo, self.hi = index, lo, hi
        self.params = np.array(params, dtype=np.float64)          # our own copy
        self.base_lr, self.staleness_lr = float(lr), bool(staleness_lr)
        self.optimizer = (Adagrad if optimizer == "adagrad" else SGD)([self.params], lr=lr)
        self.version, self.staleness = 0, []                      # updates applied; the staleness of each

    def fetch(self) -> tuple[int, np.ndarray]:
        """The current version and a copy of the parameters."""
        return self.version, self.params.copy()

    def push(self, grad: np.ndarray, fetched_version: int) -> int:
        """Apply one replica's gradient for this shard's slice; return its staleness.

        staleness = version now - version the replica fetched (updates it missed);
        lr = lr / max(1, staleness) when ``staleness_lr`` (Gupta et al. 2016);
        then one optimizer step; version += 1.
        """
        if grad.shape != self.params.shape:
            raise ValueError(f"shard {self.index} owns parameters [{self.lo}:{self.hi}] "
                             f"({self.hi - self.lo} values) but got a gradient of shape {grad.shape}")
        staleness = self.version - fetched_version
        self.optimizer.lr = stale_lr(self.base_lr, staleness) if self.staleness_lr else self.base_lr
        self.optimizer.step([grad])
        self.version += 1
        self.staleness.append(staleness)
        return staleness


def make_shards(w0: np.ndarray, n_shards: int, shard=Shard, **kwargs) -> list[Shard]:
    """w0 cut into ``n_shards`` contiguous shards (``chunk_bounds``): ``shard(s, lo, hi, w0[lo:hi], **kwargs)``."""
    check_int(n_shards, "n_shards", 1, w0.size, why="a shard owns at least one parameter")
    return [shard(s, lo, hi, w0[lo:hi], **kwargs)
            for s, (lo, hi) in enumerate(chunk_bounds(w0.size, n_shards))]


# ---- 2. A replica's bookkeeping (simulated or on processes) ------------------

class Replica:
    """A model replica: its data shard, its copy of the parameters, its pending gradient.

    One step: if ``due_fetch()`` (every n_fetch steps), fetch from every shard and
    ``set_params``; then ``compute()`` one minibatch gradient there, accumulate it, and get
    back the mean accumulated gradient when a push is due (every n_push steps), else None.
    """

    def __init__(self, rank: int, model: TinyNet, x: np.ndarray, y: np.ndarray, batch: int,
                 n_fetch: int, n_push: int, seed: int):
        if n_fetch < 1 or n_push < 1:
            raise ValueError(f"n_fetch and n_push count steps and must be >= 1, got {n_fetch}, {n_push}")
        self.rank, self.model, self.x, self.y, self.batch = rank, model, x, y, batch
        self.n_fetch, self.n_push = n_fetch, n_push
        self.rng = np.random.default_rng([seed, rank])
        self.steps, self.params, self.versions = 0, None, None
        self.pending, self.n_pending = 0.0, 0

    def due_fetch(self) -> bool:
        return self.steps % self.n_fetch == 0

    def set_params(self, fetched: list[tuple[int, np.ndarray]]) -> None:
        """Store (version, slice) from every shard, in shard order."""
        self.versions = [v for v, _ in fetched]
        self.params = np.concatenate([p for _, p in fetched])

    def compute(self) -> np.ndarray | None:
        """One minibatch gradient at ``params``, accumulated; their mean (n_params,) if a push is due, else None."""
        idx = self.rng.integers(0, len(self.x), self.batch)
        _, g = self.model.loss_and_grad(self.params, self.x[idx], self.y[idx])
        self.pending, self.n_pending, self.steps = self.pending + g, self.n_pending + 1, self.steps + 1
        if self.steps % self.n_push:
            return None
        mean, self.pending, self.n_pending = self.pending / self.n_pending, 0.0, 0
        return mean


def split_data(x: np.ndarray, y: np.ndarray, n_replicas: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Replica r trains on examples r, r + R, r + 2R, ... (its own data shard), R = ``n_replicas``."""
    return [(x[r::n_replicas], y[r::n_replicas]) for r in range(n_replicas)]


@dataclass
class DownpourResult:
    """What a Downpour run leaves behind.

    params : final flat parameters (n_params,); final_loss : their loss on the whole training set
    curve : (n_evals, 3) rows of (steps done, time in s, training loss)
    staleness : (n_updates, 2) rows of (shard, staleness), one per update
    steps_per_replica : steps each replica completed; failed : replicas that died
    """
    params: np.ndarray
    curve: np.ndarray
    staleness: np.ndarray
    steps_per_replica: list[int]
    failed: list[int] = field(default_factory=list)
    final_loss: float = float("nan")


# ---- 3. Event-driven simulation (virtual time, seeded) -----------------------

class _Simulation:
    """One ``simulate`` run: shards, replicas, and a heap of events ``(time, seq, kind, payload)``,
    earliest first: ``"done"`` (replica r finished a step), ``"arrive"`` (a delayed push)."""

    def __init__(self, shards, replicas, step_time, jitter, network_delay, shard_failures, rng):
        self.shards, self.replicas, self.rng = shards, replicas, rng
        self.step_time = np.broadcast_to(np.asarray(step_time, dtype=float), (len(replicas),))
        self.jitter, self.network_delay, self.shard_dies = jitter, network_delay, shard_failures
        self.events, self.seq = [], itertools.count()          # seq: ties in the order scheduled

    def shard(self, s: int, now: float) -> Shard:
        """Shard s, if it is still alive at time ``now``; else ShardFailure."""
        if now >= self.shard_dies.get(s, np.inf):
            sh = self.shards[s]
            raise ShardFailure(f"shard {s} (parameters [{sh.lo}:{sh.hi}]) died at t = {self.shard_dies[s]:.2f} s "
                               f"after {sh.version} updates; a replica reached it at t = {now:.2f} s. "
                               f"Downpour tolerates dead replicas, not dead shards: that slice of the "
                               f"model and its Adagrad state are lost (restart from a checkpoint)")
        return self.shards[s]

    def start_step(self, r: int, now: float) -> None:
        """Replica r fetches if due; its step ends step_time * exp(N(0, jitter)) seconds later."""
        if self.replicas[r].due_fetch():
            self.replicas[r].set_params([self.shard(s, now).fetch() for s in range(len(self.shards))])
        end = now + self.step_time[r] * np.exp(self.jitter * self.rng.standard_normal())
        heapq.heappush(self.events, (end, next(self.seq), "done", r))

    def push(self, r: int, grad: np.ndarray, now: float) -> None:
        """One message per shard, each after its own exponential network delay (or at once)."""
        for s, sh in enumerate(self.shards):
            delay = self.rng.exponential(self.network_delay) if self.network_delay else 0.0
            message = (s, grad[sh.lo:sh.hi], self.replicas[r].versions[s])
            if delay:
                heapq.heappush(self.events, (now + delay, next(self.seq), "arrive", message))
            else:
                self.shard(s, now).push(*message[1:])


def simulate(model: TinyNet, x: np.ndarray, y: np.ndarray, *, n_replicas: int, n_shards: int,
             total_steps: int, optimizer: str = "adagrad", lr: float = 0.1, staleness_lr: bool = False,
             n_fetch: int = 1, n_push: int = 1, batch: int = 16, step_time=1.0, jitter: float = 0.2,
             network_delay: float = 0.0, replica_failures: dict | None = None, shard_failures: dict | None = None,
             eval_every: int = 50, target_loss: float | None = None, seed: int = 0, shard=Shard) -> DownpourResult:
    """Run Downpour SGD in virtual time until ``total_steps`` steps are done (or ``target_loss`` is reached).

    Parameters
    ----------
    x : (n, n_in), y : (n,) training data, split across replicas
    step_time : seconds per step, a float or one per replica (a straggler is slow)
    jitter : each step takes step_time * exp(N(0, jitter)) seconds
    network_delay : mean (exponential) delay of a push reaching each shard;
        with delays the shards apply pushes in different orders
    replica_failures : {replica: time} the replica dies then, its step in flight lost
    shard_failures : {shard: time}; a fetch or push reaching it later raises ShardFailure
    eval_every : record the training loss of the server's parameters every so many steps
    target_loss : stop at the first of those records at or below it (None: run all ``total_steps``)
    shard : builds each shard (``make_shards``): ``Shard``, or a subclass with another update rule
    """
    init_rng, rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))  # 2 streams
    shards = make_shards(model.init(init_rng), n_shards, shard, optimizer=optimizer, lr=lr, staleness_lr=staleness_lr)
    replicas = [Replica(r, model, xr, yr, batch, n_fetch, n_push, seed)
                for r, (xr, yr) in enumerate(split_data(x, y, n_replicas))]
    sim = _Simulation(shards, replicas, step_time, jitter, network_delay, shard_failures or {}, rng)
    dies = replica_failures or {}
    for r in range(n_replicas):
        sim.start_step(r, 0.0)
    done, curve, failed = 0, [], []
    while done < total_steps:
        if not sim.events:
            raise RuntimeError(f"every replica died after {done} of {total_steps} steps "
                               f"(failures {dies}); nothing is left to train")
        now, _, kind, payload = heapq.heappop(sim.events)
        if kind == "arrive":                                       # a delayed push reaches a shard
            s, grad, version = payload
            sim.shard(s, now).push(grad, version)
            continue
        r = payload
        if now >= dies.get(r, np.inf):                             # died before finishing this step
            failed.append(r)
            continue
        grad, done = replicas[r].compute(), done + 1
        if grad is not None:
            sim.push(r, grad, now)
        if done % eval_every == 0 or done == total_steps:
            curve.append((done, now, model.loss(np.concatenate([sh.params for sh in shards]), x, y)))
            if target_loss is not None and curve[-1][2] <= target_loss:
                break                                              # reached: the time to the target
        if done < total_steps:
            sim.start_step(r, now)
    failed = set(failed) | {r for r, t in dies.items() if t <= now}     # died, even if between steps
    return _result(model, shards, [rep.steps for rep in replicas], curve, failed, x, y)


def _result(model, shards, steps_per_replica, curve, failed, x, y) -> DownpourResult:
    w = np.concatenate([sh.params for sh in shards])
    staleness = [(sh.index, s) for sh in shards for s in sh.staleness]
    return DownpourResult(w, np.array(curve, dtype=float).reshape(-1, 3),
                          np.array(staleness, dtype=np.int64).reshape(-1, 2),
                          list(steps_per_replica), sorted(failed), model.loss(w, x, y))


# ---- 4. The baseline: synchronous SGD ----------------------------------------

def train_synchronous(model: TinyNet, x: np.ndarray, y: np.ndarray, *, n_replicas: int,
                      total_steps: int, optimizer: str = "sgd", lr: float = 0.1, batch: int = 16,
                      step_time=1.0, jitter: float = 0.2, eval_every: int = 50,
                      seed: int = 0) -> DownpourResult:
    """Synchronous data-parallel SGD with the same budget of ``total_steps`` gradients.

    Each round every replica computes one gradient at the same parameters; their mean is
    applied once (no staleness). A round lasts as long as its slowest replica: the straggler
    problem Downpour avoids.
    """
    init_rng, rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))  # 2 streams
    shard = make_shards(model.init(init_rng), 1, optimizer=optimizer, lr=lr)[0]
    replicas = [Replica(r, model, xr, yr, batch, 1, 1, seed)
                for r, (xr, yr) in enumerate(split_data(x, y, n_replicas))]
    step_time = np.broadcast_to(np.asarray(step_time, dtype=float), (n_replicas,))
    now, done, curve = 0.0, 0, []
    while done < total_steps:
        version, w = shard.fetch()
        grads = []
        for rep in replicas[:total_steps - done]:
            rep.set_params([(version, w)])
            grads.append(rep.compute())
        now += float(np.max(step_time[:len(grads)] * np.exp(jitter * rng.standard_normal(len(grads)))))
        shard.push(np.mean(grads, axis=0), version)
        before, done = done, done + len(grads)
        if done // eval_every > before // eval_every or done == total_steps:
            curve.append((done, now, model.loss(shard.params, x, y)))
    return _result(model, [shard], [rep.steps for rep in replicas], curve, [], x, y)
