"""A transport over TCP: the kit's own collectives across machines, unchanged.

Not the lecture. ``ring_allreduce_`` and ``two_level_allreduce_`` ask a transport
for one thing, ``endpoint.step(sends, recvs)`` (``course_lib.machinery.transport``
states the contract). The pipe and shared-memory transports need one machine and
a parent process; this one needs only an address that every rank can reach, so
each rank can be started by hand on a machine of its own::

    # on 10.0.0.1                                         # on the other machine
    python -m course_lib.machinery.sockets --rank 0 \\      python -m course_lib.machinery.sockets --rank 1 \\
        --world-size 2 --master 10.0.0.1:29600                --world-size 2 --master 10.0.0.1:29600

**Rendezvous.** Rank 0 listens on the master address. Every rank opens a listening
socket of its own (any free port), connects to rank 0 and says who it is; rank 0
answers, once all P ranks have come, with the table of every rank's address (the
address rank 0 saw it come from, and its port). Then each rank connects to the ranks
below it and accepts the ranks above: one TCP connection per pair, kept open.

**A step.** Each message is a 16-byte header (step number, bytes) and the raw bytes of
the buffer region, never pickled. A thread sends while the main thread reads whichever
connection has data, so no order of messages deadlocks (lesson 7, section 4). A header
that does not match what the receiver expects, a peer that closed its connection, and
a rank that does not join or answer within ``timeout`` seconds raise an error naming
the rank.

``python -m course_lib.machinery.sockets`` all-reduces a seeded array on every rank and
checks the sum (each rank can compute every rank's input from its seed).
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import sys
import threading
import time

import numpy as np

from course_lib.machinery.transport import check_step

HEADER = struct.Struct("!qq")          # (step, nbytes) before every message


def _read_exact(sock: socket.socket, nbytes: int, who: str) -> bytes:
    """Exactly ``nbytes`` from ``sock`` (blocking, within the socket's timeout)."""
    data = bytearray()
    while len(data) < nbytes:
        chunk = sock.recv(nbytes - len(data))
        if not chunk:
            raise ConnectionError(f"{who} closed its connection")
        data += chunk
    return bytes(data)


def _send_line(sock: socket.socket, obj) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def _read_line(sock: socket.socket, who: str):
    data = bytearray()
    while not data.endswith(b"\n"):
        data += _read_exact(sock, 1, who)
    return json.loads(data)


def _connect(host: str, port: int, deadline: float, who: str) -> socket.socket:
    """Connect, retrying until ``deadline`` (the peer may not be listening yet)."""
    while True:
        try:
            return socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
        except OSError as err:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not reach {who} at {host}:{port}: {err}") from None
            time.sleep(0.1)


def _gather_at_master(master: tuple[str, int], world_size: int, my_port: int, timeout: float):
    """Rank 0: accept every other rank; return ({rank: socket}, the address table)."""
    server = socket.create_server(master, reuse_port=False)
    server.settimeout(timeout)
    links, table = {}, {0: [master[0], my_port]}
    try:
        while len(links) < world_size - 1:
            try:
                sock, (host, _) = server.accept()
            except TimeoutError:
                missing = sorted(set(range(1, world_size)) - set(links))
                raise TimeoutError(f"rank 0: rank(s) {missing} did not join within {timeout:g} s "
                                   f"(started? the right --master and --world-size?)") from None
            sock.settimeout(timeout)
            hello = _read_line(sock, "a joining rank")
            links[hello["rank"]] = sock
            table[hello["rank"]] = [host, hello["port"]]
    finally:
        server.close()
    for sock in links.values():
        _send_line(sock, {str(r): address for r, address in table.items()})
    return links


class SocketEndpoint:
    """One rank's end of the TCP transport: ``buffer``, ``step``, ``fence``, ``barrier``, ``close``.

    rank, world_size : this rank and P;  master : "host:port" of rank 0 (it listens there)
    capacity, dtype : the buffer, (capacity,) of dtype, private to this rank
    timeout : seconds to wait for the rendezvous and for any one message
    """

    def __init__(self, rank: int, world_size: int, master: str, capacity: int, dtype=np.float32,
                 timeout: float = 60.0):
        host, port = master.rsplit(":", 1)
        self.rank, self.world_size, self.timeout = int(rank), int(world_size), float(timeout)
        self.capacity, self.buffer = int(capacity), np.zeros(int(capacity), dtype)
        self.itemsize, self.steps, self.bytes_sent, self.bytes_received = self.buffer.itemsize, 0, 0, 0
        self._scratch: dict[int, np.ndarray] = {}
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank = {rank} must be in 0 .. world_size - 1 = {world_size - 1}")
        self.links = self._rendezvous((host, int(port))) if self.world_size > 1 else {}

    def _rendezvous(self, master: tuple[str, int]) -> dict[int, socket.socket]:
        deadline = time.monotonic() + self.timeout
        listener = socket.create_server(("", 0))
        listener.settimeout(self.timeout)
        try:
            if self.rank == 0:
                links = _gather_at_master(master, self.world_size, listener.getsockname()[1], self.timeout)
                return links
            to_master = _connect(*master, deadline, "rank 0 (the master)")
            to_master.settimeout(self.timeout)
            _send_line(to_master, {"rank": self.rank, "port": listener.getsockname()[1]})
            try:
                table = _read_line(to_master, "rank 0 (the master)")
            except (TimeoutError, ConnectionError) as err:
                raise TimeoutError(f"rank {self.rank}: rank 0 sent no address table within {self.timeout:g} s "
                                   f"({err}): not every rank joined it (all started, the same --world-size?)"
                                   ) from None
            links = {0: to_master}
            for peer in range(1, self.rank):                 # connect to the ranks below ...
                sock = _connect(*table[str(peer)], deadline, f"rank {peer}")
                sock.sendall(HEADER.pack(self.rank, 0))
                links[peer] = sock
            while len(links) < self.world_size - 1:          # ... accept the ranks above
                sock, _ = listener.accept()
                peer, _ = HEADER.unpack(_read_exact(sock, HEADER.size, "a peer"))
                links[peer] = sock
            return links
        finally:
            listener.close()

    def step(self, sends=(), recvs=()) -> list[np.ndarray]:
        """Send regions of ``buffer`` and receive arrays, all at once (transport.py's contract)."""
        check_step(self, sends, recvs)
        self.steps += 1
        sends = [s for s in sends if s[2] > s[1]]
        errors: list[BaseException] = []
        sender = threading.Thread(target=self._send_all, args=(sends, errors), daemon=True)
        sender.start()
        received = self._receive([(src, count) for src, count in recvs if count > 0])
        sender.join(self.timeout)
        if sender.is_alive() or errors:
            raise ConnectionError(f"rank {self.rank}: sending to rank(s) {[d for d, _, _ in sends]} at step "
                                  f"{self.steps - 1} failed ({errors[0] if errors else 'timed out'}); did a peer die?")
        self.bytes_sent += sum(stop - start for _, start, stop in sends) * self.itemsize
        self.bytes_received += sum(count for _, count in recvs) * self.itemsize
        return [received[src] if count > 0 else self.buffer[:0] for src, count in recvs]

    def _send_all(self, sends, errors: list) -> None:
        try:
            for dst, start, stop in sends:
                payload = memoryview(self.buffer[start:stop]).cast("B")
                self.links[dst].sendall(HEADER.pack(self.steps - 1, len(payload)))
                self.links[dst].sendall(payload)
        except OSError as err:
            errors.append(err)

    def _receive(self, recvs) -> dict[int, np.ndarray]:
        """Read each expected message from whichever connection has data: {src: array (count,)}."""
        selector, out = selectors.DefaultSelector(), {}
        for src, count in recvs:
            if self._scratch.get(src, self.buffer[:0]).size < count:
                self._scratch[src] = np.empty(count, self.buffer.dtype)
            out[src] = self._scratch[src][:count]
            selector.register(self.links[src], selectors.EVENT_READ, [src, None, 0])   # src, header, offset
        try:
            while selector.get_map():
                ready = selector.select(self.timeout)
                if not ready:
                    waiting = sorted(key.data[0] for key in selector.get_map().values())
                    raise TimeoutError(f"rank {self.rank}: no data from rank(s) {waiting} at step "
                                       f"{self.steps - 1} within {self.timeout:g} s")
                for key, _ in ready:
                    if self._read_some(key.fileobj, key.data, out[key.data[0]]):
                        selector.unregister(key.fileobj)
        finally:
            selector.close()
        return out

    def _read_some(self, sock: socket.socket, state: list, view: np.ndarray) -> bool:
        """Advance one message by what ``sock`` has; True when it is complete."""
        src = state[0]
        if state[1] is None:                                  # the header first
            step, nbytes = HEADER.unpack(_read_exact(sock, HEADER.size, f"rank {src}"))
            if (step, nbytes) != (self.steps - 1, view.nbytes):
                raise RuntimeError(f"rank {self.rank} expected {view.nbytes} bytes of step {self.steps - 1} "
                                   f"from rank {src}, which sent {nbytes} bytes of step {step}")
            state[1] = (step, nbytes)
            return view.nbytes == 0
        got = sock.recv_into(memoryview(view).cast("B")[state[2]:])
        if got == 0:
            raise ConnectionError(f"rank {self.rank}: rank {src} closed its connection mid-message (it died?)")
        state[2] += got
        return state[2] == view.nbytes

    def fence(self) -> None:
        """Nothing to wait for: a step returns once its sends are in the kernel's buffers."""

    def barrier(self) -> None:
        """Every rank tells rank 0 it is here; rank 0 answers all once everyone is."""
        if self.rank == 0:
            for peer, sock in self.links.items():
                if HEADER.unpack(_read_exact(sock, HEADER.size, f"rank {peer}")) != (-1, 0):
                    raise RuntimeError(f"rank 0: rank {peer} sent data where the barrier expected it")
            for sock in self.links.values():
                sock.sendall(HEADER.pack(-2, 0))
        elif self.links:
            self.links[0].sendall(HEADER.pack(-1, 0))
            if HEADER.unpack(_read_exact(self.links[0], HEADER.size, "rank 0")) != (-2, 0):
                raise RuntimeError(f"rank {self.rank}: rank 0 sent data where the barrier expected it")

    def close(self) -> None:
        for sock in self.links.values():
            sock.close()
        self.links = {}


def _inputs(world_size: int, N: int) -> list[np.ndarray]:
    """Every rank's input, rank r's from seed r: each rank can check the sum by itself."""
    return [np.random.default_rng(r).standard_normal(N).astype(np.float32) for r in range(world_size)]


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m course_lib.machinery.sockets", description=(
        "One rank of the kit's all-reduce over TCP: start one per machine (or several on one), the same "
        "--world-size and --master everywhere; each checks the sum and its bytes."))
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--master", required=True, help="host:port of rank 0 (rank 0 listens there)")
    parser.add_argument("--elements", type=int, default=1 << 20, help="N, float32 elements per rank")
    parser.add_argument("--local-size", type=int, default=None,
                        help="ranks per node: two_level_allreduce_ (default: the flat ring)")
    parser.add_argument("--timeout", type=float, default=60.0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from course_lib.distributed.collectives import ring_allreduce_, two_level_allreduce_
    from course_lib.distributed.cost import ring_bytes_per_rank, two_level_bytes_per_rank

    args = _parse(argv)
    P, N, r = args.world_size, args.elements, args.rank
    try:
        ep = SocketEndpoint(r, P, args.master, N, np.float32, timeout=args.timeout)
    except (OSError, ValueError) as err:
        print(err if str(err).startswith(f"rank {r}:") else f"rank {r}: {err}", file=sys.stderr)
        return 1
    inputs = _inputs(P, N)                               # every rank's, to check the sum
    try:
        ep.buffer[:] = inputs[r]
        ep.barrier()
        start = time.perf_counter()
        if args.local_size:
            two_level_allreduce_(ep, N, args.local_size)
            formula = int(sum(b[r] for b in two_level_bytes_per_rank(N, P, args.local_size, itemsize=4)))
        else:
            ring_allreduce_(ep, N)
            formula = int(ring_bytes_per_rank(N, P, itemsize=4)[r])
        seconds = time.perf_counter() - start
        error = float(np.abs(ep.buffer - np.sum(np.array(inputs, dtype=np.float64), axis=0)).max())
    except (OSError, RuntimeError) as err:
        print(err if str(err).startswith(f"rank {r}:") else f"rank {r}: {err}", file=sys.stderr)
        return 1
    finally:
        ep.close()
    ok = error < 1e-4 * P and ep.bytes_sent == formula
    print(f"rank {r}: {'two-level' if args.local_size else 'ring'} all-reduce of {N} float32 over {P} ranks by "
          f"TCP: {'correct' if ok else 'WRONG'} (max |error| {error:.1e}), sent {ep.bytes_sent} bytes "
          f"(formula {formula}), {1e3 * seconds:.1f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
