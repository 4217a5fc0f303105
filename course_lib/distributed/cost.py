"""Communication cost of the two reduction topologies: bytes, and an alpha-beta time model.

Lecture 5, "Parameter Server (PS) vs Ring All-Reduce: Communication Cost"
(P = ``world_size`` processes, N model parameters):

* PS (centralized reduce): the P - 1 learners send N(P - 1) to the PS, which
  sends N(P - 1) back: "total communication cost at PS process is
  proportional to 2N(P - 1)".
* Ring all-reduce: scatter-reduce sends N/P to the right neighbour P - 1
  times, allgather again: "total communication cost per process is
  2N(P - 1)/P" -- practically independent of P.

Byte counts here are exact for any N (chunks of unequal size when P does not
divide N), so they equal what ``allreduce`` measures on real processes.

Two levels (Goyal et al. 2017: rings inside each server, then between servers):
``two_level_bytes_per_rank`` and ``two_level_time``.

``cost_rows`` puts both byte counts side by side for a list of P (lesson 6's table).

The time model is the usual latency-bandwidth ("alpha-beta") one: sending a
message of m bytes costs ``alpha + m * beta``, with alpha the latency in
seconds and beta seconds per byte (1 / bandwidth). A ring all-reduce is
2(P - 1) such sends of N/P elements one after another; the PS's one link
carries 2(P - 1) messages of N elements (with ``n_shards`` shards, N/n_shards
each, on n_shards links in parallel). A ring step costs one send only if each
rank receives from the left while it sends to the right: ``duplex_timeline``
(lesson 7) shows the step taking two or three sends when it cannot.
"""

from __future__ import annotations

import numpy as np

from course_lib.checks import check_int

from .schedule import chunk_bounds


def ring_bytes_per_rank(N: int, world_size: int, itemsize: int = 1) -> np.ndarray:
    """Bytes each rank *sends* in one ring all-reduce: 2N(P-1)/P when P divides N.

    Rank r sends every chunk but chunk (r + 1) in scatter-reduce and every
    chunk but chunk (r + 2) in allgather (see ``schedule.py``), so exactly
    ``2N - |chunk r+1| - |chunk r+2|`` elements. Their mean over ranks is
    always 2N(P-1)/P. Each rank receives as many bytes as its left neighbour sends.

    Returns
    -------
    sent : int64 ndarray, shape (world_size,), bytes sent by each rank
    """
    N, P, itemsize = check_int(N, "N", 0), check_int(world_size, "world_size", 1), check_int(itemsize, "itemsize", 1)
    if P == 1:
        return np.zeros(1, dtype=np.int64)
    size = [stop - start for start, stop in chunk_bounds(N, P)]
    sent = [2 * N - size[(r + 1) % P] - size[(r + 2) % P] for r in range(P)]
    return np.array(sent, dtype=np.int64) * itemsize


def ps_bytes_at_server(N: int, world_size: int, itemsize: int = 1) -> int:
    """Bytes through the parameter server in one reduction: 2N(P-1) (received + sent)."""
    N, P, itemsize = check_int(N, "N", 0), check_int(world_size, "world_size", 1), check_int(itemsize, "itemsize", 1)
    return 2 * N * (P - 1) * itemsize


def cost_rows(N: int, world_sizes, itemsize: int = 4) -> list[dict]:
    """Bytes of one reduction of N elements, per topology, for each P in ``world_sizes``.

    ``ps_server``: through the parameter server, 2N(P-1); ``ring_per_rank``: sent by
    each ring rank, 2N(P-1)/P (the mean over ranks when P does not divide N);
    ``ratio`` = ps_server / ring_per_rank = P. One dict per P, in order.
    """
    rows = []
    for P in world_sizes:
        ps = ps_bytes_at_server(N, P, itemsize)
        ring = float(ring_bytes_per_rank(N, P, itemsize).mean())
        rows.append({"P": P, "ps_server": ps, "ring_per_rank": ring,
                     "ratio": ps / ring if ring else float("nan")})
    return rows


def ps_bytes_per_rank(N: int, world_size: int, shards: int = 1, itemsize: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Bytes each rank sends and receives in a parameter-server reduction with ``shards`` shards.

    The array is cut into n_shards = ``shards`` pieces (``chunk_bounds(N, n_shards)``);
    rank s < n_shards serves shard s: the other P - 1 ranks send it their shard s,
    it sums and sends the result back to them. With one shard, rank 0 sends and
    receives N(P-1) and each learner sends and receives N, so
    ``sent[0] + received[0] = 2N(P-1)``.

    Returns
    -------
    sent, received : int64 ndarrays, shape (world_size,), in bytes
    """
    N, P, itemsize = check_int(N, "N", 0), check_int(world_size, "world_size", 1), check_int(itemsize, "itemsize", 1)
    n_shards = check_int(shards, "shards", 1, P, why=f"world_size = {P}: shard s is served by rank s")
    size = [stop - start for start, stop in chunk_bounds(N, n_shards)]
    sent = np.zeros(P, dtype=np.int64)
    for r in range(P):
        as_learner = sum(size[s] for s in range(n_shards) if s != r)    # my shard s to server s
        as_server = (P - 1) * size[r] if r < n_shards else 0           # the sum back to everyone
        sent[r] = as_learner + as_server
    return sent * itemsize, sent * itemsize   # every message sent is received by someone, symmetrically


def ring_time(N: int, world_size: int, alpha: float, beta: float, itemsize: int = 4) -> float:
    """alpha-beta time of a ring all-reduce: ``2(P-1) * (alpha + (N/P) * itemsize * beta)`` seconds."""
    P = check_int(world_size, "world_size", 1)
    return 2 * (P - 1) * (alpha + N / P * itemsize * beta)


def two_level_bytes_per_rank(N: int, world_size: int, local_size: int,
                             itemsize: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Bytes each rank sends in ``two_level_allreduce_``: (inside its node, to other nodes).

    With L = ``local_size`` ranks per node and M = P / L nodes: inside the node a ring
    all-reduce of N over L ranks, ``2N(L-1)/L``; between nodes a ring all-reduce of the rank's
    chunk (N/L) over M ranks, ``2(N/L)(M-1)/M``. Exact for any N (unequal chunks).

    Returns
    -------
    (intra, inter) : int64 ndarrays, shape (world_size,), bytes sent by each rank
    """
    P, L = check_int(world_size, "world_size", 1), check_int(local_size, "local_size", 1)
    if P % L:
        raise ValueError(f"local_size = {L} must divide world_size = {P}")
    M, size = P // L, [stop - start for start, stop in chunk_bounds(N, L)]
    ranks = np.arange(P)
    inside = ring_bytes_per_rank(N, L, itemsize)                                  # (L,) by local rank
    between = np.array([ring_bytes_per_rank(size[(j + 1) % L], M, itemsize)      # (L, M): local rank j
                        for j in range(L)])                                      # holds chunk j + 1
    return inside[ranks % L], between[ranks % L, ranks // L]


def two_level_time(N: int, world_size: int, local_size: int, intra: tuple[float, float],
                   inter: tuple[float, float], itemsize: int = 4) -> float:
    """alpha-beta time of ``two_level_allreduce_``: a ring of L on the fast link, then of M on the slow.

    ``2(L-1)(alpha_intra + N/L * beta_intra) + 2(M-1)(alpha_inter + N/(L*M) * beta_inter)``
    (itemsize bytes per element; ``intra``, ``inter`` are ``(alpha, beta)`` pairs). The M
    rings between nodes run in parallel, one per local rank, each on its own link. The flat ring
    over the same machines waits at every step for its slowest hop: ``ring_time(N, P, *inter)``.
    """
    P, L = check_int(world_size, "world_size", 1), check_int(local_size, "local_size", 1)
    return ring_time(N, L, *intra, itemsize=itemsize) + ring_time(N / L, P // L, *inter, itemsize=itemsize)


def duplex_timeline(world_size: int, mode: str) -> list[tuple[int, str, float, float]]:
    """One step of a ring in units of one chunk's transfer time: (rank, "send"/"recv", start, end).

    ``mode="overlapped"``: every rank sends right while it receives from the left: the step
    takes 1 (what ``ring_time`` assumes). ``mode="send-then-receive"``: a rank cannot receive
    while it sends (one thread, blocking calls); to avoid deadlock, even ranks send first and
    odd ranks receive first, so each link is busy half the time and the step takes 2. With an
    odd P the last rank and rank 0 are both even: rank P-1's send waits for rank 0 to finish
    sending, rank P-2's send waits for rank P-1, and the step takes 3.
    """
    P = check_int(world_size, "world_size", 2, why="a ring step needs a neighbour to send to")
    if mode == "overlapped":
        return [(r, kind, 0.0, 1.0) for r in range(P) for kind in ("send", "recv")]
    if mode != "send-then-receive":
        raise ValueError(f"mode must be 'overlapped' or 'send-then-receive', got {mode!r}")
    send_start = {r: 0.0 if r % 2 == 0 else 1.0 for r in range(P)}   # even ranks send first
    if P % 2:
        send_start[P - 1] = 1.0        # rank 0 receives only once its own send is done
        send_start[P - 2] = 2.0        # rank P-1 receives only once its own send is done
    rows = []
    for r in range(P):
        src = (r - 1) % P              # the left neighbour, whose send is my receive
        rows.append((r, "send", send_start[r], send_start[r] + 1))
        rows.append((r, "recv", send_start[src], send_start[src] + 1))
    return rows


def ps_time(N: int, world_size: int, alpha: float, beta: float, itemsize: int = 4, shards: int = 1) -> float:
    """alpha-beta time of a parameter server: ``2(P-1) * (alpha + (N/n_shards) * itemsize * beta)`` seconds.

    The server's link is the bottleneck: P - 1 messages in, P - 1 out, one after
    another; with n_shards = ``shards`` shards each server link carries N/n_shards
    per message, in parallel.
    """
    P, n_shards = check_int(world_size, "world_size", 1), check_int(shards, "shards", 1)
    return 2 * (P - 1) * (alpha + N / n_shards * itemsize * beta)


def ps_ring_ratio(N: int, world_size, alpha: float, beta: float, itemsize: int = 4):
    """``ps_time / ring_time`` for one P or an array of P (2 and up).

    With alpha = 0 this is exactly P (bytes 2N(P-1) vs 2N(P-1)/P): the PS gets
    worse linearly in P while the ring's cost per process tends to 2N.
    With large alpha (tiny messages) both are 2(P-1) latencies and the ratio tends to 1.
    """
    P = np.asarray(world_size, dtype=np.float64)
    if np.any(P < 2):
        raise ValueError(f"ps_ring_ratio needs world_size >= 2 (with one process nothing is sent), got {world_size}")
    ps = 2 * (P - 1) * (alpha + N * itemsize * beta)
    ring = 2 * (P - 1) * (alpha + N / P * itemsize * beta)
    ratio = ps / ring
    return float(ratio) if ratio.ndim == 0 else ratio
