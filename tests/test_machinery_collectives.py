"""Running collectives on real processes: the supervisor, the transports, the launcher.

``course_lib.machinery``'s ``procs`` (start, watch, always clean up),
``transport`` (pipes and shared memory, their fault injection and progress
tables) and ``launch`` (``allreduce``, ``launch``): what happens when a worker
dies, hangs or raises, when the parent is killed, when inputs are wrong.

Every test that starts processes is bounded by a timeout passed to the
library (a few seconds) and by pytest's own timeout, checks afterwards that
no child process and no shared-memory segment it created is left behind, and
keeps sizes tiny.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from functools import partial

import numpy as np
import pytest
import torch

from course_lib.checks import check_arrays
from course_lib.distributed.collectives import ProcessGroup, ps_allreduce_, ring_allreduce_
from course_lib.distributed.workers import data_parallel_least_squares
from course_lib.machinery import launch as launch_module
from course_lib.machinery import procs as procs_module
from course_lib.machinery.launch import AllreduceResult, allreduce, launch
from course_lib.machinery.procs import CollectiveError
from course_lib.machinery.transport import PipeTransport, ShmTransport
from procfs import IS_LINUX, leaves_nothing_behind, parent_with_workers, still_alive  # noqa: F401
from threadrun import in_threads

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


# ---------------------------------------------------------------- errors before any process starts

@pytest.mark.parametrize("arrays, error, match", [
    ([], ValueError, "empty"),
    (np.zeros((2, 3)), TypeError, "list"),
    ([np.zeros(3), [0, 0, 0]], TypeError, r"arrays\[1\]"),
    ([np.zeros(3), torch.zeros(3)], TypeError, "torch tensor"),
    ([np.zeros(3), np.zeros(4)], ValueError, "rank 1 has"),
    ([np.zeros(3), np.zeros(3, np.float32)], TypeError, "dtype"),
    ([np.zeros(3, bool)] * 2, TypeError, "integers or floats"),
    ("abc", TypeError, "list"),
])
def test_bad_inputs_fail_before_starting(arrays, error, match, monkeypatch):
    def must_not_start(*args, **kwargs):
        raise AssertionError("a process was started for invalid input")
    monkeypatch.setattr(launch_module, "run_processes", must_not_start)
    with pytest.raises(error, match=match):
        allreduce(arrays)


@pytest.mark.parametrize("kwargs, match", [
    (dict(algorithm="tree"), "algorithm"), (dict(transport="tcp"), "transport"),
    (dict(algorithm="ps", shards=3), "shards"), (dict(shards=2), "shards"),
    (dict(timeout=0), "timeout"), (dict(repeats=0), "repeats"),
])
def test_bad_options_fail_before_starting(kwargs, match, monkeypatch):
    monkeypatch.setattr(launch_module, "run_processes", lambda *a, **k: pytest.fail("started"))
    with pytest.raises(ValueError, match=match):
        allreduce([np.zeros(4), np.zeros(4)], **kwargs)


# ---------------------------------------------------------------- failures mid-collective

@pytest.mark.parametrize("transport", ["shm", "pipe"])
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_killed_mid_collective(transport, start_method):
    arrays = [np.ones(1000, np.float32)] * 4
    start = time.monotonic()
    with pytest.raises(CollectiveError, match="rank 2 died") as info:
        allreduce(arrays, transport=transport, start_method=start_method, timeout=20,
                  _fault=(2, 3, "kill"))      # rank 2 SIGKILLs itself at step 3 of 6
    assert info.value.rank == 2 and info.value.reason == "died"
    assert "SIGKILL" in str(info.value)
    assert time.monotonic() - start < 15, "a dead worker must be noticed at once, not after the timeout"


@pytest.mark.parametrize("transport", ["shm", "pipe"])
@pytest.mark.parametrize("algorithm", ["ring", "ps"])
def test_worker_hangs_mid_collective(transport, algorithm):
    arrays = [np.ones(1000, np.float32)] * 3
    timeout = 3.0
    start = time.monotonic()
    with pytest.raises(CollectiveError, match="timed out") as info:
        allreduce(arrays, algorithm=algorithm, transport=transport, timeout=timeout, _fault=(1, 1, "hang"))
    took = time.monotonic() - start
    assert info.value.rank == 1 and info.value.reason == "timeout"
    assert "rank 1 stopped responding" in str(info.value)
    assert took < timeout + 5, f"took {took:.1f} s for a {timeout} s timeout"


def test_worker_exception_is_reported_with_traceback():
    with pytest.raises(CollectiveError, match="rank 0 raised") as info:
        allreduce([np.ones(10)] * 2, transport="pipe", timeout=20, _fault=(0, 1, "raise"))
    assert "injected fault on rank 0 at step 1" in str(info.value) and info.value.reason == "raised"


def _returns_a_lambda(rank):
    return lambda: rank              # cannot be pickled back to the parent


def test_an_unpicklable_result_is_reported_as_raised_not_died():
    from course_lib.machinery.procs import run_processes
    with pytest.raises(CollectiveError, match="rank 0 raised") as info:
        run_processes(_returns_a_lambda, [()], timeout=20, start_method="fork")
    assert info.value.reason == "raised" and "pickle" in str(info.value).lower()


def _returns_views_of_its_buffer(pg):
    x = np.full(4, pg.rank + 1.0, np.float32)
    pg.allreduce_(x)
    return pg.endpoint.buffer[:4], {"tail": pg.endpoint.buffer[2:4]}    # views of the shared memory


@pytest.mark.parametrize("transport", ["shm", "pipe"])
def test_a_worker_may_return_a_view_of_its_buffer(transport):
    """The endpoint's memory is unmapped when the worker function returns; its result must
    be copied first (reading the unmapped view was a SIGSEGV)."""
    results = launch(_returns_views_of_its_buffer, 2, transport=transport, capacity=4, timeout=20,
                     start_method="fork")
    for head, rest in results:                                          # 1 + 2 = 3 everywhere
        np.testing.assert_array_equal(head, np.full(4, 3.0, np.float32))
        np.testing.assert_array_equal(rest["tail"], np.full(2, 3.0, np.float32))


@pytest.mark.skipif(not IS_LINUX, reason="finds the workers through /proc")
@pytest.mark.parametrize("transport, prctl", [("shm", True), ("pipe", True), ("shm", False)],
                         ids=["shm", "pipe", "shm-getppid-polling"])
def test_workers_die_with_a_killed_parent(transport, prctl, tmp_path):
    """SIGKILL a parent in the middle of a (hanging) collective: its workers must go too,
    and multiprocessing's resource tracker must remove the shared memory. With
    ``prctl=False`` the parent-death signal is off, as on macOS: the workers'
    ``os.getppid()`` watch must end them."""
    script = textwrap.dedent(f"""
        import os, sys, numpy as np
        from course_lib.machinery import procs
        if not {prctl}:
            procs.set_parent_death_signal = lambda parent_pid: None        # as without prctl
        from multiprocessing import shared_memory
        real = shared_memory.SharedMemory.__init__
        def init(self, name=None, create=False, size=0, **kw):
            real(self, name, create, size, **kw)
            if create:
                print("SHM", self._name, flush=True)
        shared_memory.SharedMemory.__init__ = init
        from course_lib.machinery.launch import allreduce
        print("PID", os.getpid(), flush=True)
        allreduce([np.ones(100)] * 3, transport={transport!r}, timeout=60, _fault=(1, 0, "hang"),
                  start_method="fork")          # the workers are the parent's children (3.14: forkserver)
    """)
    with parent_with_workers(script, tmp_path, 3, stdout=subprocess.PIPE, text=True) as (proc, workers):
        proc.kill()
        proc.wait(timeout=10)
        names = [line.split()[1] for line in proc.stdout.read().splitlines() if line.startswith("SHM")]
        assert not still_alive(workers), "workers outlived their killed parent"
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/dev/shm/{n}") for n in names) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert names and not [n for n in names if os.path.exists(f"/dev/shm/{n}")]


def test_send_first_ring_deadlocks_and_is_diagnosed():
    """Every rank sends 2 MiB before receiving: the pipes (1 MiB) fill, every send blocks."""
    arrays = [np.ones(3 * (1 << 19), np.float32)] * 3          # chunks of 2 MiB
    start = time.monotonic()
    with pytest.raises(CollectiveError, match="deadlock") as info:
        allreduce(arrays, transport="pipe-sendfirst", timeout=3)
    assert info.value.reason == "timeout" and info.value.rank is None
    assert time.monotonic() - start < 3 + 5


# ---------------------------------------------------------------- from a notebook

def test_allreduce_from_a_notebook_under_fork_and_spawn(tmp_path):
    """A Jupyter kernel's __main__ is no module: workers must come from course_lib."""
    import nbformat
    from nbclient import NotebookClient
    cells = ["import numpy as np\nfrom course_lib.machinery.launch import allreduce\n"
             "arrays = [np.arange(10.0) * r for r in range(3)]",
             "for method in ('fork', 'spawn'):\n"
             "    for transport in ('shm', 'pipe'):\n"
             "        res = allreduce(arrays, transport=transport, start_method=method, timeout=60)\n"
             "        assert all(np.array_equal(o, np.arange(10.0) * 3) for o in res.outputs)\n"
             "print('ok')"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                   ).execute(env={**os.environ, "PYTHONPATH": os.getcwd()})
    outputs = nb.cells[1].outputs
    assert [o.get("text") for o in outputs] == ["ok\n"], outputs       # no warnings, no errors


def test_launch_refuses_a_main_module_function_under_spawn(monkeypatch):
    def worker(pg):
        return pg.rank
    monkeypatch.setattr(worker, "__module__", "__main__")
    with pytest.raises(TypeError, match="course_lib module"):
        launch(worker, 2, start_method="spawn")
    with pytest.raises(ValueError, match="world_size"):
        launch(data_parallel_least_squares, 0)
    with pytest.raises(ValueError, match="transport"):
        launch(data_parallel_least_squares, 2, transport="udp")


def test_exit_now_flushes_and_skips_the_interpreters_shutdown(tmp_path):
    """exit_now ends a rank the way a forked child ends: buffered output is written, the exit
    code kept, and no shutdown code runs (the code that aborts a gloo rank, see exit_now)."""
    script = textwrap.dedent("""
        import atexit, sys
        from course_lib.machinery.procs import exit_now
        atexit.register(lambda: print("SHUTDOWN RAN"))
        print("work done", end="")              # no newline: still in the buffer
        sys.stderr.write("a warning")
        exit_now(3)
        print("after exit_now")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert (done.returncode, done.stdout, done.stderr) == (3, "work done", "a warning")


# ---- behaviour pinned down by mutation testing
#
# Most of these drive two endpoints of one transport from two threads of this process
# (an endpoint only needs the transport's shared objects), so that an interleaving the
# processes above reach only by chance can be made certain: rank 1 pauses after each
# barrier, as a slow or descheduled reader would.

class _SlowAfterBarrier:
    """Wraps a transport's barrier: this rank leaves every barrier ``pause`` seconds late."""

    def __init__(self, barrier, pause=0.3):
        self.barrier, self.pause = barrier, pause

    def wait(self, rank, timeout):
        self.barrier.wait(rank, timeout)
        time.sleep(self.pause)


def _shm_pair(capacity, dtype=np.float32, timeout=10.0, slow_rank=1):
    transport = ShmTransport(2, capacity, dtype, timeout=timeout)
    eps = [transport.endpoint(0), transport.endpoint(1)]
    if slow_rank is not None:
        eps[slow_rank]._barrier = _SlowAfterBarrier(eps[slow_rank]._barrier)
    return transport, eps


def _close_all(transport, eps):
    for ep in eps:
        ep.close()
    transport.close()


def test_shm_a_slow_reader_reads_its_own_step_and_the_fence_protects_the_buffer():
    """Rank 0 posts [0:2] then [2:5], fences, then overwrites its buffer; rank 1 reads each
    step late. The two halves of the posting table keep step 1's post intact while rank 0
    posts step 2, and the fence keeps rank 0 from overwriting what rank 1 still reads."""
    transport, (ep0, ep1) = _shm_pair(8)
    try:
        ep0.buffer[:] = np.arange(1, 9)

        def rank0():
            ep0.step(sends=[(1, 0, 2)])
            ep0.step(sends=[(1, 2, 5)])
            ep0.fence()
            ep0.buffer[:] = -1                      # allowed once the fence returned

        def rank1():
            first = ep1.step(recvs=[(0, 2)])[0]
            writeable = first.flags.writeable
            first = first.copy()
            second = ep1.step(recvs=[(0, 3)])[0].copy()
            ep1.fence()
            return first, second, writeable
        (_, got), errors = in_threads(rank0, rank1)
        assert errors == [None, None], errors
        first, second, writeable = got
        np.testing.assert_array_equal(first, [1, 2])
        np.testing.assert_array_equal(second, [3, 4, 5])
        assert not writeable, "a received shm array is the sender's memory: it must be read-only"
    finally:
        _close_all(transport, [ep0, ep1])


@pytest.mark.parametrize("collective", ["ring", "ps", "broadcast"])
def test_collectives_fence_before_returning(collective):
    """After a collective returns, a rank may reuse its buffer at once: the collective must
    have fenced, or the slow peer reads the new contents instead of the result."""
    transport, (ep0, ep1) = _shm_pair(6)
    try:
        def rank(ep, r):
            if collective == "broadcast":
                x = np.full(6, 7.0 if r == 0 else 0.0, np.float32)
                ProcessGroup(ep).broadcast_(x, root=0)
            else:
                ep.buffer[:6] = np.arange(6) * (r + 1)
                (ring_allreduce_ if collective == "ring" else ps_allreduce_)(ep, 6)
                x = ep.buffer[:6].copy()
            ep.buffer[:] = -1e9                     # the next collective's input
            return x
        (x0, x1), errors = in_threads(partial(rank, ep0, 0), partial(rank, ep1, 1))
        assert errors == [None, None], errors
        expected = np.full(6, 7.0) if collective == "broadcast" else np.arange(6) * 3.0
        np.testing.assert_array_equal(x0, expected)
        np.testing.assert_array_equal(x1, expected)
    finally:
        _close_all(transport, [ep0, ep1])


def test_shm_a_count_mismatch_is_an_error_not_a_wrong_view():
    transport, (ep0, ep1) = _shm_pair(4, slow_rank=None)
    try:
        (_, _), errors = in_threads(lambda: ep0.step(sends=[(1, 0, 3)]), lambda: ep1.step(recvs=[(0, 2)]))
        assert errors[0] is None
        assert isinstance(errors[1], RuntimeError) and "expected 2 elements from rank 0" in str(errors[1])
        assert "[0:3]" in str(errors[1])
    finally:
        _close_all(transport, [ep0, ep1])


@pytest.mark.parametrize("sends, recvs, match", [
    ([(1, 0, 1), (1, 1, 2)], [], "send to each other rank at most once"),
    ([], [(1, 1), (1, 1)], "receive from each other rank at most once"),
    ([(0, 0, 1)], [], "send to"),                       # to itself
    ([(2, 0, 1)], [], "send to"),                       # no rank 2 in a world of 2
    ([], [(-1, 1)], "receive from"),
    ([(1, 2, 5)], [], r"send region \[2:5\] to rank 1 is outside the buffer of 4"),
    ([(1, 3, 2)], [], r"send region \[3:2\]"),
])
def test_a_malformed_step_is_refused_before_anything_moves(sends, recvs, match):
    """Checked in the endpoint, before the barrier: a bad step raises at once (the peer,
    here absent, is never waited for)."""
    transport = ShmTransport(2, 4, np.float32, timeout=0.5)
    ep = transport.endpoint(0)
    try:
        with pytest.raises(ValueError, match=match):
            ep.step(sends=sends, recvs=recvs)
        assert ep.steps == 0 and ep.bytes_sent == 0
    finally:
        _close_all(transport, [ep])


def test_a_worker_gives_up_on_its_own_timeout():
    """Every blocking wait inside a worker honours the transport's timeout: a barrier, a
    receive and a send whose peer never comes raise TimeoutError instead of blocking forever."""
    shm = ShmTransport(2, 4, np.float32, timeout=0.2)
    ep = shm.endpoint(0)
    try:
        _, errors = in_threads(ep.barrier, timeout=10)
        assert isinstance(errors[0], TimeoutError) and "rank 1" in str(errors[0])
        _, errors = in_threads(lambda: ep.step(sends=[(1, 0, 2)]), timeout=10)
        assert isinstance(errors[0], TimeoutError)
    finally:
        _close_all(shm, [ep])

    pipe = PipeTransport(2, 1 << 20, np.float32, timeout=0.2)      # 4 MiB: more than a pipe holds
    keep = [os.dup(pipe.pipes[1][0][1].fileno()),                 # rank 1's writer to us: no EOF
            os.dup(pipe.pipes[0][1][0].fileno())]                 # rank 1's reader: sends block, no EPIPE
    ep = pipe.endpoint(0)
    try:
        _, errors = in_threads(lambda: ep.step(recvs=[(1, 3)]), timeout=10)
        assert isinstance(errors[0], TimeoutError) and "no data from rank(s) [1]" in str(errors[0])
        _, errors = in_threads(lambda: ep.step(sends=[(1, 0, 1 << 20)]), timeout=10)
        assert isinstance(errors[0], TimeoutError) and "could not send to rank(s) [1]" in str(errors[0])
    finally:
        for fd in keep:
            os.close(fd)                                           # the blocked send now fails: EPIPE
        ep.close()
        pipe.close()


@pytest.mark.parametrize("transport", ["pipe", "pipe-pickle"])
def test_pipe_messages_larger_than_one_segment(transport):
    """Chunks of 3 MiB travel as several 1 MiB segments and arrive whole."""
    arrays = [np.arange(3 << 19, dtype=np.float32) * (r + 1) for r in range(2)]   # 6 MiB each
    res = allreduce(arrays, transport=transport, timeout=60)
    for out in res.outputs:
        np.testing.assert_array_equal(out, np.arange(3 << 19, dtype=np.float32) * 3)


@pytest.mark.skipif(not IS_LINUX, reason="pipes are grown to 1 MiB only on Linux")
def test_send_first_works_below_the_grown_pipe_size():
    """Messages of 512 KiB (8 times the default pipe buffer) fit the grown 1 MiB pipes:
    sending first deadlocks only above 1 MiB, as the lesson says."""
    arrays = [np.full(3 << 17, r + 1.0, np.float32) for r in range(3)]           # chunks of 512 KiB
    res = allreduce(arrays, transport="pipe-sendfirst", timeout=20)
    for out in res.outputs:
        np.testing.assert_array_equal(out, np.full(3 << 17, 6.0, np.float32))


def test_progress_report_names_the_rank_that_hung():
    class Table:
        def __init__(self, rows):
            self.rows = rows

        def progress_table(self):
            return self.rows
    report = launch_module._progress_report
    rank, text = report(Table([(3, True), (2, False), (3, True)]), [0, 1, 2])
    assert rank == 1 and "rank 1 stopped responding" in text and "rank 1 busy in step 1" in text
    rank, text = report(Table([(4, True), (2, True), (3, True)]), [0, 1, 2])
    assert rank == 1 and "deadlock" in text and "rank 1 is furthest behind" in text
    rank, text = report(Table([(2, True), (2, True)]), [0, 1])
    assert rank is None and "deadlock" in text
    rank, _ = report(Table([(2, False), (2, False), (1, True)]), [0, 1, 2])
    assert rank is None


def test_world_size_limit_and_boolean_options(monkeypatch):
    monkeypatch.setattr(launch_module, "run_processes", lambda *a, **k: pytest.fail("started"))
    assert len(check_arrays([np.zeros(2)] * launch_module.MAX_WORLD_SIZE)) == launch_module.MAX_WORLD_SIZE
    with pytest.raises(ValueError, match="more than this kit starts"):
        check_arrays([np.zeros(2)] * (launch_module.MAX_WORLD_SIZE + 1))
    with pytest.raises(TypeError, match="shards must be an int, got True"):      # a bool is not a count
        allreduce([np.zeros(4), np.zeros(4)], algorithm="ps", shards=True)
    with pytest.raises(TypeError, match="repeats must be an int, got True"):
        allreduce([np.zeros(4), np.zeros(4)], repeats=True)
    with pytest.raises(ValueError, match=r"shards = 3 must be <= 2 \(world_size = 2: shard s is served by rank s\)"):
        allreduce([np.zeros(4), np.zeros(4)], algorithm="ps", shards=3)
    with pytest.raises(ValueError, match=r"timeout must be positive \(timeout > 0\)"):
        allreduce([np.zeros(4), np.zeros(4)], timeout=-1.0)
    with pytest.raises(ValueError, match="world_size = 0 must be >= 1"):
        launch(data_parallel_least_squares, 0)
    most = launch_module.MAX_WORLD_SIZE
    with pytest.raises(ValueError, match=f"world_size = {most + 1} must be <= {most}"):
        launch(data_parallel_least_squares, most + 1)
    with pytest.raises(TypeError, match="world_size must be an int"):
        launch(data_parallel_least_squares, 2.0)
    with pytest.raises(ValueError, match="transport must be one of"):
        launch(data_parallel_least_squares, 2, transport="tcp")


def test_result_time_is_the_median_of_the_slowest_rank():
    elapsed = np.array([[1.0, 3.0], [2.0, 5.0], [10.0, 1.0]])         # (repeats, P)
    res = AllreduceResult([np.zeros(1)] * 2, np.zeros(2, np.int64), np.zeros(2, np.int64), elapsed, "ring", "shm")
    assert res.time == 5.0 and res.world_size == 2                    # median of (3, 5, 10)


def _sleep_then_return(rank, seconds):
    time.sleep(seconds)
    return rank


def _raise_by_rank(rank):
    if rank == 0:
        raise ConnectionError("lost my peer")                       # a consequence, reported first
    time.sleep(0.1)
    raise ValueError("the real cause")


def _ignore_sigterm_and_hang(rank):
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def test_run_processes_honours_its_timeout():
    with pytest.raises(CollectiveError, match="timed out after 1 s") as info:
        procs_module.run_processes(_sleep_then_return, [(1.6,)], timeout=1.0, start_method="fork")
    assert info.value.reason == "timeout" and info.value.rank == 0


def test_run_processes_blames_the_cause_not_the_lost_connection():
    with pytest.raises(CollectiveError, match="the real cause") as info:
        procs_module.run_processes(_raise_by_rank, [(), ()], timeout=20, start_method="fork")
    assert info.value.rank == 1 and info.value.reason == "raised"


def test_run_processes_kills_a_worker_that_ignores_sigterm():
    """The autouse fixture then finds no child left."""
    with pytest.raises(CollectiveError, match="timed out"):
        procs_module.run_processes(_ignore_sigterm_and_hang, [()], timeout=0.5, start_method="fork")


def _odd_ranks_die(rank):
    if rank % 2:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.3)                                  # the even ranks outlive the odd ones
    return 10 * rank


def test_run_processes_lets_the_ranks_that_may_die_die():
    """Downpour's replicas: a rank of ``may_die`` that dies is done, its result None, and the
    others finish; a death outside ``may_die`` is still an error, with the exit code."""
    results = procs_module.run_processes(_odd_ranks_die, [()] * 4, timeout=20, start_method="fork",
                                         may_die={1, 3})
    assert results == [0, None, 20, None]
    with pytest.raises(CollectiveError, match="rank 3 died") as info:
        procs_module.run_processes(_odd_ranks_die, [()] * 4, timeout=20, start_method="fork", may_die={1})
    assert info.value.rank == 3 and info.value.reason == "died" and info.value.exitcode == -signal.SIGKILL


def test_run_processes_gives_the_parent_its_turn_while_ranks_run():
    """``while_running(procs, finished)`` runs about every ``interval`` seconds until every rank
    is done, and sees which ranks have finished."""
    calls = []
    results = procs_module.run_processes(
        _sleep_then_return, [(0.0,), (0.6,)], timeout=20, start_method="fork", interval=0.05,
        while_running=lambda procs, finished: calls.append((len(procs), finished)))
    assert results == [0, 1]
    assert len(calls) >= 5, f"called {len(calls)} times in 0.6 s at interval 0.05 s"
    assert all(n == 2 and not finished[1] for n, finished in calls), "never once rank 1 is done"
    assert calls[-1][1] == [True, False]


@pytest.mark.skipif(not IS_LINUX, reason="prctl and /proc are Linux's")
def test_a_worker_whose_parent_died_before_prctl_exits(tmp_path):
    """set_parent_death_signal arms the signal, then checks that its parent still lives:
    a parent that already died (gone, or a zombie nobody reaped) would never send it."""
    script = textwrap.dedent("""
        import os, sys
        from course_lib.machinery.procs import set_parent_death_signal
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        import time; time.sleep(0.3)              # the child is now a zombie: not reaped
        which = sys.argv[1]
        set_parent_death_signal(pid if which == "zombie" else 2 ** 22 + 1)
        print("still running")
    """)
    for which in ("zombie", "gone"):
        done = subprocess.run([sys.executable, "-c", script, which], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert (done.returncode, done.stdout) == (1, ""), (which, done)


@pytest.mark.skipif(not IS_LINUX, reason="finds the workers through /proc")
def test_workers_leave_a_killed_parent_that_is_not_yet_reaped(tmp_path):
    """Without the parent-death signal (as on macOS), a killed parent that nobody has reaped
    yet is a zombie: its pid still answers ``kill(pid, 0)``. The workers must see that they
    were re-parented and exit anyway."""
    script = textwrap.dedent("""
        import numpy as np
        from course_lib.machinery import procs
        procs.set_parent_death_signal = lambda parent_pid: None
        from course_lib.machinery.launch import allreduce
        allreduce([np.ones(10)] * 2, transport="pipe", timeout=60, _fault=(1, 0, "hang"), start_method="fork")
    """)
    with parent_with_workers(script, tmp_path, 2) as (proc, workers):
        proc.kill()                                  # not reaped: the context reaps it after the check
        left = still_alive(workers)
        assert not left, f"workers {left} outlived their killed (zombie) parent"


def test_die_with_parent_starts_no_watcher_on_windows(monkeypatch):
    """On Windows os.kill(pid, 0) is not a probe: signal 0 is CTRL_C_EVENT, sent to the parent's group."""
    started, killed = [], []
    monkeypatch.setattr(procs_module, "set_parent_death_signal", lambda parent_pid: None)
    from types import SimpleNamespace                 # the module's own view of os, not the real one
    monkeypatch.setattr(procs_module, "os", SimpleNamespace(name="nt", getppid=os.getppid, _exit=os._exit,
                                                            kill=lambda pid, sig: killed.append((pid, sig))))
    monkeypatch.setattr(procs_module.threading, "Thread", lambda *a, **k: started.append(k) or pytest.fail("thread"))
    procs_module.die_with_parent(os.getpid())
    assert started == [] and killed == []
