"""Downpour SGD: a sharded parameter server and asynchronous model replicas.

Lecture 5, "Downpour SGD" (Dean et al. 2012, "Large Scale Distributed Deep
Networks"): the parameter server is cut into S shards, each owning a slice of
the parameters and updating it on its own, with its own optimizer state
("Adagrad implemented locally within each parameter server shard"); the
shards never talk to each other. R model replicas train independently on
their own part of the data: every ``n_fetch`` steps a replica fetches fresh
parameters, every ``n_push`` steps it pushes its accumulated gradient.

Reading order
-------------
1. ``TinyNet``: the model a replica trains, a 64-hidden-10 MLP with its
   parameters in one flat vector (so that shards are slices of it).
2. ``stale_lr`` and ``Shard``: one parameter-server shard. ``Shard.push`` is
   the heart of Downpour: staleness = updates this shard applied since the
   replica fetched, then one optimizer step (``course_lib.optim``'s SGD or
   Adagrad), optionally with lr / staleness ("Gupta et al. 2016" in the
   lecture: Zhang, Gupta, Lian and Liu, "Staleness-aware Async-SGD for
   Distributed Deep Learning", IJCAI 2016).
3. ``Replica``: fetch/compute/push bookkeeping, shared by both modes below.
4. ``simulate``: a seeded, event-driven simulation in virtual time. Replica
   speeds, network delays, replica and shard failures are parameters, so the
   same call always gives the same answer (what a notebook needs).
5. ``train_synchronous``: the baseline, synchronous SGD over R replicas.
6. ``run_processes``: the same Shard and Replica logic on real processes
   (S shard processes, R replica processes, pipes between them); a replica
   may be killed mid-training and the others finish; a dead shard is an error.
   Every child dies with the parent (a killed or restarted notebook kernel).

Vocabulary: R = ``n_replicas``, S = ``n_shards``; a *step* is one minibatch
gradient computed by one replica; an *update* is one push applied by one
shard; ``version`` counts a shard's updates.
"""

from __future__ import annotations

import heapq
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import connection

import numpy as np

from course_lib.optim import SGD, Adagrad

from .procs import die_with_parent
from .schedule import chunk_bounds


# --------------------------------------------------------------------------
# 1. The model a replica trains
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class TinyNet:
    """``n_in -> n_hidden (ReLU) -> n_out`` softmax classifier on a flat parameter vector.

    A small network instead of LeNet-5 so that thousands of asynchronous steps
    run in seconds on a laptop; ``n_hidden = 0`` is softmax regression.
    Layout of the vector: W1 (n_in, n_hidden), b1, W2 (n_hidden, n_out), b2.
    """
    n_in: int = 64
    n_hidden: int = 32
    n_out: int = 10

    def _shapes(self):
        if self.n_hidden == 0:
            return [(self.n_in, self.n_out), (self.n_out,)]
        return [(self.n_in, self.n_hidden), (self.n_hidden,), (self.n_hidden, self.n_out), (self.n_out,)]

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self._shapes())

    def unflatten(self, w: np.ndarray) -> list[np.ndarray]:
        """Views of the flat vector, one per weight/bias, in layout order."""
        if w.shape != (self.n_params,):
            raise ValueError(f"parameters must have shape ({self.n_params},), got {w.shape}")
        out, start = [], 0
        for s in self._shapes():
            out.append(w[start:start + math.prod(s)].reshape(s))
            start += math.prod(s)
        return out

    def init(self, rng: np.random.Generator) -> np.ndarray:
        """He-style initial weights, zero biases: float64 (n_params,)."""
        parts = [rng.normal(0, np.sqrt(2 / s[0]), s) if len(s) == 2 else np.zeros(s)
                 for s in self._shapes()]
        return np.concatenate([p.ravel() for p in parts])

    def logits(self, w: np.ndarray, x: np.ndarray) -> np.ndarray:
        """x (B, n_in) -> logits (B, n_out)."""
        p = self.unflatten(w)
        if self.n_hidden == 0:
            return x @ p[0] + p[1]
        return np.maximum(x @ p[0] + p[1], 0) @ p[2] + p[3]

    def loss_and_grad(self, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean cross-entropy over the batch and its gradient (n_params,)."""
        p, B = self.unflatten(w), len(x)
        h = np.maximum(x @ p[0] + p[1], 0) if self.n_hidden else x          # (B, n_hidden)
        z = h @ p[-2] + p[-1]                                                # (B, n_out)
        z = z - z.max(axis=1, keepdims=True)
        prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(prob[np.arange(B), y] + 1e-300))
        dz = prob.copy()
        dz[np.arange(B), y] -= 1
        dz /= B                                                               # (B, n_out)
        grads = [h.T @ dz, dz.sum(0)]
        if self.n_hidden:
            dh = (dz @ p[2].T) * (h > 0)                                      # (B, n_hidden)
            grads = [x.T @ dh, dh.sum(0)] + grads
        return float(loss), np.concatenate([g.ravel() for g in grads])

    def loss(self, w, x, y) -> float:
        return self.loss_and_grad(w, x, y)[0]

    def error(self, w, x, y) -> float:
        return float(np.mean(self.logits(w, x).argmax(1) != y))


# --------------------------------------------------------------------------
# 2. A parameter-server shard
# --------------------------------------------------------------------------

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
        self.version = 0
        self.staleness: list[int] = []

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


def make_shards(w0: np.ndarray, n_shards: int, **shard_kwargs) -> list[Shard]:
    """Cut the flat vector w0 into ``n_shards`` contiguous shards (``chunk_bounds``)."""
    if not 1 <= n_shards <= w0.size:
        raise ValueError(f"n_shards must be in [1, {w0.size}] (one parameter at least each), got {n_shards}")
    return [Shard(s, lo, hi, w0[lo:hi], **shard_kwargs)
            for s, (lo, hi) in enumerate(chunk_bounds(w0.size, n_shards))]


# --------------------------------------------------------------------------
# 3. A replica's bookkeeping (both modes)
# --------------------------------------------------------------------------

class Replica:
    """A model replica: its data shard, its copy of the parameters, its pending gradient.

    One step, as both modes drive it: if ``due_fetch()`` (every n_fetch
    steps), fetch from every shard and ``set_params``; then ``compute()`` one
    minibatch gradient at those parameters, accumulate it, and get back the
    mean accumulated gradient when a push is due (every n_push steps), else None.
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
        idx = self.rng.integers(0, len(self.x), self.batch)
        _, g = self.model.loss_and_grad(self.params, self.x[idx], self.y[idx])
        self.pending, self.n_pending, self.steps = self.pending + g, self.n_pending + 1, self.steps + 1
        if self.steps % self.n_push:
            return None
        mean, self.pending, self.n_pending = self.pending / self.n_pending, 0.0, 0
        return mean


def _split_data(x, y, n_replicas):
    """Replica r trains on examples r, r + R, r + 2R, ... (its own data shard)."""
    return [(x[r::n_replicas], y[r::n_replicas]) for r in range(n_replicas)]


@dataclass
class DownpourResult:
    """What a Downpour run leaves behind.

    params : final flat parameters (n_params,)
    curve : (n_evals, 3) rows of (steps done, time in s, training loss)
    staleness : (n_updates, 2) rows of (shard, staleness), one per update
    steps_per_replica : steps each replica completed; failed : replicas that died
    final_loss : training loss of ``params`` on the whole training set
    """
    params: np.ndarray
    curve: np.ndarray
    staleness: np.ndarray
    steps_per_replica: list[int]
    failed: list[int] = field(default_factory=list)
    final_loss: float = float("nan")


# --------------------------------------------------------------------------
# 4. Event-driven simulation (virtual time, seeded)
# --------------------------------------------------------------------------

def simulate(model: TinyNet, x: np.ndarray, y: np.ndarray, *, n_replicas: int, n_shards: int,
             total_steps: int, optimizer: str = "adagrad", lr: float = 0.1, staleness_lr: bool = False,
             n_fetch: int = 1, n_push: int = 1, batch: int = 16, step_time=1.0, jitter: float = 0.2,
             network_delay: float = 0.0, replica_failures: dict | None = None,
             shard_failures: dict | None = None, eval_every: int = 50, seed: int = 0) -> DownpourResult:
    """Run Downpour SGD in virtual time until ``total_steps`` steps are done.

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
    """
    rng = np.random.default_rng(seed)
    shards = make_shards(model.init(np.random.default_rng(seed)), n_shards, optimizer=optimizer,
                         lr=lr, staleness_lr=staleness_lr)
    replicas = [Replica(r, model, xr, yr, batch, n_fetch, n_push, seed)
                for r, (xr, yr) in enumerate(_split_data(x, y, n_replicas))]
    step_time = np.broadcast_to(np.asarray(step_time, dtype=float), (n_replicas,))
    dies, shard_dies = replica_failures or {}, shard_failures or {}

    def alive_shard(s, now):
        if now >= shard_dies.get(s, np.inf):
            sh = shards[s]
            raise ShardFailure(f"shard {s} (parameters [{sh.lo}:{sh.hi}]) died at t = {shard_dies[s]:.2f} s "
                               f"after {sh.version} updates; a replica reached it at t = {now:.2f} s. "
                               f"Downpour tolerates dead replicas, not dead shards: that slice of the "
                               f"model and its Adagrad state are lost (restart from a checkpoint)")
        return shards[s]

    events, seq = [], 0                       # (time, seq, kind, payload)

    def schedule(t, kind, payload):
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, payload))
        seq += 1

    def start_step(r, now):
        if replicas[r].due_fetch():
            replicas[r].set_params([alive_shard(s, now).fetch() for s in range(n_shards)])
        schedule(now + step_time[r] * np.exp(jitter * rng.standard_normal()), "done", r)

    for r in range(n_replicas):
        start_step(r, 0.0)
    done, curve, failed = 0, [], []
    while done < total_steps:
        if not events:
            raise RuntimeError(f"every replica died after {done} of {total_steps} steps "
                               f"(failures {dies}); nothing is left to train")
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":                                       # a push reaches a shard
            s, grad, version, r = payload
            alive_shard(s, now).push(grad, version)
            continue
        r = payload
        if now >= dies.get(r, np.inf):                             # died before finishing this step
            failed.append(r)
            continue
        grad, done = replicas[r].compute(), done + 1
        if grad is not None:
            for s, sh in enumerate(shards):
                delay = rng.exponential(network_delay) if network_delay else 0.0
                if delay:
                    schedule(now + delay, "arrive", (s, grad[sh.lo:sh.hi], replicas[r].versions[s], r))
                else:
                    alive_shard(s, now).push(grad[sh.lo:sh.hi], replicas[r].versions[s])
        if done % eval_every == 0 or done == total_steps:
            w = np.concatenate([sh.params for sh in shards])
            curve.append((done, now, model.loss(w, x, y)))
        if done < total_steps:
            start_step(r, now)
    failed = set(failed) | {r for r, t in dies.items() if t <= now}     # died, even if between steps
    return _result(model, shards, [rep.steps for rep in replicas], curve, failed, x, y)


def _result(model, shards, steps_per_replica, curve, failed, x, y) -> DownpourResult:
    w = np.concatenate([sh.params for sh in shards])
    staleness = [(sh.index, s) for sh in shards for s in sh.staleness]
    return DownpourResult(w, np.array(curve, dtype=float).reshape(-1, 3),
                          np.array(staleness, dtype=np.int64).reshape(-1, 2),
                          list(steps_per_replica), sorted(failed), model.loss(w, x, y))


# --------------------------------------------------------------------------
# 5. The baseline: synchronous SGD
# --------------------------------------------------------------------------

def train_synchronous(model: TinyNet, x: np.ndarray, y: np.ndarray, *, n_replicas: int,
                      total_steps: int, optimizer: str = "sgd", lr: float = 0.1, batch: int = 16,
                      step_time=1.0, jitter: float = 0.2, eval_every: int = 50,
                      seed: int = 0) -> DownpourResult:
    """Synchronous data-parallel SGD with the same budget of ``total_steps`` gradients.

    Each round every replica computes one gradient at the same parameters;
    their mean is applied once (no staleness). A round lasts as long as its
    slowest replica: the straggler problem Downpour avoids.
    """
    rng = np.random.default_rng(seed)
    shard = make_shards(model.init(np.random.default_rng(seed)), 1, optimizer=optimizer, lr=lr)[0]
    replicas = [Replica(r, model, xr, yr, batch, 1, 1, seed)
                for r, (xr, yr) in enumerate(_split_data(x, y, n_replicas))]
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


# --------------------------------------------------------------------------
# 6. Real processes: the same Shard and Replica, carried by pipes
# --------------------------------------------------------------------------

def _recv(conn, abort, timeout: float, peer=None):
    """Wait for one message on conn; None when ``abort`` is set, the ``peer``
    process has died, or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.05):
        if abort.is_set() or time.monotonic() > deadline or (peer is not None and not peer.is_alive()):
            return None
    return conn.recv()


def shard_worker(parent_pid, index, lo, hi, params, shard_kwargs, replica_conns, control, abort,
                 die_after) -> None:
    """A shard process: answer fetches, apply pushes, until the parent says "stop"
    (or sets ``abort``, or dies: ``procs.die_with_parent``).

    replica_conns : one pipe end per replica; control : the parent's pipe end,
    used to fetch (for the loss curve) and to stop. ``die_after``: SIGKILL
    ourselves after that many updates (a failure, for the lesson), or None.
    """
    die_with_parent(parent_pid)
    shard = Shard(index, lo, hi, params, **shard_kwargs)
    conns = list(replica_conns) + [control]
    while not abort.is_set():
        for conn in connection.wait(conns, timeout=0.1):
            try:
                msg = conn.recv()
            except (EOFError, OSError):                 # that replica is gone: forget it
                conns.remove(conn)
                continue
            if msg[0] == "fetch":
                conn.send(shard.fetch())
            elif msg[0] == "push":
                shard.push(msg[1], msg[2])
                if die_after is not None and shard.version >= die_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            elif msg[0] == "stop":                      # apply the pushes still in the pipes
                for c in conns[:-1]:
                    while c.poll():
                        m = c.recv()
                        if m[0] == "push":
                            shard.push(m[1], m[2])
                conn.send((shard.params, shard.staleness))
                return


def replica_worker(parent_pid, rank, model, x, y, settings, shard_conns, bounds, counter, steps, abort,
                   start, die_at_step) -> None:
    """A replica process: claim steps from the shared counter until ``total_steps`` are done
    (or the parent sets ``abort``, or dies: ``procs.die_with_parent``).

    ``start``: a barrier, so that all replicas begin together (none is starved
    by a late start). ``die_at_step``: SIGKILL ourselves right after that many
    steps of our own (a crash, for the lesson), or None.
    """
    die_with_parent(parent_pid)
    rep = Replica(rank, model, x, y, settings["batch"], settings["n_fetch"], settings["n_push"],
                  settings["seed"])
    try:
        start.wait(settings["timeout"])
    except threading.BrokenBarrierError:          # a sibling never came: go on without it
        pass
    while not abort.is_set():
        with counter.get_lock():                        # claim one step of the global budget
            if counter.value >= settings["total_steps"]:
                return
            counter.value += 1
        if rep.due_fetch():
            for conn in shard_conns:
                conn.send(("fetch",))
            fetched = [_recv(conn, abort, settings["timeout"]) for conn in shard_conns]
            if any(f is None for f in fetched):         # a shard is gone; the parent reports it
                return
            rep.set_params(fetched)
        grad = rep.compute()
        steps[rank] = rep.steps
        if grad is not None:
            for conn, (lo, hi), version in zip(shard_conns, bounds, rep.versions):
                conn.send(("push", grad[lo:hi], version))
        if die_at_step is not None and rep.steps >= die_at_step:
            os.kill(os.getpid(), signal.SIGKILL)


def _stop_all(procs, grace: float = 2.0) -> None:
    """Join each child with a timeout; terminate, then kill, the ones still running."""
    procs = [p for p in procs if p.pid is not None]          # started ones only
    for p in procs:
        p.join(grace)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(grace)
        if p.is_alive():
            p.kill()
            p.join(grace)


def run_processes(model: TinyNet, x: np.ndarray, y: np.ndarray, *, n_replicas: int, n_shards: int,
                  total_steps: int, optimizer: str = "adagrad", lr: float = 0.1,
                  staleness_lr: bool = False, n_fetch: int = 1, n_push: int = 1, batch: int = 16,
                  kill_replicas: dict | None = None, kill_shards: dict | None = None,
                  eval_interval: float = 0.05, timeout: float = 60.0, start_method: str | None = None,
                  seed: int = 0) -> DownpourResult:
    """Downpour SGD on S + R real processes; returns when ``total_steps`` steps are done.

    Parameters (as ``simulate``) and
    kill_replicas : {replica: its step count at which it is SIGKILLed}; the
        others go on and finish the budget
    kill_shards : {shard: update count at which it is SIGKILLed}; raises ShardFailure
    eval_interval : seconds between the parent's fetches for the loss curve
    timeout : seconds for the whole run (TimeoutError after it)
    start_method : "fork", "spawn", "forkserver" or None (the platform default)

    The parent creates every pipe, starts the children, watches their
    sentinels, joins every child with a timeout, and kills what is left in
    ``finally``. Each child dies with the parent (``procs.die_with_parent``).
    """
    import multiprocessing as mp
    ctx = mp.get_context(start_method)
    kill_replicas, kill_shards = kill_replicas or {}, kill_shards or {}
    w0 = model.init(np.random.default_rng(seed))
    bounds = chunk_bounds(w0.size, n_shards)
    shard_kwargs = dict(optimizer=optimizer, lr=lr, staleness_lr=staleness_lr)
    Shard(0, 0, 1, w0[:1], **shard_kwargs)                          # check the settings here, once
    settings = dict(batch=batch, n_fetch=n_fetch, n_push=n_push, seed=seed,
                    total_steps=total_steps, timeout=timeout)
    links = [[ctx.Pipe() for _ in range(n_shards)] for _ in range(n_replicas)]   # links[r][s]
    controls = [ctx.Pipe() for _ in range(n_shards)]
    counter, steps, abort = ctx.Value("q", 0), ctx.Array("q", n_replicas), ctx.Event()
    start_together = ctx.Barrier(n_replicas)
    parent = os.getpid()                                            # the children die with it
    shards = [ctx.Process(target=shard_worker, name=f"downpour-shard-{s}", daemon=True,
                          args=(parent, s, lo, hi, w0[lo:hi], shard_kwargs,
                                [links[r][s][1] for r in range(n_replicas)], controls[s][1], abort,
                                kill_shards.get(s)))
              for s, (lo, hi) in enumerate(bounds)]
    replicas = [ctx.Process(target=replica_worker, name=f"downpour-replica-{r}", daemon=True,
                            args=(parent, r, model, xr, yr, settings, [links[r][s][0] for s in range(n_shards)],
                                  bounds, counter, steps, abort, start_together, kill_replicas.get(r)))
                for r, (xr, yr) in enumerate(_split_data(x, y, n_replicas))]
    curve, start = [], time.monotonic()
    try:
        for p in shards + replicas:
            p.start()
        while any(p.is_alive() for p in replicas):
            # wake for a child that exits, else every eval_interval; a dead child's sentinel
            # stays ready, so waiting on it too would turn this into a busy loop
            connection.wait([p.sentinel for p in shards + replicas if p.is_alive()], timeout=eval_interval)
            _check_shards(shards, bounds, counter.value, abort)
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"Downpour did not finish {total_steps} steps in {timeout} s "
                                   f"({counter.value} done)")
            curve.append(_observe(model, controls, shards, counter.value, time.monotonic() - start,
                                  x, y, abort, timeout))
        _check_shards(shards, bounds, counter.value, abort)
        final = []
        for (conn, _), p in zip(controls, shards):
            conn.send(("stop",))
            final.append(_recv(conn, abort, timeout, peer=p))
        _check_shards(shards, bounds, counter.value, abort, stopped=final)
        w = np.concatenate([params for params, _ in final])
        curve.append((counter.value, time.monotonic() - start, model.loss(w, x, y)))
        staleness = [(s, st) for s, (_, log) in enumerate(final) for st in log]
        failed = [r for r, p in enumerate(replicas) if p.exitcode != 0]
        return DownpourResult(w, np.array(curve, dtype=float).reshape(-1, 3),
                              np.array(staleness, dtype=np.int64).reshape(-1, 2),
                              list(steps), failed,
                              model.loss(w, x, y))
    finally:
        abort.set()
        _stop_all(replicas + shards)
        for pair in [c for row in links for c in row] + controls:
            for end in pair:
                end.close()


def _check_shards(shards, bounds, steps_done, abort, stopped=None) -> None:
    """Raise ShardFailure if a shard process has exited (before it was told to stop,
    or without answering the stop: ``stopped[s]`` is None)."""
    for s, p in enumerate(shards):
        if (p.exitcode is not None and stopped is None) or (stopped is not None and stopped[s] is None):
            abort.set()
            lo, hi = bounds[s]
            raise ShardFailure(f"shard {s} (parameters [{lo}:{hi}]) exited with code {p.exitcode} "
                               f"when the replicas had claimed {steps_done} steps between them; "
                               f"Downpour tolerates dead replicas, not dead shards: that slice of the "
                               f"model and its optimizer state are lost (restart from a checkpoint)")


def _observe(model, controls, shards, steps_done, elapsed, x, y, abort, timeout):
    """Fetch every shard's slice through the control pipes and compute the training loss."""
    for conn, _ in controls:
        conn.send(("fetch",))
    fetched = [_recv(conn, abort, timeout, peer=p) for (conn, _), p in zip(controls, shards)]
    if any(f is None for f in fetched):
        return (steps_done, elapsed, np.nan)
    w = np.concatenate([p for _, p in fetched])
    return (steps_done, elapsed, model.loss(w, x, y))


def robustness_sweep(model: TinyNet, x: np.ndarray, y: np.ndarray, replicas, arms: dict,
                     total_steps: int, **common) -> dict[str, list[DownpourResult]]:
    """Run every arm at every number of replicas; the experiment of lesson 09.

    arms : {label: keyword arguments for ``simulate``}, or with
        ``synchronous=True`` for ``train_synchronous``; ``common`` goes to all.
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
