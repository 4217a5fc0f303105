"""Lesson 8's DDP training on two "machines": two torchrun launchers on 127.0.0.1.

``docs/multinode.md`` gives the commands for two machines. Here both run on this one, each
launcher started on its own, as two machines start theirs (``--nnodes=2 --nproc_per_node=1``):

* with c10d rendezvous and with the static one (``--master_addr/--master_port``, ``--node_rank``),
  the two launchers meet, train together, and rank 0's final weights
  (``python -m course_lib.ddp --save``) equal single-process training's (``train_single``);
* a node that never joins: the launcher that came gives up when its rendezvous times out
  (shortened to 10 s: c10d's ``--rdzv-conf=join_timeout=``, static's ``--rdzv-conf=timeout=``)
  and says so (c10d: ``RendezvousTimeoutError``; static: "1/2 clients joined").

What one machine cannot check: the network between machines (interfaces, firewalls), GPUs, NCCL.

torchrun starts each rank in a session of its own, so killing a launcher's process group does
not reach its ranks: ``launchers`` records every launcher's children while they run, and on the
way out stops the launcher's group, kills it and those children; the tests check none is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, free_port
from course_lib import ddp
from course_lib.data import load_digits
from procfs import IS_LINUX, kill_left, leaves_nothing_behind, still_alive, workers_of  # noqa: F401

pytestmark = pytest.mark.skipif(not IS_LINUX, reason="finds torchrun's ranks (own sessions) in /proc")

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
STEPS, BATCH = 3, 16
TAIL = 3000                           # characters of each launcher's stderr in a failure message


def node_command(rendezvous: str, node_rank: int, port: int, script_args: list[str],
                 launcher_args: tuple[str, ...] = ()) -> list[str]:
    """docs/multinode.md's command for one machine, with 127.0.0.1 as node 0's address.

    c10d: every node names the same endpoint and id; the rendezvous numbers the nodes
    (torchrun ignores ``--node_rank`` there, and warns). static: node 0 is ``--node_rank=0``.
    """
    if rendezvous == "c10d":
        meet = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=dlsys-{port}"]
    else:
        meet = [f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}"]
    return [TORCHRUN, "--nnodes=2", "--nproc_per_node=1", *meet, *launcher_args, "-m", "course_lib.ddp",
            *script_args]


def children(pids) -> dict[int, str]:
    """Every process below ``pids`` (children, their children, ...): pid -> start time."""
    found, todo = {}, list(pids)
    while todo:
        below = workers_of(todo.pop())
        todo += [p for p in below if p not in found]
        found.update(below)
    return found


@contextlib.contextmanager
def launchers(commands: list[list[str]], logs, env: dict):
    """Start each command as its own process group, a "machine" (stdout, stderr to ``logs``/nodeI.*).

    Yields ``(procs, seen)``: ``seen`` (pid -> start time) collects the launchers' children
    (``wait_all`` adds to it). On the way out, whatever happened: every launcher's group is
    stopped, its children recorded, the group and every recorded child SIGKILLed, the launcher reaped.
    """
    procs, seen = [], {}
    try:
        for i, cmd in enumerate(commands):
            with open(logs / f"node{i}.out", "w") as out, open(logs / f"node{i}.err", "w") as err:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                              stderr=err, start_new_session=True))
        yield procs, seen
    finally:
        for proc in procs:
            if proc.poll() is None:                          # not reaped: its pid is still its own
                os.killpg(proc.pid, signal.SIGSTOP)          # no new rank starts while we look
                seen.update(children([proc.pid]))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        kill_left(seen)


def wait_all(procs, seen: dict, timeout: float) -> list[int | None]:
    """Each launcher's exit code; None for one still running ``timeout`` s after it started.

    Stops waiting as soon as one launcher fails (its peers would wait for it in vain).
    """
    deadline = time.monotonic() + timeout
    while True:
        seen.update(children([p.pid for p in procs if p.poll() is None]))
        codes = [p.poll() for p in procs]
        if None not in codes or any(codes) or time.monotonic() > deadline:
            return codes
        time.sleep(0.2)


def report(codes, logs) -> str:
    """Each launcher's exit code and the tail of its stderr: what a failed test prints."""
    return "\n".join(f"--- node {i}: {'still running' if c is None else f'exit code {c}'}, stderr tail:\n"
                     f"{(logs / f'node{i}.err').read_text()[-TAIL:]}" for i, c in enumerate(codes))


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("rendezvous", ["c10d", "static"])
def test_two_launchers_train_like_one_process(rendezvous, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", LOGLEVEL="INFO")     # torchrun's log in a failure's report
    port, final = free_port(), tmp_path / "final.npz"
    args = ["--steps", str(STEPS), "--batch-size", str(BATCH), "--save", str(final)]
    commands = [node_command(rendezvous, node_rank, port, args) for node_rank in (0, 1)]
    with launchers(commands, tmp_path, env) as (procs, seen):
        codes = wait_all(procs, seen, timeout=200)
        assert codes == [0, 0], report(codes, tmp_path)
    assert not still_alive(seen), f"ranks left running: {still_alive(seen)}"
    outs = [(tmp_path / f"node{i}.out").read_text() for i in (0, 1)]
    lines = [t for out in outs for t in out.splitlines() if t.startswith("rank 0 of 2")]
    assert len(lines) == 1, f"expected one 'rank 0 of 2' line from the two launchers: {outs}"
    digits = load_digits()
    single = ddp.train_single(digits.x_train, digits.y_train, STEPS, BATCH)
    saved = np.load(final)
    assert float(saved["params"].sum()) == pytest.approx(single["params"].sum(), abs=1e-4), lines
    np.testing.assert_allclose(saved["params"], single["params"], rtol=0, atol=1e-5)    # float32
    np.testing.assert_allclose(saved["losses"], single["losses"], rtol=1e-5)


# a node that never joins: the timeout to shorten, and what the launcher that came then says
NEVER_JOINS = {"c10d": ("--rdzv-conf=join_timeout=4", r"RendezvousTimeoutError"),       # and, at LOGLEVEL=INFO,
               "static": ("--rdzv-conf=timeout=4", r"1/2 clients joined")}             # its min_nodes: 2


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("rendezvous", ["c10d", "static"])
def test_a_node_that_never_joins_ends_the_job_at_the_rendezvous_timeout(rendezvous, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", LOGLEVEL="INFO")     # LOGLEVEL: torchrun's own log
    shorter, message = NEVER_JOINS[rendezvous]
    start = time.monotonic()
    with launchers([node_command(rendezvous, 0, free_port(), ["--steps", "1"], (shorter,))], tmp_path,
                   env) as (procs, seen):
        codes = wait_all(procs, seen, timeout=90)
        took = time.monotonic() - start
        assert codes[0] not in (None, 0), report(codes, tmp_path)
    assert not still_alive(seen), f"ranks left running: {still_alive(seen)}"
    err = (tmp_path / "node0.err").read_text()
    assert re.search(message, err) and re.search(r"min_nodes\s*:\s*2", err), err[-TAIL:]
    assert took < 60, f"the launcher gave up after {took:.0f} s, not about 4 s (its rendezvous timeout)"
