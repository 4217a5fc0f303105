"""All-reduce on real processes: correctness, byte counts, and reliability.

Every test that starts processes is bounded by a timeout passed to the
library (a few seconds) and by pytest's own timeout, checks afterwards that
no child process and no shared-memory segment it created is left behind, and
keeps sizes tiny: the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time
from functools import partial
from multiprocessing import shared_memory

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from course_lib.distributed import (CollectiveError, allreduce, launch, ps_bytes_at_server, ps_bytes_per_rank,
                                    ring_bytes_per_rank)
from course_lib.distributed import measure as measure_module
from course_lib.distributed import procs as procs_module
from course_lib.distributed import runner as launch_module
from course_lib.distributed.collectives import ProcessGroup, ps_allreduce_, ring_allreduce_
from course_lib.distributed.measure import bus_bandwidth, default_repeats, format_table
from course_lib.checks import check_arrays
from course_lib.distributed.runner import AllreduceResult
from course_lib.distributed.transport import PipeTransport, ShmTransport
from course_lib.distributed.workers import data_parallel_least_squares, least_squares_reference
from procfs import kill_left, still_alive, wait_for_workers
from threadrun import in_threads

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
IS_LINUX = sys.platform.startswith("linux")


def _children() -> set[int]:
    """Live child processes of this test process, other than multiprocessing's helpers."""
    if not IS_LINUX:
        return {p.pid for p in mp.active_children()}
    helpers = {getattr(mp.resource_tracker._resource_tracker, "_pid", None)}
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and int(entry) not in helpers:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"forkserver" not in f.read():
                    found.add(int(entry))
    return found


@pytest.fixture(autouse=True)
def leaves_nothing_behind(monkeypatch):
    """Record every shared-memory segment created during the test; afterwards none may exist,
    and no child process may still run."""
    created, real_init = [], shared_memory.SharedMemory.__init__

    def recording_init(self, name=None, create=False, size=0, **kwargs):
        real_init(self, name, create, size, **kwargs)
        if create:
            created.append(self._name)
    monkeypatch.setattr(shared_memory.SharedMemory, "__init__", recording_init)
    before = _children()
    yield created
    leftover = [n for n in created if os.path.exists(f"/dev/shm/{n.lstrip('/')}")] if IS_LINUX else []
    assert not leftover, f"shared memory left behind: {leftover}"
    deadline = time.monotonic() + 5
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (_children() - before), f"child processes left running: {_children() - before}"


def _exact(arrays):
    return np.sum(np.stack(arrays).astype(np.float64), axis=0)


def _check_sum(res, arrays, atol=1e-4):
    for r, out in enumerate(res.outputs):
        assert out.shape == arrays[0].shape and out.dtype == arrays[0].dtype
        np.testing.assert_allclose(out, _exact(arrays), rtol=1e-5, atol=atol, err_msg=f"rank {r}")
        assert np.array_equal(out, res.outputs[0]), f"rank {r}'s output differs from rank 0's in its bits"


# ---------------------------------------------------------------- correctness

@pytest.mark.parametrize("transport", ["shm", "pipe"])
@pytest.mark.parametrize("algorithm, shards", [("ring", 1), ("ps", 1), ("ps", 3)])
def test_sum_and_bytes_for_P_1_to_8(transport, algorithm, shards, rng):
    for P in range(1, 9):
        S = min(shards, P)
        arrays = [rng.standard_normal((3, 11)).astype(np.float32) for _ in range(P)]   # N = 33, uneven
        res = allreduce(arrays, algorithm=algorithm, transport=transport, shards=S, timeout=30)
        _check_sum(res, arrays)
        torch_sum = torch.stack([torch.from_numpy(a) for a in arrays]).sum(0).numpy()
        np.testing.assert_allclose(res.outputs[0], torch_sum, rtol=1e-5, atol=1e-5)
        if algorithm == "ring":
            expected = ring_bytes_per_rank(33, P, itemsize=4)
            np.testing.assert_array_equal(res.bytes_sent, expected, err_msg=f"P={P}")
            np.testing.assert_array_equal(res.bytes_received, np.roll(expected, 1), err_msg=f"P={P}")
        else:
            sent, received = ps_bytes_per_rank(33, P, shards=S, itemsize=4)
            np.testing.assert_array_equal(res.bytes_sent, sent, err_msg=f"P={P} S={S}")
            np.testing.assert_array_equal(res.bytes_received, received, err_msg=f"P={P} S={S}")
            if S == 1:
                assert res.bytes_sent[0] + res.bytes_received[0] == ps_bytes_at_server(33, P, itemsize=4)
        assert res.elapsed.shape == (1, P) and (res.elapsed >= 0).all()


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16, np.float64])
@pytest.mark.parametrize("transport", ["shm", "pipe"])
def test_integer_dtypes_exact(dtype, transport, rng):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    P, N = 5, 17
    if info is not None:                      # values that overflow int8: the sum wraps, as numpy's does
        arrays = [rng.integers(info.min, info.max, N, dtype=dtype, endpoint=True) for _ in range(P)]
    else:
        arrays = [rng.integers(-1000, 1000, N).astype(dtype) for _ in range(P)]
    expected = np.sum(np.stack(arrays), axis=0, dtype=dtype)
    for algorithm in ("ring", "ps"):
        res = allreduce(arrays, algorithm=algorithm, transport=transport, timeout=30)
        for out in res.outputs:
            assert out.dtype == dtype and np.array_equal(out, expected)


@settings(max_examples=12, deadline=None)
@given(P=st.integers(1, 6), shape=st.lists(st.integers(0, 9), min_size=0, max_size=3),
       transport=st.sampled_from(["shm", "pipe"]), algorithm=st.sampled_from(["ring", "ps"]),
       seed=st.integers(0, 2**32 - 1))
def test_property_any_shape(P, shape, transport, algorithm, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape) for _ in range(P)]            # float64, any shape, maybe empty
    res = allreduce(arrays, algorithm=algorithm, transport=transport, timeout=30)
    _check_sum(res, arrays, atol=1e-9)


def test_inputs_are_not_modified(rng):
    arrays = [rng.standard_normal(10) for _ in range(3)]
    copies = [a.copy() for a in arrays]
    allreduce(arrays, timeout=30)
    assert all(np.array_equal(a, c) for a, c in zip(arrays, copies))


@pytest.mark.parametrize("transport", ["shm", "pipe"])
def test_many_back_to_back_collectives(transport, rng):
    arrays = [rng.standard_normal(1000).astype(np.float32) for _ in range(4)]
    res = allreduce(arrays, transport=transport, repeats=300, timeout=60)
    assert res.elapsed.shape == (300, 4)
    _check_sum(res, arrays)


# ---------------------------------------------------------------- start methods, process group

@pytest.mark.parametrize("transport, start_method", [("shm", "spawn"), ("pipe", "spawn"), ("pipe", "forkserver")])
def test_spawn_and_forkserver_start_methods(transport, start_method, rng):
    arrays = [rng.standard_normal(101).astype(np.float32) for _ in range(3)]
    res = allreduce(arrays, transport=transport, start_method=start_method, timeout=60)
    assert res.start_method == start_method
    _check_sum(res, arrays)


def test_fork_start_method(rng):
    arrays = [rng.standard_normal(101).astype(np.float32) for _ in range(3)]
    res = allreduce(arrays, algorithm="ps", start_method="fork", timeout=30)
    assert res.start_method == "fork"
    _check_sum(res, arrays)


@pytest.mark.parametrize("transport, algorithm", [("shm", "ring"), ("pipe", "ring"), ("shm", "ps")])
def test_process_group_in_training(transport, algorithm, rng):
    X, y = rng.standard_normal((61, 5)), rng.standard_normal(61)
    weights = launch(data_parallel_least_squares, 3, args=(X, y, 25, 0.2, algorithm),
                     transport=transport, capacity=5, dtype=np.float64, timeout=30)
    np.testing.assert_allclose(weights[0], least_squares_reference(X, y, 25, 0.2), rtol=1e-10, atol=1e-12)
    assert all(np.array_equal(w, weights[0]) for w in weights), "ranks drifted apart"


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
    from course_lib.distributed.procs import run_processes
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


def test_process_group_misuse_is_reported(rng):
    X, y = rng.standard_normal((10, 5)), rng.standard_normal(10)
    with pytest.raises(CollectiveError, match="capacity"):      # 5 parameters, capacity 3
        launch(data_parallel_least_squares, 2, args=(X, y, 1, 0.1), capacity=3, dtype=np.float64, timeout=20)


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
        from course_lib.distributed import procs
        if not {prctl}:
            procs.set_parent_death_signal = lambda parent_pid: None        # as without prctl
        from multiprocessing import shared_memory
        real = shared_memory.SharedMemory.__init__
        def init(self, name=None, create=False, size=0, **kw):
            real(self, name, create, size, **kw)
            if create:
                print("SHM", self._name, flush=True)
        shared_memory.SharedMemory.__init__ = init
        from course_lib.distributed import allreduce
        print("PID", os.getpid(), flush=True)
        allreduce([np.ones(100)] * 3, transport={transport!r}, timeout=60, _fault=(1, 0, "hang"),
                  start_method="fork")          # the workers are the parent's children (3.14: forkserver)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.getcwd()})
    workers = {}
    try:
        workers = wait_for_workers(proc.pid, 3)                      # pid -> start time
        assert len(workers) >= 3, f"workers did not start: {sorted(workers)}"
        proc.kill()
        proc.wait(timeout=10)
        names = [line.split()[1] for line in proc.stdout.read().splitlines() if line.startswith("SHM")]
        assert not still_alive(workers), "workers outlived their killed parent"
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/dev/shm/{n}") for n in names) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert names and not [n for n in names if os.path.exists(f"/dev/shm/{n}")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kill_left(workers)


# ---------------------------------------------------------------- the lesson's pipe variants

@pytest.mark.parametrize("transport", ["pipe-pickle", "pipe-oddeven", "pipe-sendfirst"])
@pytest.mark.parametrize("algorithm", ["ring", "ps"])
def test_pipe_variants_sum_small_messages(transport, algorithm, rng):
    arrays = [rng.standard_normal(301).astype(np.float32) for _ in range(3)]
    res = allreduce(arrays, algorithm=algorithm, transport=transport, timeout=30)
    _check_sum(res, arrays)


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
    cells = ["import numpy as np\nfrom course_lib.distributed import allreduce\n"
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
        from course_lib.distributed.procs import exit_now
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


def _process_group_checks(pg):
    """In a worker: a sharded PS all-reduce through the ProcessGroup, a broadcast from the
    last rank, and the errors the group must raise for misuse."""
    x = np.full(6, pg.rank + 1.0, np.float32)
    pg.allreduce_(x, algorithm="ps", shards=3)
    sent = pg.bytes_sent
    b = np.full(4, float(pg.rank), np.float32)
    pg.broadcast_(b, root=pg.world_size - 1)
    errors = []
    for arr, kwargs in [(np.ones(6, np.float32), dict(algorithm="ps", shards=pg.world_size + 1)),
                        (np.ones(6, np.float64), {}),
                        (np.ones(6, np.float32), dict(algorithm="tree"))]:
        try:
            pg.allreduce_(arr, **kwargs)
            errors.append("none")
        except (TypeError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return x, sent, b, errors


def test_process_group_allreduce_options_and_misuse():
    results = launch(_process_group_checks, 3, capacity=6, timeout=30, start_method="fork")
    sent_expected, _ = ps_bytes_per_rank(6, 3, shards=3, itemsize=4)
    for rank, (x, sent, b, errors) in enumerate(results):
        np.testing.assert_array_equal(x, np.full(6, 6.0))
        assert sent == sent_expected[rank], f"rank {rank}: shards=3 must reach ps_allreduce_"
        np.testing.assert_array_equal(b, np.full(4, 2.0))
        assert errors[0].startswith("ValueError: shards = 4 must be between 1 and world_size = 3"), errors
        assert errors[1].startswith("TypeError") and "float64" in errors[1], errors
        assert errors[2].startswith("ValueError: algorithm must be one of"), errors


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
    with pytest.raises(ValueError, match="shards"):
        allreduce([np.zeros(4), np.zeros(4)], algorithm="ps", shards=True)
    with pytest.raises(ValueError, match="repeats"):
        allreduce([np.zeros(4), np.zeros(4)], repeats=True)


@pytest.mark.parametrize("algorithm", ["ring", "ps"])
def test_bytes_are_counted_per_collective_when_repeated(algorithm, rng):
    arrays = [rng.standard_normal(33).astype(np.float32) for _ in range(3)]
    res = allreduce(arrays, algorithm=algorithm, repeats=3, timeout=30)
    _check_sum(res, arrays)
    sent = ring_bytes_per_rank(33, 3, itemsize=4) if algorithm == "ring" else ps_bytes_per_rank(33, 3, 1, 4)[0]
    np.testing.assert_array_equal(res.bytes_sent, sent)
    assert res.elapsed.shape == (3, 3)


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


@pytest.mark.skipif(not IS_LINUX, reason="prctl and /proc are Linux's")
def test_a_worker_whose_parent_died_before_prctl_exits(tmp_path):
    """set_parent_death_signal arms the signal, then checks that its parent still lives:
    a parent that already died (gone, or a zombie nobody reaped) would never send it."""
    script = textwrap.dedent("""
        import os, sys
        from course_lib.distributed.procs import set_parent_death_signal
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
        from course_lib.distributed import procs
        procs.set_parent_death_signal = lambda parent_pid: None
        from course_lib.distributed import allreduce
        allreduce([np.ones(10)] * 2, transport="pipe", timeout=60, _fault=(1, 0, "hang"), start_method="fork")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    workers = {}
    try:
        workers = wait_for_workers(proc.pid, 2)
        assert len(workers) >= 2, f"workers did not start: {sorted(workers)}"
        proc.kill()                                  # not reaped: proc.wait() comes after the check
        left = still_alive(workers)
        assert not left, f"workers {left} outlived their killed (zombie) parent"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        kill_left(workers)


# measure.sweep's bookkeeping, with a stand-in for the collectives (no process is started)

def _fake_method(method, arrays, repeats, timeout=120.0):
    """rank 1 is the slow one; the first (warm-up) collective takes 100 s; "broken" returns
    a sum off by 0.5 on rank 1 only."""
    P = len(arrays)
    elapsed = np.ones((repeats, P))
    elapsed[:, 1] = 2.0 + np.arange(repeats)                       # 2, 3, 4, ...
    elapsed[0] = 100.0                                             # the warm-up
    exact = np.sum(np.stack(arrays).astype(np.float64), axis=0)
    outputs = [exact.copy() for _ in range(P)]
    if method == "broken":
        outputs[1] = outputs[1] + 0.5
    _fake_method.calls.append((method, repeats))
    return AllreduceResult(outputs, np.zeros(P, np.int64), np.zeros(P, np.int64), elapsed, "ring", "shm")


def test_sweep_excludes_the_warm_up_and_reports_errors(monkeypatch):
    _fake_method.calls = []
    monkeypatch.setattr(measure_module, "run_method", _fake_method)
    rows = measure_module.sweep([48], [3], methods=("good", "broken"), repeats=6, rounds=2, dtype=np.float32)
    assert _fake_method.calls == [("good", 4), ("broken", 4)] * 2        # 6 / 2 rounds + 1 warm-up
    good, broken = rows
    assert good["time"] == 4.0                                          # median of 3, 4, 5, 3, 4, 5
    assert good["max_error"] == 0.0 and good["identical"]               # against the float64 sum
    assert broken["max_error"] == 0.5 and not broken["identical"]
    assert good["algbw"] == 48 / 4.0 and good["busbw"] == pytest.approx(12.0 * 2 * 2 / 3)
    assert bus_bandwidth(1200, 2.0, 3) == (600.0, 800.0)
    assert default_repeats(1 << 30) == 5 and default_repeats(1) == 200
    table = format_table([dict(good, time=1e-3)]).splitlines()
    assert table[1].split()[:4] == ["48", "3", "good", "1000.0"]        # microseconds


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
