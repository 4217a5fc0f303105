"""Downpour SGD on real processes (course_lib.machinery.downpour_processes).

The lecture's ``Shard`` and ``Replica`` on n_shards + n_replicas processes,
run by the kit's one supervisor (``procs.run_processes``): a killed replica
is survived, a dead shard is a clear error, the workers die with a killed
parent, and every child is joined.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import textwrap
import time

import numpy as np
import pytest

from course_lib.data import load_digits
from course_lib.distributed.downpour import ShardFailure
from course_lib.machinery.downpour_processes import shard_worker, train_on_processes
from course_lib.models import TinyNet
from procfs import parent_with_workers, still_alive


@pytest.fixture(scope="module")
def digits():
    d = load_digits(size=8)
    return d.x_train.reshape(len(d.x_train), -1).astype(np.float64), d.y_train


PKW = dict(n_shards=2, total_steps=300, optimizer="adagrad", lr=0.03, timeout=60)


@pytest.mark.slow
def test_processes_train_and_survive_a_killed_replica(digits, monkeypatch):
    from course_lib.machinery import procs
    real_wait, dead_in_wait = procs.wait_for_ready, []

    def spy(objects, timeout=None):                  # the supervisor's wait on its children
        if isinstance(objects, list) and real_wait(objects, timeout=0):
            dead_in_wait.append(len(objects))        # one of them had already exited (or answered)
        return real_wait(objects, timeout)
    monkeypatch.setattr(procs, "wait_for_ready", spy)                  # the supervisor's view only
    res = train_on_processes(TinyNet(), *digits, n_replicas=3, kill_replicas={1: 20}, **PKW,
                             start_method="fork")
    assert res.failed == [1] and res.steps_per_replica[1] == 20
    assert sum(res.steps_per_replica) == 300 and len(res.staleness) == 2 * 300
    assert res.final_loss < 0.8 * res.curve[0, 2] or res.final_loss < 1.0
    assert not mp.active_children(), "every child is joined"
    # a dead child's sentinel stays ready: waiting on it again made the parent sample the loss in
    # a busy loop (dozens of times after the kill), taking a core from the shards. Only a child
    # that ends between two waits may be seen ready, once (then it is off the list): at most 5
    assert len(dead_in_wait) <= 5, f"the parent waited on exited children {len(dead_in_wait)} times"


@pytest.mark.slow
def test_processes_under_spawn(digits):
    res = train_on_processes(TinyNet(), *digits, n_replicas=2, **PKW, start_method="spawn")
    assert res.failed == [] and sum(res.steps_per_replica) == 300
    assert res.final_loss < 1.5
    assert not mp.active_children()


@pytest.mark.slow
def test_processes_report_a_dead_shard(digits):
    with pytest.raises(ShardFailure, match=r"shard 1 \(parameters \[1205:2410\]\) exited with code -9"):
        train_on_processes(TinyNet(), *digits, n_replicas=2, kill_shards={1: 50}, **PKW, start_method="fork")
    assert not mp.active_children()


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
@pytest.mark.parametrize("prctl", [True, False], ids=["death-signal", "getppid-polling"])
def test_workers_die_with_a_killed_parent(prctl, tmp_path):
    """SIGKILL the parent in the middle of a run that would never end: every shard and replica must go.

    With ``prctl=False`` the parent-death signal is switched off, as on macOS, and the
    workers must notice their dead parent themselves.
    """
    script = textwrap.dedent(f"""
        import numpy as np
        from course_lib.machinery import downpour_processes, procs
        from course_lib.models import TinyNet
        if not {prctl}:
            procs.set_parent_death_signal = lambda parent_pid: None        # as without prctl
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((200, 64)), rng.integers(0, 10, 200)
        downpour_processes.train_on_processes(TinyNet(), x, y, n_replicas=2, n_shards=2, total_steps=10**9,
                                              timeout=60, start_method="fork")
    """)
    with parent_with_workers(script, tmp_path, 4) as (proc, workers):     # 2 shards + 2 replicas
        time.sleep(0.5)                                  # let them train a little
        proc.kill()
        proc.wait(timeout=10)
        left = still_alive(workers)
        assert not left, f"workers {left} outlived their killed parent (of {sorted(workers)})"


def test_a_stopped_shard_applies_the_pushes_still_in_its_pipes():
    """shard_worker on its own: five pushes and the "stop" are already waiting when it starts,
    and a second replica has closed its pipe (it died). All five pushes must be applied
    before the shard answers the stop, and the dead replica must not break it."""
    ctx = mp.get_context("fork")
    (replica, shard_end), (dead, dead_end), (control, control_end) = ctx.Pipe(), ctx.Pipe(), ctx.Pipe()
    for _ in range(5):
        replica.send(("push", np.ones(3), 0))              # all fetched version 0
    dead.close()
    control.send(("stop",))
    proc = ctx.Process(target=shard_worker, daemon=True,
                       args=(0, 0, 3, np.zeros(3), dict(optimizer="sgd", lr=0.1),
                             [shard_end, dead_end], control_end, None))
    proc.start()
    try:
        assert control.poll(20), f"the shard did not answer the stop (exit code {proc.exitcode})"
        params, staleness = control.recv()
        assert staleness == [0, 1, 2, 3, 4]
        np.testing.assert_allclose(params, -0.5)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        for end in (replica, shard_end, dead_end, control, control_end):
            end.close()
    assert proc.exitcode == 0


class _DiesAfterTheStop:
    """A replica's pipe end that died after the shard read "stop": ``connection.wait`` never
    reports it (its fd stays empty), but the drain finds it at end-of-file."""

    def __init__(self):
        self.quiet, self.writer = mp.get_context("fork").Pipe(duplex=False)

    def fileno(self):
        return self.quiet.fileno()

    def poll(self, timeout=0.0):
        return True

    def recv(self):
        raise EOFError

    def close(self):
        self.quiet.close()
        self.writer.close()


def test_a_stopped_shard_survives_a_replica_dead_at_end_of_file():
    """The drain after "stop" treats a pipe at end-of-file as the main loop does: it forgets it."""
    ctx = mp.get_context("fork")
    (replica, shard_end), (control, control_end), dead = ctx.Pipe(), ctx.Pipe(), _DiesAfterTheStop()
    try:
        replica.send(("push", np.ones(3), 0))
        control.send(("stop",))
        time.sleep(0.05)                              # both messages in their pipes before the shard looks
        shard_worker(0, 0, 3, np.zeros(3), dict(optimizer="sgd", lr=0.1), [shard_end, dead], control_end, None)
        assert control.poll(5)
        params, staleness = control.recv()
        assert staleness == [0]
        np.testing.assert_allclose(params, -0.1)
    finally:
        for end in (replica, shard_end, control, control_end, dead):
            end.close()


class _CountingContext:
    """A multiprocessing context that records every Pipe it makes."""

    def __init__(self):
        self.real, self.pipes = mp.get_context("fork"), []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def Pipe(self, *args):
        pair = self.real.Pipe(*args)
        self.pipes.append(pair)
        return pair


@pytest.mark.parametrize("bad, match", [(dict(n_fetch=0), "n_fetch and n_push"),
                                        (dict(n_push=0), "n_fetch and n_push"),
                                        (dict(n_replicas=0), "n_replicas = 0 must be >= 1")])
def test_bad_settings_are_refused_before_any_pipe_or_process(digits, monkeypatch, bad, match):
    from course_lib.machinery import downpour_processes
    ctx = _CountingContext()
    monkeypatch.setattr(downpour_processes, "get_context", lambda method=None: ctx)
    monkeypatch.setattr(downpour_processes, "run_processes",
                        lambda *a, **k: pytest.fail("processes were started"))
    with pytest.raises(ValueError, match=match):
        train_on_processes(TinyNet(), *digits, **{**PKW, "n_replicas": 2, **bad})
    assert ctx.pipes == []


def test_pipes_are_closed_when_setting_up_fails(digits, monkeypatch):
    from course_lib.machinery import downpour_processes
    ctx = _CountingContext()
    monkeypatch.setattr(downpour_processes, "get_context", lambda method=None: ctx)

    def broken_split(x, y, n_replicas):
        raise RuntimeError("fails after the pipes exist")
    monkeypatch.setattr(downpour_processes, "split_data", broken_split)
    with pytest.raises(RuntimeError, match="after the pipes exist"):
        train_on_processes(TinyNet(), *digits, **{**PKW, "n_replicas": 2})
    assert len(ctx.pipes) == 2 * 2 + 2, "links and controls were made"
    assert all(end.closed for pair in ctx.pipes for end in pair), "and every end closed"
