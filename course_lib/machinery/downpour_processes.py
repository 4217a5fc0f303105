"""Downpour SGD on real processes: the lecture's ``Shard`` and ``Replica``, carried by pipes.

Not the lecture: the algorithm and its seeded simulation are
``course_lib.distributed.downpour``. ``train_on_processes`` runs the same
``Shard`` and ``Replica`` on n_shards + n_replicas processes, started, watched
and cleaned up by the kit's one process supervisor, ``procs.run_processes``:

* ranks 0 .. n_shards - 1 are shards (``shard_worker``): they answer fetches and
  apply pushes until the parent says "stop"; the other ranks are replicas
  (``replica_worker``): they claim steps from a shared counter until
  ``total_steps`` are done. One pipe joins each replica to each shard.
* a replica may die (``kill_replicas``, or a crash): the supervisor records it
  (``may_die``) and the others finish the budget. A dead shard is an error
  (``ShardFailure``): its slice of the model is lost.
* while they run, the parent (``_Parent``) fetches every shard's slice through
  one more pipe per shard, for the loss curve, and once every replica is done it
  tells the shards to stop.

Emulated costs (lesson 9's throughput sweep). On a laptop every process shares
the same few cores, so the real costs (a TinyNet gradient, an Adagrad step on a
slice) are tiny and mostly CPU contention: neither a server-bound nor a
replica-bound regime would show. Two options make the costs explicit, as
``time.sleep`` (which holds no core, so each process behaves as if it had a
machine of its own):

* ``compute_time``: seconds a replica adds to every step, as if its model were
  bigger (the gradient's time, t_compute);
* ``service_time``: seconds a server holding the *whole* model would spend on
  one replica's request (a fetch or a push); shard s, owning ``w[lo:hi]`` of N
  parameters, spends ``service_time * (hi - lo) / N`` (its share: sharding the
  server splits its work). The parent's own fetches, for the loss curve, cost nothing.

Both are emulations, not measurements of anything: they stand in for a bigger
model and a slower or busier server. ``course_lib.distributed.downpour_throughput``
is the model they are compared with.

Every child dies with its parent (a killed or restarted notebook kernel) and
is joined with a timeout; every pipe is closed in ``finally``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing import connection, get_context

import numpy as np

from course_lib.checks import check_int, check_nonnegative
from course_lib.distributed.downpour import DownpourResult, Replica, Shard, ShardFailure, split_data
from course_lib.distributed.schedule import chunk_bounds
from course_lib.models import TinyNet

from .procs import CollectiveError, run_processes

_EMULATED = "emulated seconds of sleep: 0 for none, e.g. 0.01 for 10 ms"


def shard_worker(index, lo, hi, params, shard_kwargs, replica_conns, control, die_after,
                 busy: float = 0.0) -> None:
    """A shard process: answer fetches, apply pushes, until the parent says "stop".

    replica_conns : one pipe end per replica; control : the parent's pipe end,
    used to fetch (for the loss curve) and to stop: the shard then applies the
    pushes still in the pipes and answers with ``(params, staleness)``.
    ``die_after``: SIGKILL ourselves after that many updates (a failure, for the lesson), or None.
    ``busy``: emulated seconds of work per replica request, fetch or push (``service_time``'s share).
    """
    shard = Shard(index, lo, hi, params, **shard_kwargs)
    conns = list(replica_conns) + [control]
    while True:
        for conn in connection.wait(conns):
            try:
                msg = conn.recv()
            except (EOFError, OSError):                 # that replica is gone: forget it
                conns.remove(conn)
                continue
            if busy and conn is not control and msg[0] in ("fetch", "push"):
                time.sleep(busy)                        # emulated service time (module docstring)
            if msg[0] == "fetch":
                conn.send(shard.fetch())
            elif msg[0] == "push":
                shard.push(msg[1], msg[2])
                if die_after is not None and shard.version >= die_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            elif msg[0] == "stop":                      # apply the pushes still in the pipes
                for c in conns[:-1]:
                    try:
                        while c.poll():
                            m = c.recv()
                            if m[0] == "push":
                                shard.push(m[1], m[2])
                    except (EOFError, OSError):         # that replica is gone: nothing more from it
                        conns.remove(c)
                conn.send((shard.params, shard.staleness))
                return


def replica_worker(rank, model, x, y, settings, shard_conns, bounds, counter, steps, start,
                   die_at_step) -> int:
    """A replica process: claim steps from the shared counter until ``total_steps`` are done;
    return the number of steps it took.

    ``start``: a barrier, so that all replicas begin together (none is starved
    by a late start). ``die_at_step``: SIGKILL ourselves right after that many
    steps of our own (a crash, for the lesson), or None.
    """
    rep = Replica(rank, model, x, y, settings["batch"], settings["n_fetch"], settings["n_push"],
                  settings["seed"])
    try:
        start.wait(settings["timeout"])
    except threading.BrokenBarrierError:          # a sibling never came: go on without it
        pass
    while True:
        with counter.get_lock():                        # claim one step of the global budget
            if counter.value >= settings["total_steps"]:
                return rep.steps
            counter.value += 1
        if rep.due_fetch():
            for conn in shard_conns:
                conn.send(("fetch",))
            rep.set_params([conn.recv() for conn in shard_conns])   # a dead shard: the parent stops us
        grad = rep.compute()
        if settings["compute_time"]:
            time.sleep(settings["compute_time"])        # emulated: a bigger model's gradient (module docstring)
        steps[rank] = rep.steps
        if grad is not None:
            for conn, (lo, hi), version in zip(shard_conns, bounds, rep.versions):
                conn.send(("push", grad[lo:hi], version))
        if die_at_step is not None and rep.steps >= die_at_step:
            os.kill(os.getpid(), signal.SIGKILL)


def _member(rank, worker, *args):
    """What ``run_processes`` starts for every rank: ``worker(*args)``, a shard or a replica."""
    return worker(*args)


def _recv(conn, timeout: float, peer):
    """One message on conn; None when the ``peer`` process has died or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.05):
        if time.monotonic() > deadline or not peer.is_alive():
            return None
    return conn.recv()


class _Parent:
    """The parent's work while the children run (``run_processes``' ``while_running``):
    sample the loss of the shards' parameters, then, once every replica is done, stop the shards.

    controls : the parent's end of one pipe per shard; ``curve`` collects (steps done,
    seconds, loss); ``final`` holds each shard's answer to "stop" (None: it gave none).
    """

    def __init__(self, model, x, y, controls, counter, timeout):
        self.model, self.x, self.y, self.controls = model, x, y, controls
        self.counter, self.timeout = counter, timeout
        self.start, self.curve, self.final = time.monotonic(), [], None

    def __call__(self, procs, finished) -> None:
        n_shards = len(self.controls)
        if self.final is not None:                  # stopped: run_processes waits for them to exit
            return
        if all(finished[n_shards:]):                # every replica returned or died
            self.final = self.ask("stop", procs[:n_shards])
            return
        fetched = self.ask("fetch", procs[:n_shards])
        loss = (np.nan if any(f is None for f in fetched)
                else self.model.loss(np.concatenate([p for _, p in fetched]), self.x, self.y))
        self.curve.append((self.counter.value, self.seconds(), loss))

    def ask(self, what: str, shards) -> list:
        for conn in self.controls:
            conn.send((what,))
        return [_recv(conn, self.timeout, peer=p) for conn, p in zip(self.controls, shards)]

    def seconds(self) -> float:
        return time.monotonic() - self.start


def _shard_failure(s, bounds, exitcode, steps_done) -> ShardFailure:
    lo, hi = bounds[s]
    return ShardFailure(f"shard {s} (parameters [{lo}:{hi}]) exited with code {exitcode} "
                        f"when the replicas had claimed {steps_done} steps between them; "
                        f"Downpour tolerates dead replicas, not dead shards: that slice of the "
                        f"model and its optimizer state are lost (restart from a checkpoint)")


def train_on_processes(model: TinyNet, x: np.ndarray, y: np.ndarray, *, n_replicas: int, n_shards: int,
                       total_steps: int, optimizer: str = "adagrad", lr: float = 0.1,
                       staleness_lr: bool = False, n_fetch: int = 1, n_push: int = 1, batch: int = 16,
                       kill_replicas: dict | None = None, kill_shards: dict | None = None,
                       compute_time: float = 0.0, service_time: float = 0.0,
                       eval_interval: float = 0.05, timeout: float = 60.0, start_method: str | None = None,
                       seed: int = 0) -> DownpourResult:
    """Downpour SGD on n_shards + n_replicas real processes; returns when ``total_steps`` steps are done.

    Parameters (as ``downpour.simulate``) and
    kill_replicas : {replica: its step count at which it is SIGKILLed}; the
        others go on and finish the budget
    kill_shards : {shard: update count at which it is SIGKILLed}; raises ShardFailure
    compute_time : emulated seconds every replica step takes on top of its gradient (t_compute)
    service_time : emulated seconds of one request, fetch or push, at a server holding the whole
        model; each shard spends its share (module docstring)
    eval_interval : seconds between the parent's fetches for the loss curve
    timeout : seconds for the whole run (``CollectiveError`` after it)
    start_method : "fork", "spawn", "forkserver" or None (the platform default)
    """
    ctx = get_context(start_method)
    n_replicas = check_int(n_replicas, "n_replicas", 1)             # every check before any pipe or process
    w0 = model.init(np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0]))   # as simulate's
    bounds = chunk_bounds(w0.size, n_shards)
    shard_kwargs = dict(optimizer=optimizer, lr=lr, staleness_lr=staleness_lr)
    Shard(0, 0, 1, w0[:1], **shard_kwargs)                          # check the settings here, once
    Replica(0, model, x, y, batch, n_fetch, n_push, seed)           # and the replicas' (n_fetch, n_push)
    settings = dict(batch=batch, n_fetch=n_fetch, n_push=n_push, seed=seed, total_steps=total_steps,
                    timeout=timeout, compute_time=check_nonnegative(compute_time, "compute_time", _EMULATED))
    service_time = check_nonnegative(service_time, "service_time", _EMULATED)
    busy = [service_time * (hi - lo) / w0.size for lo, hi in bounds]      # each shard's share of the work
    links, controls = [], []                    # created inside the try: closed in finally whatever fails

    def who_hung(late):                         # run_processes' diagnose, on a timeout
        return None, f"Downpour did not finish {total_steps} steps ({counter.value} claimed)."
    try:
        links += [[ctx.Pipe() for _ in range(n_shards)] for _ in range(n_replicas)]   # links[r][s]
        controls += [ctx.Pipe() for _ in range(n_shards)]
        counter, steps, start = ctx.Value("q", 0), ctx.Array("q", n_replicas), ctx.Barrier(n_replicas)
        ranks = [(shard_worker, s, lo, hi, w0[lo:hi], shard_kwargs, [links[r][s][1] for r in range(n_replicas)],
                  controls[s][1], (kill_shards or {}).get(s), busy[s]) for s, (lo, hi) in enumerate(bounds)]
        ranks += [(replica_worker, r, model, xr, yr, settings, [links[r][s][0] for s in range(n_shards)],
                   bounds, counter, steps, start, (kill_replicas or {}).get(r))
                  for r, (xr, yr) in enumerate(split_data(x, y, n_replicas))]
        parent = _Parent(model, x, y, [conn for conn, _ in controls], counter, timeout)
        results = run_processes(_member, ranks, timeout=timeout, start_method=start_method, diagnose=who_hung,
                                may_die=range(n_shards, n_shards + n_replicas), while_running=parent,
                                interval=eval_interval)
    except CollectiveError as err:
        if err.reason == "died" and err.rank < n_shards:
            raise _shard_failure(err.rank, bounds, err.exitcode, counter.value) from err
        raise
    finally:
        for pair in [c for row in links for c in row] + controls:
            for end in pair:
                end.close()
    return _final_result(model, parent, results[n_shards:], list(steps), x, y)


def _final_result(model, parent, replica_results, steps_per_replica, x, y) -> DownpourResult:
    """The DownpourResult of a finished run: every shard answered "stop" with (params, staleness)."""
    if parent.final is None or any(f is None for f in parent.final):
        raise ShardFailure("a shard did not answer the parent's stop; its slice of the model is lost")
    w = np.concatenate([params for params, _ in parent.final])
    curve = parent.curve + [(parent.counter.value, parent.seconds(), model.loss(w, x, y))]
    staleness = [(s, st) for s, (_, log) in enumerate(parent.final) for st in log]
    return DownpourResult(w, np.array(curve, dtype=float).reshape(-1, 3),
                          np.array(staleness, dtype=np.int64).reshape(-1, 2), steps_per_replica,
                          [r for r, result in enumerate(replica_results) if result is None], model.loss(w, x, y))
