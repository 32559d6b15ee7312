"""A TCP fault proxy of our own, placed between a client and S3 or etcd.

Every connection accepted on the proxy's port is forwarded to the target. Each
direction is a reader thread (stamping chunks with the time they may leave)
and a sender thread, so faults model a network, not a slow reader:

- ``latency`` / ``jitter``: every chunk leaves ``latency + U(0, jitter)`` seconds
  after it arrived, in order;
- ``drip``: at most that many bytes per second per direction (a slow link);
- ``blackhole``: nothing is forwarded (data is held, as a partition holds
  packets) until healed; new connections are accepted and stall too;
- ``hold_replies``: requests reach the target, its replies are held (a reply
  lost on the way back, as the client sees it);
- ``reset_all()``: every open connection is torn down with a TCP RST;
  ``refuse``: new connections are reset as soon as they are accepted.

``heal()`` ends every fault; held data then flows on.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass

CHUNK = 64 * 1024


@dataclass
class Faults:
    latency: float = 0.0
    jitter: float = 0.0
    drip: int = 0  # bytes per second; 0 = unlimited
    blackhole: bool = False
    hold_replies: bool = False  # target -> client only
    refuse: bool = False


def _hard_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets an RST, not a FIN.

    ``shutdown(SHUT_RD)`` first wakes a thread blocked in ``recv`` on it (sending
    nothing), so the kernel socket is really released, and reset, by ``close``.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One proxied connection: client <-> target, two directions."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, target: socket.socket) -> None:
        self.proxy = proxy
        self.sockets = (client, target)
        self.closed = threading.Event()
        self._finished = 0  # directions that delivered their EOF
        self._finish_lock = threading.Lock()
        for src, dst in ((client, target), (target, client)):
            queue: deque[tuple[float, bytes]] = deque()
            cond = threading.Condition()
            for fn in (self._read, self._send):
                threading.Thread(
                    target=fn, args=(src, dst, queue, cond), daemon=True, name="faultproxy"
                ).start()

    def _read(self, src: socket.socket, dst: socket.socket, queue: deque, cond) -> None:
        rng = random.Random()
        while not self.closed.is_set():
            try:
                data = src.recv(CHUNK)
            except OSError:
                self.close(hard=True)  # a reset on one side resets the other
                return
            f = self.proxy.faults
            with cond:
                if not data:
                    queue.append((0.0, b""))  # EOF marker, after everything before it
                    cond.notify()
                    return
                delay = f.latency + (rng.uniform(0, f.jitter) if f.jitter else 0.0)
                due = max(time.monotonic() + delay, queue[-1][0] if queue else 0.0)
                queue.append((due, data))
                cond.notify()

    def _send(self, src: socket.socket, dst: socket.socket, queue: deque, cond) -> None:
        while not self.closed.is_set():
            with cond:
                while not queue and not self.closed.is_set():
                    cond.wait(0.1)
                if self.closed.is_set():
                    return
                due, data = queue[0]
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                with self._finish_lock:
                    self._finished += 1
                    both = self._finished == 2
                if both:
                    self.close(hard=False)
                return
            if not self.proxy.wait_passable(self.closed, reply=src is self.sockets[1]):
                return
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                self._deliver(dst, data)
            except OSError:
                self.close(hard=True)
                return
            with cond:
                queue.popleft()

    def _deliver(self, dst: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            rate = self.proxy.faults.drip
            piece = view if not rate else view[: max(1, rate // 20)]
            dst.sendall(piece)
            self.proxy.count(len(piece))
            view = view[len(piece) :]
            if rate:
                time.sleep(len(piece) / rate)
            if not self.proxy.wait_passable(self.closed, reply=dst is self.sockets[0]):
                return

    def close(self, *, hard: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in self.sockets:
            if hard:
                _hard_close(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()


class FaultProxy:
    """``FaultProxy("127.0.0.1", 8333)``; clients connect to ``proxy.endpoint``."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.faults = Faults()
        self.forwarded = 0
        self.connections = 0
        self.resets = 0
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._passable = threading.Condition()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="faultproxy-accept").start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.faults.refuse:
                self.resets += 1
                _hard_close(client)
                continue
            try:
                target = socket.create_connection(self.target, timeout=5)
                target.settimeout(None)
            except OSError:
                _hard_close(client)
                continue
            for sock in (client, target):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._links = [link for link in self._links if not link.closed.is_set()]
                self._links.append(_Link(self, client, target))

    def count(self, forwarded: int) -> None:
        with self._lock:
            self.forwarded += forwarded

    def wait_passable(self, closed: threading.Event, *, reply: bool) -> bool:
        """Block while this direction is held; False if the connection closed meanwhile."""
        with self._passable:
            while (
                self.faults.blackhole or (reply and self.faults.hold_replies)
            ) and not closed.is_set():
                self._passable.wait(0.1)
        return not closed.is_set()

    def set(self, **faults: object) -> None:
        """Replace the active faults: ``set(latency=0.2, jitter=0.1)``, ``set(blackhole=True)``."""
        with self._passable:
            self.faults = Faults(**faults)  # type: ignore[arg-type]
            self._passable.notify_all()

    def heal(self) -> None:
        self.set()

    def reset_all(self) -> int:
        """Tear down every open connection with an RST; returns how many."""
        with self._lock:
            links, self._links = self._links, []
        live = [link for link in links if not link.closed.is_set()]
        for link in live:
            link.close(hard=True)
        self.resets += len(live)
        return len(live)

    def close(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.heal()
        self.reset_all()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
