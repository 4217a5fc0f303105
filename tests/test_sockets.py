"""The TCP transport: the kit's ring and two-level all-reduce across separately started processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import free_port
from course_lib.distributed.collectives import ring_allreduce_, two_level_allreduce_
from course_lib.machinery.recording import run_recorded
from course_lib.machinery.sockets import SocketEndpoint


def _ranks(world_size: int, *extra: str, started=None, timeout: float = 60) -> list[subprocess.CompletedProcess]:
    """Start each rank as its own process, as on separate machines; wait for all (each with a timeout)."""
    master = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT="4")
    procs = [subprocess.Popen([sys.executable, "-m", "course_lib.machinery.sockets", "--rank", str(r),
                               "--world-size", str(world_size), "--master", master, *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in (started if started is not None else range(world_size))]
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    return done


@pytest.mark.slow
@pytest.mark.parametrize("world_size, extra", [(3, ("--elements", "100001")),
                                               (4, ("--elements", "1001", "--local-size", "2"))])
def test_every_rank_started_alone_gets_the_sum_and_sends_the_formulas_bytes(world_size, extra):
    for rank in _ranks(world_size, *extra):
        assert rank.returncode == 0 and "correct" in rank.stdout, (rank.stdout, rank.stderr)


@pytest.mark.slow
def test_a_rank_that_never_joins_is_named_within_the_timeout():
    rank0, rank1 = _ranks(3, "--elements", "10", "--timeout", "3", started=[0, 1])
    assert rank0.returncode == 1 and "rank(s) [2] did not join within 3 s" in rank0.stderr
    assert rank1.returncode == 1 and "rank 0 sent no address table" in rank1.stderr


def _on_threads(fn, arrays, *args):
    """fn on P SocketEndpoints, one thread each, in this process: every rank's buffer afterwards."""
    P, N, master = len(arrays), arrays[0].size, f"127.0.0.1:{free_port()}"
    outputs, errors = [None] * P, []

    def rank(r):
        try:
            ep = SocketEndpoint(r, P, master, N, arrays[0].dtype, timeout=20)
            ep.buffer[:] = arrays[r]
            fn(ep, N, *args)
            outputs[r] = (ep.buffer.copy(), ep.bytes_sent)
            ep.close()
        except Exception as err:
            errors.append(err)
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(P)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and all(o is not None for o in outputs), errors
    return outputs


@pytest.mark.parametrize("fn, args, P", [(ring_allreduce_, (), 4), (two_level_allreduce_, (2,), 4),
                                         (ring_allreduce_, (), 2)])
def test_the_same_bits_and_bytes_as_the_recording_transport(fn, args, P):
    arrays = list(np.random.default_rng(3).standard_normal((P, 37)).astype(np.float32))
    recorded, log = run_recorded(fn, arrays, *args)
    for r, (out, sent) in enumerate(_on_threads(fn, arrays, *args)):
        assert np.array_equal(out, recorded[r])
        assert sent == log.sent_per_rank()[r]


def test_a_peer_that_closes_is_named():
    master = f"127.0.0.1:{free_port()}"

    def quitter():
        SocketEndpoint(1, 2, master, 4, timeout=20).close()
    t = threading.Thread(target=quitter)
    t.start()
    ep = SocketEndpoint(0, 2, master, 4, timeout=20)
    t.join(30)
    with pytest.raises(ConnectionError, match="rank 1 closed its connection"):
        ep.step(sends=[], recvs=[(1, 4)])
    ep.close()


def test_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank = 2 must be in 0 .. world_size - 1 = 1"):
        SocketEndpoint(2, 2, "127.0.0.1:1", 4)
