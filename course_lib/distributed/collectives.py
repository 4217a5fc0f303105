"""All-reduce algorithms, written once against a transport's ``step``.

``ring_allreduce_(endpoint, count)``, ``ps_allreduce_(endpoint, count, shards)`` and
``two_level_allreduce_(endpoint, count, local_size)`` (rings inside and between nodes) sum
``endpoint.buffer[:count]`` across all ranks, in place, on every rank. They run inside worker
processes (or on threads: ``course_lib.machinery.recording``); ``ProcessGroup`` wraps them for worker functions
(``pg.allreduce_(grad)``).

All they ask of the transport is one call per step: ``endpoint.step(sends, recvs)``
sends regions ``(dst, start, stop)`` of ``endpoint.buffer`` and returns one array
per receive ``(src, count)``; ``endpoint.fence()`` after the last step. How the
bytes move (pipes, shared memory) and how the processes start is not the
lecture: ``course_lib.machinery.transport`` and ``course_lib.machinery.launch``
(``allreduce(arrays)`` runs these functions from a notebook).

Both give bit-identical results on every rank: each element is summed on
exactly one rank, in a fixed order, and then copied to the others. (They may
still differ from ``np.sum`` in the last bits, because the order differs.)
"""

from __future__ import annotations

import numpy as np

from course_lib.checks import check_int

from .schedule import allgather_step, chunk_bounds, scatter_reduce_step


def ring_phase_(endpoint, x: np.ndarray, ring: list[int], bounds: list[tuple[int, int]], reduce: bool) -> None:
    """One phase of a ring among the ranks ``ring``: ``len(ring) - 1`` steps, right neighbour out, left in.

    x : (N,) a view of ``endpoint.buffer``; bounds : one region ``(start, stop)`` of x per member.
    At step k the member at position i sends region ``send`` and receives region ``recv`` of
    ``schedule.py`` (its scatter-reduce or allgather step); ``reduce`` says which phase.
    """
    n, i = len(ring), ring.index(endpoint.rank)
    right, left = ring[(i + 1) % n], ring[(i - 1) % n]
    schedule = scatter_reduce_step if reduce else allgather_step
    for k in range(n - 1):
        send, recv = schedule(i, k, n)
        a, b = bounds[recv]
        (got,) = endpoint.step(sends=[(right, *bounds[send])], recvs=[(left, b - a)])
        if reduce:
            np.add(x[a:b], got, out=x[a:b])              # scatter-reduce: add the left's partial sum
        else:
            x[a:b] = got                                 # allgather: copy the left's complete region


def ring_reduce_scatter_(endpoint, x: np.ndarray, ring: list[int], bounds: list[tuple[int, int]]) -> int:
    """Scatter-reduce among the ranks ``ring``, over the regions ``bounds`` of ``x``, one per member.

    ``x`` is a view of ``endpoint.buffer`` (the regions are sent from it); ``ring[i]`` sends to
    ``ring[i + 1]`` and receives from ``ring[i - 1]``, ``len(ring) - 1`` steps (``schedule.py``).
    Returns the index of the region this rank then holds summed over the ring: ``(i + 1) % len(ring)``.
    """
    ring_phase_(endpoint, x, ring, bounds, reduce=True)
    return (ring.index(endpoint.rank) + 1) % len(ring)


def ring_allgather_(endpoint, x: np.ndarray, ring: list[int], bounds: list[tuple[int, int]]) -> None:
    """Allgather among the ranks ``ring``: each member's complete region replaces the others' copies."""
    ring_phase_(endpoint, x, ring, bounds, reduce=False)


def ring_allreduce_(endpoint, count: int) -> None:
    """Ring all-reduce of ``endpoint.buffer[:count]``: scatter-reduce, then allgather.

    Lecture 5, "Ring All-Reduce": each rank sends only to its right neighbour
    and receives only from its left; 2(P - 1) steps of about N/P elements, so
    2N(P-1)/P elements sent per rank. The chunk indices come from ``schedule.py``.
    """
    P = endpoint.world_size
    if P == 1:
        return
    x = endpoint.buffer[:count]                          # (N,) this rank's data, summed in place
    ring, bounds = list(range(P)), chunk_bounds(count, P)    # P chunks of N/P (+1) elements
    ring_reduce_scatter_(endpoint, x, ring, bounds)
    ring_allgather_(endpoint, x, ring, bounds)
    endpoint.fence()


def two_level_allreduce_(endpoint, count: int, local_size: int) -> None:
    """Two-level all-reduce of ``endpoint.buffer[:count]``: rings inside each node, rings between nodes.

    Goyal et al. 2017, section 4 ("Communication"): NCCL between the GPUs of a server, then
    between servers. The P ranks form ``P / local_size`` nodes of L = ``local_size`` ranks
    (rank r is local rank r % L of node r // L). With M = P / L nodes:

    1. reduce-scatter inside each node (a ring of L): local rank j then holds chunk j' of its
       node's sum, N/L elements;
    2. all-reduce of that chunk across the M nodes (a ring of the M ranks with the same local
       rank, on chunk j' cut in M pieces): M rings in parallel, one per local rank;
    3. allgather inside each node.

    Sent per rank: inside the node ``2N(L-1)/L`` elements, between nodes ``2(N/L)(M-1)/M``
    (``cost.two_level_bytes_per_rank``); the flat ring sends 2N(P-1)/P, and with ranks numbered
    node by node one rank per node sends all of it across the slow link at every step.
    """
    P, r = endpoint.world_size, endpoint.rank
    L = check_int(local_size, "local_size", 1, P, why="ranks per node")
    if P % L:
        raise ValueError(f"local_size = {L} must divide world_size = {P} (ranks per node, every node "
                         f"the same size: P = nodes * local_size)")
    x = endpoint.buffer[:count]                          # (N,)
    node, M = r // L, P // L
    local_ring = list(range(node * L, node * L + L))     # this node's ranks
    cross_ring = list(range(r % L, P, L))                # the same local rank on every node
    chunks = chunk_bounds(count, L)                      # L chunks of N/L (+1) elements
    mine = ring_reduce_scatter_(endpoint, x, local_ring, chunks) if L > 1 else 0
    if M > 1:
        start, stop = chunks[mine]                       # this rank's chunk of the node's sum
        pieces = [(start + a, start + b) for a, b in chunk_bounds(stop - start, M)]
        ring_reduce_scatter_(endpoint, x, cross_ring, pieces)
        ring_allgather_(endpoint, x, cross_ring, pieces)
    if L > 1:
        ring_allgather_(endpoint, x, local_ring, chunks)
    endpoint.fence()


def ps_allreduce_(endpoint, count: int, shards: int = 1) -> None:
    """Parameter-server all-reduce of ``endpoint.buffer[:count]`` with ``shards`` servers.

    Lecture 5, "Reduction Topologies: Parameter server: single reducer". The
    array is cut into ``n_shards = shards`` shards; rank s < n_shards is the server
    of shard s. Step 1: every rank sends its shard s to server s, which adds the
    P - 1 partial arrays to its own (in rank order). Step 2: each server sends its
    summed shard back to all. With one shard, rank 0 receives N(P-1) and sends
    N(P-1): 2N(P-1).
    """
    P, r, n_shards = endpoint.world_size, endpoint.rank, shards
    if not 1 <= n_shards <= P:
        raise ValueError(f"shards = {n_shards} must be between 1 and world_size = {P}")
    if P == 1:
        return
    x = endpoint.buffer[:count]                          # (N,)
    bounds = chunk_bounds(count, n_shards)               # shard s = x[bounds[s][0]:bounds[s][1]]
    serves = r < n_shards                                # is this rank the server of shard r?
    mine = bounds[r] if serves else (0, 0)
    others = [q for q in range(P) if q != r]
    servers = [s for s in range(n_shards) if s != r]     # the other ranks' shards

    partials = endpoint.step(                            # 1. learners -> servers
        sends=[(s, *bounds[s]) for s in servers],
        recvs=[(q, mine[1] - mine[0]) for q in others] if serves else [])
    total = x[mine[0]:mine[1]]
    for partial in partials:                             # the reduce, in rank order
        np.add(total, partial, out=total)

    summed = endpoint.step(                              # 2. servers -> everyone
        sends=[(q, *mine) for q in others] if serves else [],
        recvs=[(s, bounds[s][1] - bounds[s][0]) for s in servers])
    for s, shard in zip(servers, summed):
        x[bounds[s][0]:bounds[s][1]] = shard
    endpoint.fence()


ALGORITHMS = {"ring": ring_allreduce_, "ps": ps_allreduce_, "two_level": two_level_allreduce_}


class ProcessGroup:
    """What a worker function gets: its rank, the world size, and collectives.

    Created by ``course_lib.machinery.launch.launch`` in each worker; a training function receives it
    as its first argument::

        def train_worker(pg, steps):           # lives in course_lib, not in a notebook
            for _ in range(steps):
                grad = ...                     # this rank's gradient, a float32 ndarray
                pg.allreduce_(grad)            # now the sum over all ranks, on every rank
                grad /= pg.world_size

    Attributes
    ----------
    rank, world_size : int
    capacity : the largest number of elements one collective can carry
    bytes_sent, bytes_received : totals so far for this rank
    endpoint : the transport's end in this process. ``endpoint.buffer`` and the arrays
        ``endpoint.step`` returns are views of shared memory that is unmapped when the
        worker function returns: they must not escape it. Keep a ``.copy()`` (in a
        global, a thread, an object that lives on), never the view; reading one after
        the unmap kills the process (SIGSEGV). ``launch`` copies fn's return value
        before the unmap, so returning a view is safe.
    """

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.rank, self.world_size = endpoint.rank, endpoint.world_size
        self.capacity, self.dtype = endpoint.capacity, endpoint.buffer.dtype

    @property
    def bytes_sent(self) -> int:
        return self.endpoint.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.endpoint.bytes_received

    def allreduce_(self, x: np.ndarray, algorithm: str = "ring", shards: int = 1,
                   local_size: int | None = None) -> np.ndarray:
        """Replace ``x`` (any shape, this group's dtype) by its elementwise sum over all ranks; return x.

        algorithm : "ring", "ps" (with ``shards``) or "two_level" (with ``local_size`` ranks per node)
        """
        if not isinstance(x, np.ndarray) or x.dtype != self.dtype:
            raise TypeError(f"allreduce_ needs a numpy array of dtype {self.dtype} (the group's), got "
                            f"{type(x).__name__} {getattr(x, 'dtype', '')}")
        if x.size > self.capacity:
            raise ValueError(f"x has {x.size} elements but this group carries at most capacity = "
                             f"{self.capacity}; pass a larger capacity to launch()")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
        n = x.size
        self.endpoint.buffer[:n] = x.reshape(-1)
        if algorithm == "ps":
            ps_allreduce_(self.endpoint, n, shards)
        elif algorithm == "two_level":
            two_level_allreduce_(self.endpoint, n, local_size)
        else:
            ring_allreduce_(self.endpoint, n)
        x[...] = self.endpoint.buffer[:n].reshape(x.shape)
        return x

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        self.endpoint.barrier()

    def broadcast_(self, x: np.ndarray, root: int = 0) -> np.ndarray:
        """Replace ``x`` on every rank by root's ``x`` (e.g. the initial weights); return x."""
        n, P, r = x.size, self.world_size, self.rank
        if x.size > self.capacity or x.dtype != self.dtype:
            raise ValueError(f"broadcast_: x needs dtype {self.dtype} and at most {self.capacity} elements, "
                             f"got {x.dtype} and {x.size}")
        if r == root:
            self.endpoint.buffer[:n] = x.reshape(-1)
        got = self.endpoint.step(sends=[(q, 0, n) for q in range(P) if q != r] if r == root else [],
                                 recvs=[(root, n)] if r != root else [])
        if r != root:
            x[...] = got[0].reshape(x.shape)
        self.endpoint.fence()
        return x
