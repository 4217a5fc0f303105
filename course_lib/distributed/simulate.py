"""Replay the ring all-reduce in one process and record every step (for widgets and tests).

``simulate_ring_allreduce(arrays)`` runs the schedule of ``schedule.py`` on P
in-memory arrays, exactly as ``collectives.ring_allreduce_`` does between
processes (same chunks, same order of additions, so the same bits), and keeps

* ``buffers[t, r]``: rank r's whole array after step t (t = 0 is the input);
* ``contributions[t, r, c]``: how many ranks' inputs chunk c of rank r holds
  after step t: 1 everywhere at the start, P everywhere at the end. This is the
  colour of each chunk in the step-through figure.

Every step reads the state *before* the step (all ranks send at once), as real
processes do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from course_lib.checks import check_arrays

from .schedule import allgather_step, chunk_bounds, scatter_reduce_step


@dataclass
class RingTrace:
    """What ``simulate_ring_allreduce`` recorded; T = 2(P-1) + 1 states.

    buffers : ndarray, shape (T, P, N), every rank's array after every step
    contributions : int ndarray, shape (T, P, P), ranks summed into chunk c of rank r
    labels : list of T strings, "start", "scatter-reduce step 0", ..., "allgather step P-2"
    transfers : list of T lists of (src, dst, chunk); empty for "start"
    bounds : list of P (start, stop) chunk bounds
    """
    buffers: np.ndarray
    contributions: np.ndarray
    labels: list
    transfers: list
    bounds: list

    @property
    def outputs(self) -> np.ndarray:
        """Every rank's final array, shape (P, N)."""
        return self.buffers[-1]


def simulate_ring_allreduce(arrays) -> RingTrace:
    """Run the ring all-reduce on ``arrays`` (P arrays of the same shape) in one process.

    Parameters
    ----------
    arrays : sequence of P ndarrays of one shape and dtype (flattened to N elements)

    Returns
    -------
    RingTrace, whose ``outputs[r]`` is the elementwise sum (as a flat array) for every r.
    """
    flat = np.stack([a.reshape(-1) for a in check_arrays(arrays)])    # (P, N)
    P, N = flat.shape
    bounds = chunk_bounds(N, P)
    state, count = flat.copy(), np.ones((P, P), dtype=np.int64)       # count[r, c]
    buffers, contributions = [state.copy()], [count.copy()]
    labels, transfers = ["start"], [[]]
    for phase, step_fn in (("scatter-reduce", scatter_reduce_step), ("allgather", allgather_step)):
        for k in range(P - 1):
            before, count_before, moves = state.copy(), count.copy(), []
            for r in range(P):
                left = (r - 1) % P
                _, recv = step_fn(r, k, P)
                a, b = bounds[recv]
                if phase == "scatter-reduce":       # add the left neighbour's partial sum
                    np.add(state[r, a:b], before[left, a:b], out=state[r, a:b])
                    count[r, recv] = count_before[r, recv] + count_before[left, recv]
                else:                               # overwrite with the complete chunk
                    state[r, a:b] = before[left, a:b]
                    count[r, recv] = count_before[left, recv]
                moves.append((left, r, recv))
            buffers.append(state.copy())
            contributions.append(count.copy())
            labels.append(f"{phase} step {k}")
            transfers.append(moves)
    return RingTrace(np.stack(buffers), np.stack(contributions), labels, transfers, bounds)
