"""The ring all-reduce schedule as pure functions: which chunk goes where, when.

Lecture 5, "Ring All-Reduce" (after Gibiansky, *Bringing HPC Techniques to
Deep Learning*, 2017): ``world_size`` processes (the lecture's P) sit on a
ring; "each node has a left neighbor and a right neighbor; a node only sends
data to its right neighbor, and only receives data from its left neighbor".
Every rank cuts its array of N elements into P chunks, then runs

1. **scatter-reduce**, P - 1 steps: at step k rank r sends chunk (r - k) mod P
   to rank r + 1 and receives chunk (r - k - 1) mod P from rank r - 1, which it
   adds into its own copy of that chunk. Afterwards rank r holds the complete
   sum of chunk (r + 1) mod P.
2. **allgather**, P - 1 steps: at step k rank r sends chunk (r + 1 - k) mod P
   (at step 0, the chunk it completed) and receives chunk (r - k) mod P, which
   overwrites its own copy. Afterwards every rank holds every complete chunk.

Nothing here moves data: ``simulate.py`` replays the schedule on arrays in one
process, ``collectives.py`` carries it out between processes. All functions
are pure and cheap; print ``ring_schedule(4)`` to see the whole table.
"""

from __future__ import annotations

from typing import NamedTuple

from course_lib.checks import check_int


def chunk_bounds(N: int, world_size: int) -> list[tuple[int, int]]:
    """Cut N elements into ``world_size`` contiguous chunks whose sizes differ by at most one.

    The first ``N % P`` chunks get ``N // P + 1`` elements, the others ``N // P``
    (as ``numpy.array_split`` does). When N < P the last chunks are empty.

    Parameters
    ----------
    N : number of elements (the lecture's N, the number of model parameters)
    world_size : number of chunks (the lecture's P)

    Returns
    -------
    bounds : list of ``world_size`` pairs ``(start, stop)``; chunk c is ``x[start:stop]``

    >>> chunk_bounds(10, 4)
    [(0, 3), (3, 6), (6, 8), (8, 10)]
    """
    N, P = check_int(N, "N", 0), check_int(world_size, "world_size", 1)
    base, extra = divmod(N, P)
    bounds, start = [], 0
    for c in range(P):
        stop = start + base + (1 if c < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _check_step(rank, step, world_size) -> tuple[int, int, int]:
    P = check_int(world_size, "world_size", 1)
    rank, step = check_int(rank, "rank", 0), check_int(step, "step", 0)
    if rank >= P:
        raise ValueError(f"rank = {rank} must be < world_size = {P} (ranks are 0 .. {P - 1})")
    if step >= P - 1:
        raise ValueError(f"step = {step} out of range: each phase has world_size - 1 = {P - 1} "
                         f"steps, numbered 0 .. {P - 2}")
    return rank, step, P


def scatter_reduce_step(rank: int, step: int, world_size: int) -> tuple[int, int]:
    """Scatter-reduce: the chunk rank ``rank`` sends right and the one it receives from the left.

    ``send = (rank - step) mod P``, ``recv = (rank - step - 1) mod P``; the
    received chunk is *added* into the rank's own copy of it.

    Returns
    -------
    (send_chunk, recv_chunk) : chunk indices in ``0 .. world_size - 1``
    """
    r, k, P = _check_step(rank, step, world_size)
    return (r - k) % P, (r - k - 1) % P


def allgather_step(rank: int, step: int, world_size: int) -> tuple[int, int]:
    """Allgather: the chunk rank ``rank`` sends right and the one it receives from the left.

    ``send = (rank + 1 - step) mod P``, ``recv = (rank - step) mod P``; the
    received chunk (already complete) *replaces* the rank's own copy.

    Returns
    -------
    (send_chunk, recv_chunk) : chunk indices in ``0 .. world_size - 1``
    """
    r, k, P = _check_step(rank, step, world_size)
    return (r + 1 - k) % P, (r - k) % P


class RingStep(NamedTuple):
    """One row of the schedule: at ``phase`` step ``step``, ``rank`` sends ``send_chunk``
    to ``dst`` and receives ``recv_chunk`` from ``src``."""
    phase: str          # "scatter-reduce" or "allgather"
    step: int
    rank: int
    send_chunk: int
    dst: int
    recv_chunk: int
    src: int


class RingSchedule(list):
    """A list of ``RingStep`` rows that prints as a table.

    ``rows()`` gives the same table as plain dicts, for a DataFrame
    (``course_lib.viz.distributed.schedule_table``, lesson 07).
    """

    def rows(self) -> list[dict]:
        """One dict per ``RingStep``, keyed by its field names (phase, step, rank, send_chunk, ...)."""
        return [step._asdict() for step in self]

    def __str__(self) -> str:
        lines = [f"{'phase':<15}{'step':>5}{'rank':>6}   sends chunk -> to   receives chunk <- from"]
        for s in self:
            lines.append(f"{s.phase:<15}{s.step:>5}{s.rank:>6}   {s.send_chunk:>6}   ->  {s.dst:>2}"
                         f"   {s.recv_chunk:>10}   <-  {s.src:>2}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython shows the table, not a list of tuples
        p.text(str(self))


def ring_schedule(world_size: int) -> RingSchedule:
    """Every step of the ring all-reduce for ``world_size`` ranks: 2 (P - 1) steps x P ranks.

    >>> print(ring_schedule(2))  # doctest: +NORMALIZE_WHITESPACE
    phase           step  rank   sends chunk -> to   receives chunk <- from
    scatter-reduce     0     0        0   ->   1            1   <-   1
    scatter-reduce     0     1        1   ->   0            0   <-   0
    allgather          0     0        1   ->   1            0   <-   1
    allgather          0     1        0   ->   0            1   <-   0
    """
    P = check_int(world_size, "world_size", 1)
    rows = RingSchedule()
    for phase, step_fn in (("scatter-reduce", scatter_reduce_step), ("allgather", allgather_step)):
        for k in range(P - 1):
            for r in range(P):
                send, recv = step_fn(r, k, P)
                rows.append(RingStep(phase, k, r, send, (r + 1) % P, recv, (r - 1) % P))
    return rows
