"""Run one merged notebook in a fresh kernel, with time limits, cell by cell.

Reading order
-------------
1. ``test_modules``: which modules the instructor's test cells import.
2. ``instrument``: the notebook actually run: a preamble that snapshots those
   modules (``guard.take_snapshot``, ``guard.forget_volatile``), then every cell, with a guard cell
   (``guard.check_and_restore``) just before and just after each test cell.
3. ``run_notebook``: a fresh kernel of this environment (``kernel_env``),
   started in its own folder (the caller's temporary folder), runs the cells in order. Errors
   do not stop it (a test is judged by whether *it* raised); a cell past
   its time limit, or past what is left of the notebook's, or a dead kernel
   does: every later cell is reported ``not_run``.

Each cell's outcome is a ``CellRun``: ``ok``, ``error`` (with the exception's
name and message), ``timeout``, ``died`` or ``not_run``. Output sent to stderr
(warnings) is not an error.

What the grader keeps of a cell's output is bounded (``_CappedClient``): at
most ``MAX_OUTPUT_BYTES`` of text (stdout, stderr and displayed data, counted
in UTF-8 bytes) and at most ``MAX_OUTPUTS`` outputs. The output that crosses
the byte cap is cut there (a display that does not fit is dropped whole, and
so is a display update, ``handle.update(...)``, that would not fit), later
ones are dropped, and the cell's outputs end with the line
``[output truncated: N bytes dropped]``. The error output (the traceback) is
always kept, whatever its size. A ``clear_output`` empties the cell and
starts the count again. The cap bounds what is *kept*, so a print loop cannot
pile output up in the grader's memory; it does not bound what arrives: each
message still arrives whole (one ``print('x' * 10**9)`` is one 1 GB message,
which the grader receives and decodes before cutting it).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import copy
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from grader import sandbox
from grader.build import cell_role

KERNEL = "python3"     # this environment's own kernel (the venv's ipykernel)
STARTUP_TIMEOUT = 120  # seconds a kernel may take to answer its first request (a loaded machine: torch, bwrap)
MAX_RESTARTS = 3       # fresh kernels after cells that stopped one (a time limit, a crash)
MAX_OUTPUTS = 50       # outputs kept per cell; errors are always kept
MAX_OUTPUT_BYTES = 2**20   # bytes of text kept per cell (1 MiB); errors are always kept
_PIECE = 2**20         # characters encoded at a time to count a message's UTF-8 bytes
ROLE_KEY = "course_kit_grader"
CHECKOUT = Path(__file__).resolve().parents[1]   # the folder holding course_lib/ and grader/
_AST_LOCK = threading.Lock()
_OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error")   # what nbclient stores
GUARD_CALL = ("import grader.guard as _course_kit_guard\n"
              "_course_kit_guard.check_and_restore(_course_kit_guard.SNAPSHOT)")


@dataclass
class CellRun:
    """What happened to one cell of the instrumented notebook."""
    status: str = "not_run"   # ok | error | timeout | died | not_run
    ename: str = ""
    evalue: str = ""
    stdout: str = ""
    limit: str = ""           # for a timeout: 'cell' or 'notebook'
    result: str = ""          # the cell's value as text (execute_result text/plain): nbgrader's partial credit


def test_modules(nb) -> list[str]:
    """Modules ``nb``'s test cells use, sorted, for the guard's snapshot.

    Those they import (``import a.b``, ``from a.b import c``), and the submodules
    they reach through an imported name: ``numpy.testing`` for
    ``np.testing.assert_allclose``. A package may load such a submodule only on
    first use (numpy loads ``numpy.testing`` lazily), so an answer cell could
    replace its functions before the snapshot has seen them. A reached name may
    be an attribute rather than a module; the snapshot skips what does not import.
    """
    names, bound, trees = set(), {}, []   # bound: a name any code cell binds -> the module path
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            with _AST_LOCK:  # CPython 3.11's parser is not thread-safe (gh-106905)
                tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        is_test = cell_role(cell) == "test"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    bound[alias.asname or top] = alias.name if alias.asname else top
                    if is_test:
                        names.add(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                bound.update({alias.asname or alias.name: f"{node.module}.{alias.name}"
                              for alias in node.names if alias.name != "*"})
                if is_test:
                    names.add(node.module)
        if is_test:
            trees.append(tree)
    for tree in trees:
        for node in ast.walk(tree):
            chain = _attribute_chain(node)
            if chain and chain[0] in bound:          # np.testing.assert_allclose -> numpy, numpy.testing
                names.update(".".join([bound[chain[0]], *chain[1:i]]) for i in range(1, len(chain)))
    return sorted(names)


def _attribute_chain(node) -> list[str] | None:
    """``a.b.c`` -> ['a', 'b', 'c']; None for anything but names joined by attributes."""
    if not isinstance(node, ast.Attribute):
        return None
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def _grader_cell(source: str, role: str, test_id: str | None = None):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata[ROLE_KEY] = {"role": role, "test_id": test_id}
    return cell


def instrument(nb, modules: list[str]):
    """A copy of ``nb`` with the grader's preamble and guard cells inserted.

    Grader cells carry ``metadata.course_kit_grader = {role, test_id}`` with
    role 'preamble', 'before' or 'after'; the notebook's own cells are unchanged.
    """
    out = copy.deepcopy(nb)
    preamble = ("import grader.guard as _course_kit_guard\n"
                f"_course_kit_guard.SNAPSHOT = _course_kit_guard.take_snapshot({modules!r})")
    calibrate = ("import grader.guard as _course_kit_guard\n"
                 "_course_kit_guard.forget_volatile(_course_kit_guard.SNAPSHOT);")
    cells = [_grader_cell(preamble, "preamble"), _grader_cell(calibrate, "preamble")]
    for cell in out.cells:
        test_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        is_test = cell_role(cell) == "test" and cell.cell_type == "code"
        if is_test:
            cells.append(_grader_cell(GUARD_CALL, "before", test_id))
        cells.append(cell)
        if is_test:
            cells.append(_grader_cell(GUARD_CALL, "after", test_id))
    out.cells = cells
    return out


def _size(text: str) -> int:
    """Bytes of ``text`` in UTF-8: no copy when it is ASCII (as print output usually is),
    else encoded ``_PIECE`` characters at a time, never the whole of a huge message at once."""
    if text.isascii():
        return len(text)
    return sum(len(text[i:i + _PIECE].encode("utf-8", "replace")) for i in range(0, len(text), _PIECE))


def _clip(text: str, room: int) -> str:
    """The longest start of ``text`` that fits in ``room`` UTF-8 bytes (never half a character).

    Every character takes at least one byte, so only ``text[:room]`` is encoded.
    """
    if text.isascii():
        return text[:room]
    return text[:room].encode("utf-8", "replace")[:room].decode("utf-8", "ignore")


def _data_size(data: dict) -> int:
    """Bytes of a display's mime bundle: text (or base64) values as they are, JSON values as JSON."""
    return sum(_size(v if isinstance(v, str) else json.dumps(v)) for v in data.values())


class _CappedClient(NotebookClient):
    """nbclient's executor, keeping at most MAX_OUTPUT_BYTES of text and MAX_OUTPUTS
    outputs per cell; what it drops is counted and reported at the end of the cell."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept_bytes: dict[int, int] = {}      # cell index -> bytes of text kept
        self.dropped_bytes: dict[int, int] = {}   # cell index -> bytes of text dropped

    def output(self, outs, msg, display_id, cell_index):
        msg_type, content = msg["msg_type"], msg["content"]
        self._clear_if_pending(outs, msg, cell_index)
        if msg_type == "error":
            return super().output(outs, msg, display_id, cell_index)
        kept = self.kept_bytes.get(cell_index, 0)
        dropped = self.dropped_bytes.get(cell_index, 0)
        size = _size(content["text"]) if msg_type == "stream" else _data_size(content.get("data", {}))
        room = MAX_OUTPUT_BYTES - kept
        if len(outs) >= MAX_OUTPUTS or room <= 0 or (size > room and msg_type != "stream"):
            self.dropped_bytes[cell_index] = dropped + size
            return None
        if size > room:                       # the stream message that crosses the cap: cut it
            text = _clip(content["text"], room)
            msg = dict(msg, content=dict(content, text=text))
            self.dropped_bytes[cell_index] = dropped + size - _size(text)
            size = _size(text)
        self.kept_bytes[cell_index] = kept + size
        return super().output(outs, msg, display_id, cell_index)

    def _clear_if_pending(self, outs, msg, cell_index):
        """The clear that ``clear_output(wait=True)`` left for the next output, done now,
        as nbclient would, and whether or not the cap then keeps that output."""
        hooked = self.output_hook_stack[msg["parent_header"].get("msg_id")]   # an Output widget's
        if self.clear_before_next_output and not hooked and msg["msg_type"] in _OUTPUT_TYPES:
            outs[:] = []
            self.clear_display_id_mapping(cell_index)
            self.clear_before_next_output = False
            self.kept_bytes[cell_index] = self.dropped_bytes[cell_index] = 0

    def _update_display_id(self, display_id, msg):
        """``handle.update(data)`` rewrites in place every output shown under ``display_id``
        (it never reaches ``output``); where the new data would take a cell past
        MAX_OUTPUT_BYTES, that output keeps its old data and the new bytes count as dropped."""
        shown = self._display_id_map.get(display_id)
        if not shown:
            return super()._update_display_id(display_id, msg)
        size, fits = _data_size(msg["content"].get("data", {})), {}
        for cell_index, output_indices in shown.items():
            outputs = self.nb.cells[cell_index].outputs
            kept = self.kept_bytes.get(cell_index, 0) + sum(size - _data_size(outputs[i].get("data", {}))
                                                            for i in output_indices)
            if kept <= MAX_OUTPUT_BYTES:
                self.kept_bytes[cell_index], fits[cell_index] = kept, output_indices
            elif output_indices:
                dropped = self.dropped_bytes.get(cell_index, 0)
                self.dropped_bytes[cell_index] = dropped + size * len(output_indices)
        self._display_id_map[display_id] = fits   # nbclient updates the outputs listed here
        try:
            super()._update_display_id(display_id, msg)
        finally:
            self._display_id_map[display_id] = shown

    def clear_output(self, outs, msg, cell_index):
        super().clear_output(outs, msg, cell_index)
        if not msg["content"].get("wait"):   # cleared now (a wait clears at the next output)
            self.kept_bytes[cell_index] = self.dropped_bytes[cell_index] = 0

    async def _async_check_alive(self) -> None:
        """Dead means the kernel's process ended (in the sandbox: bwrap, which ends with it).

        nbclient asks the heartbeat instead, every second while a cell runs; on a loaded
        machine a heartbeat answered more than a second late made it report a quick cell's
        kernel as dead."""
        if not await self.km.is_alive():
            raise DeadKernelError("Kernel died")

    async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
        try:
            return await super().async_execute_cell(cell, cell_index, *args, **kwargs)
        finally:
            if self.dropped_bytes.get(cell_index):
                marker = f"\n[output truncated: {self.dropped_bytes[cell_index]} bytes dropped]\n"
                cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text=marker))


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def _result(cell) -> str:
    return next((o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", [])
                 if o.get("output_type") == "execute_result"), "")


@functools.lru_cache(maxsize=8)
def _imports_checkout(python_path: str) -> bool:
    """Whether this Python, with ``python_path`` as PYTHONPATH and started outside the
    checkout, imports course_lib from this checkout (true after ``pip install -e .``)."""
    probe = "import importlib.util as u; s = u.find_spec('course_lib'); print(s.origin if s else '')"
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    if python_path:
        env["PYTHONPATH"] = python_path
    with tempfile.TemporaryDirectory() as elsewhere:
        try:
            origin = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True,
                                    text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return False
    return bool(origin) and Path(origin).resolve() == (CHECKOUT / "course_lib" / "__init__.py").resolve()


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "COURSE_LIB_THREADS")
# course_lib's own cap on its copy threads (course_lib.machinery.threads.MAX_THREADS; the grader does not
# import the library it grades, so the number is written here too and a test keeps the two equal)
COURSE_LIB_MAX_THREADS = 8


def cores_per_process(processes: int) -> int:
    """The cores this process may use, shared among ``processes`` processes running at once: at least 1 each."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:           # macOS and Windows have no sched_getaffinity
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes))


def threads_env(threads: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a kernel that should start ``threads`` threads
    in torch and OpenMP, in numpy's BLAS and in course_lib's copies.

    Give each of several kernels running at once ``cores_per_process(n)``: when two each
    start a thread per core, every parallel region of one waits at a barrier for a thread
    the other has taken off its core, and small torch calls run tens of times slower
    (a grading batch at -j 2: 3 to 5 times slower than at -j 1). A variable already set
    in ``env`` is kept.
    """
    env = dict(os.environ if env is None else env)
    for name in THREAD_VARIABLES:
        env.setdefault(name, str(min(threads, COURSE_LIB_MAX_THREADS) if name == "COURSE_LIB_THREADS" else threads))
    return env


def kernel_env(threads: int = 0) -> dict[str, str]:
    """The kernel's environment: ours, on the CPU unless COURSE_DEVICE says otherwise, no GUI;
    ``threads`` threads in torch and BLAS where the variables are not set already (0: one per core).

    The kernel must import course_lib (the guard, the tests' references) from
    this very checkout. The checkout goes on PYTHONPATH only when that is needed:
    it also holds solutions/, and a student's code should not find it in its environment.
    """
    env = dict(os.environ, COURSE_DEVICE=os.environ.get("COURSE_DEVICE", "cpu"), MPLBACKEND="Agg")
    if not _imports_checkout(env.get("PYTHONPATH", "")):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), env.get("PYTHONPATH")) if p)
    return threads_env(threads, env) if threads else env


class Gate:
    """Who may run a cell now, across every kernel of a batch (``grade_all`` runs ``jobs`` at once).

    A **timed** cell (a speed-graded test: ``metadata.course_kit.timed = true``)
    runs alone: it waits until the cells running in other kernels end, and no
    other kernel starts a cell until it is done. Other cells share the gate. So
    a speed-graded test never competes with another submission for the CPU,
    whatever ``-j`` says. Time spent waiting at the gate does not count against
    the time limits.
    """

    def __init__(self):
        self._lock = threading.Condition()
        self._running = 0          # cells running now
        self._timed_waiting = 0    # timed cells waiting: they go before new cells

    @contextlib.contextmanager
    def cell(self, timed: bool):
        with self._lock:
            if timed:
                self._timed_waiting += 1
                self._lock.wait_for(lambda: self._running == 0)
                self._timed_waiting -= 1
                self._running = -1   # alone
            else:
                self._lock.wait_for(lambda: self._running >= 0 and not self._timed_waiting)
                self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running = 0 if timed else self._running - 1
                self._lock.notify_all()


GATE = Gate()


def is_timed(cell) -> bool:
    """Whether ``cell`` is speed-graded: it must run alone (``Gate``)."""
    meta = cell.get("metadata", {}).get("course_kit", {})
    return isinstance(meta, dict) and meta.get("timed") is True


class _ConfinedKernelManager(AsyncKernelManager):
    """jupyter_client's kernel manager, with the kernel's command wrapped by ``sandbox.kernel_command``
    and, in the sandbox, the ``ipc`` transport (Unix sockets in the room's run folder)."""

    def confine(self, room: sandbox.Room, confinement: sandbox.Confinement, hidden: list[Path], number: int):
        self.room, self.confinement, self.hidden = room, confinement, hidden
        self.connection_file = str(room.run / f"kernel-{number}.json")
        if room.mode.name == "sandbox":
            self.transport, self.ip = "ipc", str(room.run / f"k{number}")

    def format_kernel_cmd(self, extra_arguments=None) -> list[str]:
        command = super().format_kernel_cmd(extra_arguments)
        self.room.give(Path(self.connection_file))   # written just before, by the grader's user
        return sandbox.kernel_command(command, self.room, self.confinement, self.hidden)


@dataclass
class Execution:
    """One notebook run: a CellRun per cell, the mode it ran in, kernels restarted after a
    stop, and processes of the submission found alive after its kernel ended (and ended)."""
    runs: list[CellRun]
    mode: str
    restarts: int = 0
    leftovers: int = 0


@dataclass
class _Plan:
    """What ``_run`` needs besides the notebook: the room, its limits, the time limits."""
    room: sandbox.Room
    confinement: sandbox.Confinement
    hidden: list[Path]
    cell_timeout: float
    notebook_timeout: float
    starts: int = 0
    deadline: float = math.inf   # time.monotonic() by which every cell must be done
    left: float = math.inf       # seconds the notebook had left when the last cell started


async def _start_kernel(client, plan: _Plan) -> None:
    """Start a fresh kernel for ``client`` in the plan's room; a failure cleans up and raises KernelStartError."""
    plan.starts += 1
    client.km = _ConfinedKernelManager(kernel_name=KERNEL)
    client.km.confine(plan.room, plan.confinement, plan.hidden, plan.starts)
    try:
        # the kernel process's own stdout/stderr (start-up banners) are not the cells' output
        await client.async_start_new_kernel(env=plan.room.env, cwd=str(plan.room.scratch),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await client.async_start_new_kernel_client()
    except Exception as err:  # noqa: BLE001 - nothing of the student's has run yet
        await _stop_kernel(client, plan)
        raise KernelStartError(f"the kernel did not start: {type(err).__name__}: {err}") from err


async def _stop_kernel(client, plan: _Plan) -> int:
    """Shut the kernel down (the sandbox's PID namespace ends with it), then end whatever of the
    submission still runs; returns how many such processes there were."""
    if client.km is None:
        return 0
    provisioner = getattr(client.km, "provisioner", None)
    session = getattr(provisioner, "pgid", None)
    with contextlib.suppress(Exception):
        await client._async_cleanup_kernel()
    client.km = client.kc = None
    return sandbox.end_leftovers(plan.room, session)


async def _execute(client, cell, index: int, plan: _Plan) -> None:
    """Run one cell once the gate lets it (``Gate``); the wait moves the notebook's deadline."""
    asked = time.monotonic()
    with GATE.cell(is_timed(cell)):
        plan.deadline += time.monotonic() - asked
        plan.left = plan.deadline - time.monotonic()
        client.timeout = max(1, math.ceil(min(plan.cell_timeout, plan.left)))
        await client.async_execute_cell(cell, index, execution_count=index)


async def _run_cells(client, nb, runs, first: int, plan: _Plan, replies: dict) -> int | None:
    """Run cells ``first``, ``first + 1``, ... and record each CellRun; return the index of the cell
    that stopped the kernel (a cell time limit, or the kernel died), or None (the end, or the notebook's time)."""
    for index in range(first, len(nb.cells)):
        cell, run = nb.cells[index], runs[index]
        if cell.cell_type != "code" or not cell.source.strip():
            run.status = "ok"
            continue
        if plan.deadline - time.monotonic() <= 0:
            run.status, run.limit = "timeout", "notebook"
            return None
        try:
            await _execute(client, cell, index, plan)
        except (CellTimeoutError, DeadKernelError) as err:
            # nbclient calls a silent time-out whose heartbeat was missed (a loaded machine) a dead kernel:
            # it died only if its process did
            if isinstance(err, DeadKernelError) and not await client.km.is_alive():
                run.status = "died"
                return index
            run.status, run.limit = "timeout", "cell" if plan.cell_timeout <= plan.left else "notebook"
            return index if run.limit == "cell" else None
        content = (replies.get(index) or {}).get("content", {})
        run.stdout, run.result = _stdout(cell), _result(cell)
        if content.get("status") == "error":
            run.status, run.ename, run.evalue = "error", content.get("ename", ""), content.get("evalue", "")
        else:
            run.status = "ok"
    return None


async def _replay(client, nb, upto: int, skip: set[int], plan: _Plan) -> bool:
    """In a fresh kernel, run again what the cells after ``upto`` may need: the grader's preamble
    and every answer and set-up cell before it, except those in ``skip`` (they stopped a kernel);
    test cells and their guards are not run again. False if the replay itself was stopped."""
    for index, cell in enumerate(nb.cells[:upto]):
        role = cell.metadata.get(ROLE_KEY, {}).get("role")
        if (cell.cell_type != "code" or not cell.source.strip() or index in skip or role in ("before", "after")
                or cell_role(cell) == "test"):
            continue
        if plan.deadline - time.monotonic() <= 0:
            return False
        try:
            await _execute(client, copy.deepcopy(cell), index, plan)
        except (CellTimeoutError, DeadKernelError):
            return False
    return True


async def _run(nb, plan: _Plan) -> Execution:
    """Run every cell; after a cell stops the kernel, go on in a fresh one (at most MAX_RESTARTS times)."""
    execution = Execution([CellRun() for _ in nb.cells], plan.room.mode.name)
    replies: dict[int, dict] = {}
    client = _CappedClient(nb, kernel_name=KERNEL, allow_errors=True, shutdown_kernel="immediate",
                           record_timing=False, resources={"metadata": {"path": str(plan.room.scratch)}},
                           startup_timeout=STARTUP_TIMEOUT)
    client.on_cell_executed = lambda cell, cell_index, execute_reply: replies.update({cell_index: execute_reply})
    await _start_kernel(client, plan)
    plan.deadline, first, skip = time.monotonic() + plan.notebook_timeout, 0, set()
    try:
        while (stopped := await _run_cells(client, nb, execution.runs, first, plan, replies)) is not None:
            skip.add(stopped)
            if execution.restarts == MAX_RESTARTS or plan.deadline - time.monotonic() < 1:
                break
            execution.leftovers += await _stop_kernel(client, plan)
            execution.restarts += 1
            await _start_kernel(client, plan)
            if not await _replay(client, nb, stopped, skip, plan):
                break
            first = stopped + 1
    finally:
        execution.leftovers += await _stop_kernel(client, plan)
    return execution


class KernelStartError(RuntimeError):
    """The kernel did not start (before any of the notebook's cells ran)."""


def run_notebook(nb, workdir: Path, cell_timeout: float = 60, notebook_timeout: float = 600, attempts: int = 2,
                 confinement: sandbox.Confinement | None = None, hidden: list[Path] = (),
                 files: dict[str, Path] | None = None, threads: int = 0) -> Execution:
    """Run ``nb`` (not modified) in a fresh kernel in a room under ``workdir``; one CellRun per cell.

    Parameters
    ----------
    nb : the instrumented notebook (nbformat v4)
    workdir : an empty folder for this submission alone (deleted by the caller)
    cell_timeout : seconds one cell may run
    notebook_timeout : seconds all cells together may run (the first kernel start-up excluded,
        restarts included)
    attempts : kernel starts to try; a start that fails (a busy machine) is retried,
        which is safe because no cell has run yet
    confinement : limits and sandbox choice (default: ``sandbox.Confinement()``)
    hidden : folders the submission must not see (the solution's, the submissions, the grades)
    files : the assignment's other files (data, images) by the path the notebook opens them at,
        copied into the kernel's working folder
    threads : threads the kernel's libraries start (``kernel_env``); 0: one per core
    """
    confinement = confinement or sandbox.Confinement()
    mode = sandbox.choose(confinement)
    for attempt in range(1, attempts + 1):
        room = sandbox.Room(Path(workdir) / f"attempt-{attempt}", mode, kernel_env(threads), files or {})
        plan = _Plan(room, confinement, list(hidden), cell_timeout, notebook_timeout)
        try:
            return asyncio.run(_run(copy.deepcopy(nb), plan))
        except KernelStartError:
            if attempt == attempts:
                raise
        finally:
            room.close()
    raise ValueError(f"attempts must be at least 1, got {attempts}")
