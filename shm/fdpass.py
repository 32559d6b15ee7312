"""Framed messages, optionally carrying file descriptors, over a Unix stream socket.

A frame is a 4-byte little-endian payload length followed by the payload. File
descriptors (SCM_RIGHTS) ride on the first byte of their frame: the kernel
delivers them with the read that returns that byte and never lets one read
span two descriptor-carrying sends, so the receiver can tell which frame they
belong to. This is how arena memfds reach other processes without a name
anywhere in a file system.
"""

from __future__ import annotations

import array
import os
import socket
import struct
from collections import deque
from collections.abc import Sequence

MAX_FRAME = 16 * 1024 * 1024
"""Largest payload in one frame; a bigger length is a protocol error."""

MAX_FDS = 8
"""Most descriptors one frame may carry (the receiver reserves room for this many)."""

_HEADER = struct.Struct("<I")
_ANCBUF = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_RECV_FLAGS = socket.MSG_CMSG_CLOEXEC  # received fds must not leak into exec'd children


def send_msg(sock: socket.socket, payload: bytes, fds: Sequence[int] = ()) -> None:
    """Send one frame, with ``fds`` attached to its first byte.

    For blocking sockets (or sockets with a timeout): partial writes are
    completed before returning. The fds stay open in this process.
    """
    size = len(payload)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
    if len(fds) > MAX_FDS:
        raise ValueError(f"{len(fds)} fds in one frame exceed the limit of {MAX_FDS}")
    header = _HEADER.pack(size)
    if not fds:
        sock.sendall(header + payload)  # one small copy beats a two-buffer sendmsg
        return
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    sent = sock.sendmsg([header, payload], ancillary)
    if sent < len(header):
        sock.sendall(header[sent:])
        sock.sendall(payload)
    elif sent < len(header) + size:
        sock.sendall(memoryview(payload)[sent - len(header) :])


def recv_msg(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Receive one frame from a blocking socket: ``(payload, fds)``.

    The caller owns the returned fds. Raises ``EOFError`` when the peer closed
    between frames and ``ConnectionError`` when it closed inside one. Reads
    never go past the end of the frame, so this can be mixed with other
    readers of the same socket between frames.
    """
    fds: list[int] = []
    try:
        header = b""
        while len(header) < _HEADER.size:
            data, ancdata, flags, _ = sock.recvmsg(_HEADER.size - len(header), _ANCBUF, _RECV_FLAGS)
            fds += _fds_from(ancdata, flags)
            if not data:
                if header:
                    raise ConnectionError("peer closed the socket inside a frame header")
                raise EOFError("peer closed the socket")
            header += data
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ValueError(f"incoming frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
        return _recv_exact(sock, size), fds
    except BaseException:
        _close_all(fds)
        raise


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    if size == 0:
        return b""
    data = sock.recv(size, socket.MSG_WAITALL)
    if len(data) == size:
        return data
    buf = bytearray(data)
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError(f"peer closed the socket after {len(buf)} of {size} bytes")
        buf += chunk
    return bytes(buf)


def _fds_from(ancdata: list[tuple[int, int, bytes]], flags: int) -> list[int]:
    """Descriptors in one read's ancillary data; ConnectionError if some were dropped."""
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if flags & socket.MSG_CTRUNC:
        _close_all(fds)
        raise ConnectionError(f"peer sent more than {MAX_FDS} fds with one frame")
    return fds.tolist()


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


class FrameReader:
    """Incremental frame decoder for a non-blocking socket in a selector loop.

    Call :meth:`feed_from` whenever the socket is readable. One ``recvmsg``
    per call (the selector calls again while data remains), into a reusable
    buffer: complete frames are sliced out by offset and only the unfinished
    tail is ever moved, so the cost is linear in the bytes received.
    """

    def __init__(self, bufsize: int = 256 * 1024) -> None:
        """``bufsize``: the normal buffer; it grows for a larger frame, then shrinks back."""
        self._bufsize = max(bufsize, 4096)
        self._buf = bytearray(self._bufsize)
        self._view = memoryview(self._buf)
        self._start = 0  # first unconsumed byte
        self._end = 0  # end of received bytes
        self._base = 0  # stream position of self._buf[0]
        # (stream position of the first and the last byte of the read that
        # carried them, fds) for frames not yet complete
        self._pending: deque[tuple[int, int, list[int]]] = deque()

    def feed_from(self, sock: socket.socket) -> list[tuple[bytes, list[int]]]:
        """Read what is available; return the frames it completed, with their fds.

        The caller owns the returned fds. Raises ``EOFError`` when the peer
        closed between frames, ``ConnectionError`` when it closed inside one
        (or broke the fd protocol), ``ValueError`` on an oversized frame.
        """
        self._make_room()
        try:
            size, ancdata, flags, _ = sock.recvmsg_into(
                [self._view[self._end :]], _ANCBUF, _RECV_FLAGS
            )
        except BlockingIOError:
            return []
        try:
            fds = _fds_from(ancdata, flags) if ancdata or flags & socket.MSG_CTRUNC else []
            if fds:
                first = self._base + self._end
                self._pending.append((first, first + size - 1, fds))
            if size == 0:
                if self._end > self._start or self._pending:
                    raise ConnectionError("peer closed the socket inside a frame")
                raise EOFError("peer closed the socket")
        except BaseException:
            self.close()
            raise
        self._end += size
        return self._parse()

    def close(self) -> None:
        """Drop buffered data and close fds of unfinished frames (after an error, or when done)."""
        for _, _, fds in self._pending:
            _close_all(fds)
        self._pending.clear()
        self._base += self._end
        self._start = self._end = 0

    def _parse(self) -> list[tuple[bytes, list[int]]]:
        frames: list[tuple[bytes, list[int]]] = []
        buf, view, start, end = self._buf, self._view, self._start, self._end
        unpack = _HEADER.unpack_from
        try:
            while end - start >= 4:
                (size,) = unpack(buf, start)
                if size > MAX_FRAME:
                    raise ValueError(
                        f"incoming frame of {size} bytes exceeds the {MAX_FRAME}-byte limit"
                    )
                stop = start + 4 + size
                if stop > end:
                    break
                fds = self._fds_for(start, stop) if self._pending else []
                frames.append((bytes(view[start + 4 : stop]), fds))
                start = stop
        except BaseException:
            for _, fds in frames:
                _close_all(fds)
            self.close()
            raise
        if start == end:
            self._base += end
            start = self._end = 0
            if len(buf) > self._bufsize:
                self._resize(self._bufsize)
        self._start = start
        return frames

    def _fds_for(self, start: int, stop: int) -> list[int]:
        """The fds of the frame at buffer ``[start, stop)``.

        They came with the read whose last byte lies inside this frame, and
        that read must also hold the frame's first byte.
        """
        first, after = self._base + start, self._base + stop
        fds: list[int] = []
        while self._pending and self._pending[0][1] < after:
            read_first, _, got = self._pending.popleft()
            fds += got
            if first < read_first:
                _close_all(fds)
                raise ConnectionError("fds arrived in the middle of a frame")
        return fds

    def _make_room(self) -> None:
        """Move the unfinished frame to the front; grow if it cannot fit."""
        start, end = self._start, self._end
        if start:
            self._view[: end - start] = self._view[start:end]
            self._base += start
            self._start, self._end = 0, end - start
        if self._end >= 4:
            (size,) = _HEADER.unpack_from(self._buf, 0)
            if 4 + size > len(self._buf):
                self._resize(4 + size)

    def _resize(self, size: int) -> None:
        buf = bytearray(size)
        buf[: self._end] = self._view[: self._end]
        self._buf, self._view = buf, memoryview(buf)


class FrameWriter:
    """Outgoing frames of a non-blocking socket in a selector loop.

    The loop must never wait on one peer: a peer that stops reading would stall
    every other. Frames the socket cannot take now are queued; the loop calls
    :meth:`flush` when the socket is writable (watch it while :attr:`pending`).
    The queue is bounded: a peer more than ``limit`` bytes behind is broken.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._queue = bytearray()

    @property
    def pending(self) -> int:
        """Bytes queued, not yet taken by the socket."""
        return len(self._queue)

    def push(self, sock: socket.socket, payload: bytes) -> None:
        """Queue one frame (no fds) and send what the socket takes now.

        Raises ``OverflowError`` past the limit, ``OSError`` if the socket broke.
        """
        if len(payload) > MAX_FRAME:
            raise ValueError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME}-byte limit")
        was_empty = not self._queue
        self._queue += _HEADER.pack(len(payload))
        self._queue += payload
        if len(self._queue) > self._limit:
            raise OverflowError(
                f"the peer is {len(self._queue)} bytes behind (limit {self._limit}): "
                "it does not read what it is sent"
            )
        if was_empty:
            self.flush(sock)

    def flush(self, sock: socket.socket) -> None:
        """Send as much of the queue as the socket takes without blocking."""
        while self._queue:
            try:
                sent = sock.send(self._queue)
            except BlockingIOError:
                return
            del self._queue[:sent]
