"""The first thing a submission's kernel runs: resource limits, then the kernel itself.

    python -m grader.limits --memory BYTES --nproc N --fsize BYTES [--uid U] [--no-parent-poll] -- CMD...

sets the limits on this process (its children inherit them), drops to user
``U`` when started as root, and replaces itself with ``CMD`` (the kernel).
It runs inside the sandbox, or as the kernel's launcher in the limited mode.

* ``RLIMIT_DATA`` (memory): an allocation past it fails; Python raises
  ``MemoryError`` in the cell that asked, and the kernel lives on. It counts
  the heap and private mappings, not shared libraries, so torch still imports
  under 1 GiB. Each process of the submission has this much.
* ``RLIMIT_NPROC`` (processes and threads of the user): a fork bomb stops
  there. Linux does not enforce it for root, hence ``--uid``: the grader gives
  each sandboxed submission a user id of its own, which no other process uses.
* ``RLIMIT_FSIZE`` (the largest file it may write): Python ignores ``SIGXFSZ``,
  so a write past it raises ``OSError`` (EFBIG).
"""

from __future__ import annotations

import argparse
import os
import sys


def apply(memory: int, nproc: int, fsize: int, uid: int | None = None, gid: int | None = None) -> None:
    """Set the three limits on this process; then, if ``uid`` is given and we are root, become it."""
    import resource   # POSIX only: the limited mode on Windows runs without limits
    for kind, value in ((resource.RLIMIT_DATA, memory), (resource.RLIMIT_NPROC, nproc),
                        (resource.RLIMIT_FSIZE, fsize)):
        _, hard = resource.getrlimit(kind)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value))
    if uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(uid if gid is None else gid)
        os.setuid(uid)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.limits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", type=int, required=True, help="bytes of heap per process (RLIMIT_DATA)")
    parser.add_argument("--nproc", type=int, required=True, help="processes and threads (RLIMIT_NPROC)")
    parser.add_argument("--fsize", type=int, required=True, help="bytes per file written (RLIMIT_FSIZE)")
    parser.add_argument("--uid", type=int, help="user to become when started as root")
    parser.add_argument("--gid", type=int, help="its group (default: the same number)")
    parser.add_argument("--no-parent-poll", action="store_true",
                        help="unset JPY_PARENT_PID: in a PID namespace the kernel's parent pid means nothing, and "
                             "ipykernel would take pid 1 for a dead parent (bwrap --die-with-parent does that job)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the kernel's command line")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run after the limits (expected: -- CMD ...)")
    apply(args.memory, args.nproc, args.fsize, args.uid, args.gid)
    if args.no_parent_poll:
        os.environ.pop("JPY_PARENT_PID", None)
    os.execvp(command[0], command)
    return 1   # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
