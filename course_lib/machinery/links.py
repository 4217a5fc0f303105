"""Links that cost time: a fast link inside a node, a slow one between nodes, on one machine.

Not the lecture. Lesson 7's two-level all-reduce only wins when the link between
nodes is slower than the links inside one; on a laptop every "link" is memory.
``with_links(fn, local_size, intra, inter)`` wraps a collective written on
``endpoint.step`` so that, before each step, every rank waits what its messages
would cost on such links, the alpha-beta model of ``course_lib.distributed.cost``:
``alpha + nbytes * beta`` per message, with ``(alpha, beta) = intra`` when the
receiver is in the sender's node (rank // local_size) and ``inter`` when not.
A rank's messages in one step go one after another (they add up).

Run under ``course_lib.machinery.recording.run_recorded`` (one thread per rank, a
barrier per step), a step then lasts as long as its slowest rank's messages: what
the model assumes. The waiting is ``time.sleep``, so the measured time is the
emulated network's plus the real (small) cost of copying and adding: an
emulation, not a network measurement, and it says so wherever it is shown.
"""

from __future__ import annotations

import time


class ChargedEndpoint:
    """An endpoint whose ``step`` first sleeps for the cost of the messages it sends."""

    def __init__(self, endpoint, local_size: int, intra: tuple[float, float], inter: tuple[float, float]):
        self.endpoint, self.local_size, self.intra, self.inter = endpoint, local_size, intra, inter
        self.rank, self.world_size, self.buffer = endpoint.rank, endpoint.world_size, endpoint.buffer

    def cost(self, sends) -> float:
        """Seconds the messages ``sends`` [(dst, start, stop)] take, one after another."""
        itemsize, seconds = self.buffer.itemsize, 0.0
        for dst, start, stop in sends:
            if stop > start:
                same_node = dst // self.local_size == self.rank // self.local_size
                alpha, beta = self.intra if same_node else self.inter
                seconds += alpha + (stop - start) * itemsize * beta
        return seconds

    def step(self, sends=(), recvs=()):
        time.sleep(self.cost(sends))
        return self.endpoint.step(sends, recvs)

    def fence(self) -> None:
        self.endpoint.fence()


def with_links(fn, local_size: int, intra: tuple[float, float], inter: tuple[float, float]):
    """``fn(endpoint, count, ...)`` run on ``ChargedEndpoint``s: the same collective on emulated links."""
    def on_links(endpoint, count, *args, **kwargs):
        return fn(ChargedEndpoint(endpoint, local_size, intra, inter), count, *args, **kwargs)
    on_links.__name__ = f"{getattr(fn, '__name__', 'collective')}_on_links"
    return on_links
