"""shm: memfd arenas shared across processes, the ring allocator, framed fd passing."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shm import (
    ALIGN,
    MAX_FDS,
    MAX_FRAME,
    Arena,
    FrameReader,
    FrameWriter,
    RingAllocator,
    recv_msg,
    send_msg,
)

ROOT = Path(__file__).resolve().parents[2]

# One script, three roles, run as `python -c CHILD <role> <socket fd> [arena name]`.
CHILD = r"""
import json, os, socket, sys, time
from shm import Arena, recv_msg, send_msg

role, sock = sys.argv[1], socket.socket(fileno=int(sys.argv[2]))
if role == "create":
    arena = Arena.create(1 << 20, name=sys.argv[3])
    arena.writable_view(0, 5)[:] = b"hello"
    send_msg(sock, json.dumps({"size": arena.size}).encode(), [arena.fd])
    print(json.dumps({"fd": arena.fd}), flush=True)
    time.sleep(60)
meta, fds = recv_msg(sock)
meta = json.loads(meta)
arena = Arena.attach(fds[0], meta["size"], writable=True)
link = os.readlink(f"/proc/self/fd/{fds[0]}")
if role == "hold":
    print(json.dumps({"fd": fds[0], "link": link, "data": bytes(arena.view(0, 5)).hex()}),
          flush=True)
    time.sleep(60)
data = bytes(arena.view(meta["offset"], meta["length"]))
arena.writable_view(meta["reply_offset"], len(data))[:] = data[::-1]
send_msg(sock, json.dumps({"link": link, "data": data.hex()}).encode())
try:
    recv_msg(sock)
except EOFError:
    arena.close()
"""


def _child(role: str, sock: socket.socket, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, role, str(sock.fileno()), *args],
        pass_fds=[sock.fileno()],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _open_fds() -> set[str]:
    """Open descriptors of this process (without the one that listed them)."""
    return {fd for fd in os.listdir("/proc/self/fd") if _is_open(int(fd))}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _shm_entries() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if "woodpecker" in n}
    except FileNotFoundError:
        return set()


def _holders(name: str) -> list[str]:
    """Every fd or mapping of a process visible to us whose target mentions ``name``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if name in os.readlink(f"/proc/{pid}/fd/{fd}"):
                        found.append(f"{pid} fd {fd}")
                except OSError:
                    continue
            if name in Path(f"/proc/{pid}/maps").read_text():
                found.append(f"{pid} maps")
        except OSError:
            continue
    return found


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        yield a, b


# --- Arena -----------------------------------------------------------------------------------


def test_arena_write_then_read_zero_copy() -> None:
    with Arena.create(1 << 20) as arena:
        assert arena.size == 1 << 20 and arena.writable
        view = arena.view(4096, 11)
        assert view.readonly and bytes(view) == bytes(11)
        arena.writable_view(4096, 11)[:] = b"hello world"
        assert bytes(view) == b"hello world"  # the earlier view sees it: same memory
        view.release()


def test_arena_is_a_private_sealed_memfd() -> None:
    with Arena.create(8192, name="woodpecker-test") as arena:
        assert os.readlink(f"/proc/self/fd/{arena.fd}").startswith("/memfd:woodpecker-test")
        assert os.fstat(arena.fd).st_mode & 0o777 == 0o600
        assert fcntl.fcntl(arena.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        with pytest.raises(PermissionError):
            os.ftruncate(arena.fd, 4096)


@pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, -1), (8000, 193), (8193, 0)])
def test_arena_views_are_bounds_checked(offset: int, length: int) -> None:
    with Arena.create(8192) as arena:
        with pytest.raises(ValueError, match="outside the arena"):
            arena.view(offset, length)
        with pytest.raises(ValueError, match="outside the arena"):
            arena.writable_view(offset, length)
        assert bytes(arena.view(8192, 0)) == b""


def test_arena_close_is_idempotent() -> None:
    fds = _open_fds()
    arena = Arena.create(4096)
    arena.close()
    arena.close()
    assert arena.closed and _open_fds() == fds
    with pytest.raises(ValueError, match="closed"):
        arena.view(0, 1)


def test_arena_close_with_a_live_view_closes_the_fd_and_keeps_the_view_valid() -> None:
    arena = Arena.create(4096)
    arena.writable_view(0, 3)[:] = b"abc"
    view = arena.view(0, 3)
    with pytest.warns(ResourceWarning):
        arena.close()
    assert str(arena.fd) not in _open_fds()
    assert bytes(view) == b"abc"  # still mapped until released
    view.release()


def test_attach_read_only_shares_memory() -> None:
    with Arena.create(4096) as owner, Arena.attach(os.dup(owner.fd), 4096) as peer:
        owner.writable_view(10, 3)[:] = b"xyz"
        assert bytes(peer.view(10, 3)) == b"xyz"
        with pytest.raises(ValueError, match="read-only"):
            peer.writable_view(0, 1)


def test_attach_rejects_what_is_not_a_sealed_arena() -> None:
    fds = _open_fds()
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(ValueError, match="not a memfd"):
        Arena.attach(r, 4096)
    unsealed = os.memfd_create("woodpecker-unsealed")
    os.ftruncate(unsealed, 4096)
    with pytest.raises(ValueError, match="not sealed"):
        Arena.attach(unsealed, 4096)
    with Arena.create(4096) as arena, pytest.raises(ValueError, match="fewer than"):
        Arena.attach(os.dup(arena.fd), 8192)
    assert _open_fds() == fds  # attach took ownership and closed them


def test_child_process_attaches_reads_and_writes_back(pair: tuple[socket.socket, ...]) -> None:
    mine, theirs = pair
    with Arena.create(1 << 20, name="woodpecker-child-test") as arena:
        arena.writable_view(1000, 9)[:] = b"from-prod"
        with _child("echo", theirs) as child:
            theirs.close()
            try:
                meta = {"size": arena.size, "offset": 1000, "length": 9, "reply_offset": 5000}
                send_msg(mine, json.dumps(meta).encode(), [arena.fd])
                reply = json.loads(recv_msg(mine)[0])
                assert reply["link"].startswith("/memfd:woodpecker-child-test")
                assert bytes.fromhex(reply["data"]) == b"from-prod"
                assert bytes(arena.view(5000, 9)) == b"dorp-morf"
            finally:
                mine.shutdown(socket.SHUT_RDWR)
                assert child.wait(timeout=10) == 0


def test_kill_9_of_every_holder_frees_the_arena(pair: tuple[socket.socket, ...]) -> None:
    name = f"woodpecker-kill-{uuid.uuid4().hex[:8]}"
    before = _shm_entries()
    a, b = pair
    creator, holder = _child("create", a, name), _child("hold", b)
    a.close()
    b.close()
    try:
        assert creator.stdout and holder.stdout
        created = json.loads(creator.stdout.readline())
        held = json.loads(holder.stdout.readline())
        link = os.readlink(f"/proc/{creator.pid}/fd/{created['fd']}")
        assert link.startswith(f"/memfd:{name}")
        assert held["link"] == link and bytes.fromhex(held["data"]) == b"hello"
        assert name in Path(f"/proc/{holder.pid}/maps").read_text()
        assert not _shm_entries() - before
    finally:
        for proc in (creator, holder):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.stdout
            proc.stdout.close()
    assert creator.returncode == holder.returncode == -signal.SIGKILL
    assert not Path(f"/proc/{creator.pid}/fd").exists()
    assert _holders(name) == []  # no fd, no mapping anywhere: the kernel freed it
    assert not _shm_entries() - before


# --- RingAllocator ---------------------------------------------------------------------------


def test_allocator_aligns_and_rejects_bad_requests() -> None:
    ring = RingAllocator(100)
    assert ring.capacity == 96
    assert [ring.alloc(1), ring.alloc(8), ring.alloc(9)] == [0, 8, 16]
    assert ring.used == 32 and ring.free_bytes == 64
    for bad in (0, -1, 97):
        with pytest.raises(ValueError):
            ring.alloc(bad)
    ring.free(8)
    for bad in (8, 4, 1000):
        with pytest.raises(ValueError, match="not allocated"):
            ring.free(bad)
    with pytest.raises(ValueError):
        RingAllocator(7)


def test_allocator_reclaims_out_of_order_frees_at_the_tail() -> None:
    ring = RingAllocator(64)
    a, b, c = ring.alloc(16), ring.alloc(16), ring.alloc(16)
    assert (a, b, c) == (0, 16, 32)
    ring.free(b)
    assert ring.used == 48  # b is behind a: not reclaimed yet
    ring.free(a)
    assert ring.used == 16 and ring.free_bytes == 48
    ring.free(c)
    assert ring.used == 0 and ring.alloc(64) == 0


def test_allocator_wraps_when_the_end_is_too_small() -> None:
    ring = RingAllocator(64)
    a, b = ring.alloc(24), ring.alloc(24)
    ring.free(a)
    assert ring.alloc(24) == 0  # 16 bytes left at the end: wrap
    assert ring.alloc(8) is None and ring.free_bytes == 0
    ring.free(b)  # the skipped end comes back with b
    assert ring.free_bytes == 40 and ring.alloc(40) == 24
    assert ring.alloc(1) is None


class RingModel(RuleBasedStateMachine):
    """The allocator against a model that tracks regions in allocation order."""

    @initialize(size=st.integers(ALIGN, 160))
    def start(self, size: int) -> None:
        self.ring = RingAllocator(size)
        self.cap = size // ALIGN * ALIGN
        self.order: list[list[int]] = []  # [offset, aligned size, freed], oldest first

    def _pieces(self) -> list[tuple[int, int]]:
        """Free (start, end) ranges: everything between the newest and the oldest region."""
        if not self.order:
            return [(0, self.cap)]
        tail, head = self.order[0][0], self.order[-1][0] + self.order[-1][1]
        return [(head, self.cap), (0, tail)] if head > tail else [(head, tail)]

    @rule(n=st.integers(1, 48) | st.integers(-1, 170))
    def alloc(self, n: int) -> None:
        size = -(-n // ALIGN) * ALIGN
        if n <= 0 or size > self.cap:
            with pytest.raises(ValueError):
                self.ring.alloc(n)
            return
        fits = [start for start, end in self._pieces() if end - start >= size]
        offset = self.ring.alloc(n)
        if offset is None:
            assert not fits
            return
        assert offset == fits[0] and offset % ALIGN == 0 and offset + size <= self.cap
        for other, other_size, freed in self.order:
            assert freed or offset + size <= other or other + other_size <= offset
        self.order.append([offset, size, False])

    @precondition(lambda self: any(not freed for _, _, freed in self.order))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        live = [region for region in self.order if not region[2]]
        region = data.draw(st.sampled_from(live))
        self.ring.free(region[0])
        region[2] = True
        while self.order and self.order[0][2]:
            self.order.pop(0)

    @rule()
    def free_everything_then_allocate_all(self) -> None:
        for region in reversed(self.order):
            if not region[2]:
                self.ring.free(region[0])
        self.order = []
        assert self.ring.free_bytes == self.cap and self.ring.alloc(self.cap) == 0
        self.ring.free(0)

    @invariant()
    def accounting(self) -> None:
        free = sum(end - start for start, end in self._pieces())
        assert self.ring.free_bytes == free
        assert self.ring.used + self.ring.free_bytes == self.ring.capacity == self.cap


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


# --- framed messages and fd passing ----------------------------------------------------------


def _send_all(sock: socket.socket, payloads: list[bytes], close: bool = False) -> None:
    for payload in payloads:
        send_msg(sock, payload)
    if close:
        sock.close()


def test_recv_msg_round_trips_frames(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    big = os.urandom(3 << 20)  # larger than the socket buffer: partial writes and reads
    sender = threading.Thread(target=_send_all, args=(a, [b"one", b"", big, bytearray(b"two")]))
    sender.start()
    assert [recv_msg(b) for _ in range(4)] == [(b"one", []), (b"", []), (big, []), (b"two", [])]
    sender.join()


def test_fds_ride_along_and_stay_private(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    r, w = os.pipe()
    try:
        send_msg(a, b"pipe", [w, r])
        send_msg(a, b"after")
        payload, fds = recv_msg(b)
        assert payload == b"pipe" and len(fds) == 2 and not set(fds) & {r, w}
        assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in fds)
        os.write(fds[0], b"!")
        assert os.read(r, 1) == b"!"
        assert recv_msg(b) == (b"after", [])
        for fd in fds:
            os.close(fd)
    finally:
        os.close(r)
        os.close(w)


def test_recv_msg_eof_and_truncation() -> None:
    for sent, error in [
        (b"", EOFError),
        (b"\x05\x00", ConnectionError),
        (b"\x05\x00\x00\x00abc", ConnectionError),
    ]:
        a, b = socket.socketpair()
        with a, b:
            a.sendall(sent)
            a.shutdown(socket.SHUT_WR)
            with pytest.raises(error):
                recv_msg(b)


def test_frame_limits(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    with pytest.raises(ValueError, match="exceeds"):
        send_msg(a, bytes(MAX_FRAME + 1))
    with pytest.raises(ValueError, match="fds"):
        send_msg(a, b"x", [0] * (MAX_FDS + 1))
    a.sendall(struct.pack("<I", MAX_FRAME + 1))
    with pytest.raises(ValueError, match="exceeds"):
        recv_msg(b)
    a.sendall(struct.pack("<I", MAX_FRAME + 1))
    b.setblocking(False)
    with pytest.raises(ValueError, match="exceeds"):
        FrameReader().feed_from(b)


def _feed_all(reader: FrameReader, sock: socket.socket) -> list[tuple[bytes, list[int]]]:
    frames = []
    while got := reader.feed_from(sock):
        frames += got
    return frames


def _frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def _rights(*fds: int) -> tuple[int, int, bytes]:
    """Raw SCM_RIGHTS ancillary data, to send what send_msg never would."""
    return socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds)


def test_frame_reader_fed_byte_by_byte_keeps_fds_with_their_frame(
    pair: tuple[socket.socket, ...],
) -> None:
    a, b = pair
    b.setblocking(False)
    reader = FrameReader()
    r, w = os.pipe()
    frames: list[tuple[bytes, list[int]]] = []
    try:
        stream = _frame(b"first") + _frame(b"with-fd") + _frame(b"") + _frame(b"last")
        fd_at = len(_frame(b"first"))
        for i in range(len(stream)):
            if i == fd_at:
                a.sendmsg([stream[i : i + 1]], [_rights(w)])
            else:
                a.send(stream[i : i + 1])
            frames += reader.feed_from(b)
        assert [p for p, _ in frames] == [b"first", b"with-fd", b"", b"last"]
        assert [len(f) for _, f in frames] == [0, 1, 0, 0]
        os.write(frames[1][1][0], b"?")
        assert os.read(r, 1) == b"?"
        assert reader.feed_from(b) == []  # nothing more, non-blocking
        a.close()
        with pytest.raises(EOFError):
            reader.feed_from(b)
    finally:
        for fd in [r, w, *(fd for _, fds in frames for fd in fds)]:
            os.close(fd)


def test_frame_reader_gives_fds_to_the_last_frame_starting_in_the_read(
    pair: tuple[socket.socket, ...],
) -> None:
    a, b = pair
    b.setblocking(False)
    send_msg(a, b"before")
    send_msg(a, b"carrier", [a.fileno()])
    send_msg(a, b"after")
    frames = _feed_all(FrameReader(), b)
    assert [p for p, _ in frames] == [b"before", b"carrier", b"after"]
    assert [len(f) for _, f in frames] == [0, 1, 0]
    os.close(frames[1][1][0])


def test_frame_reader_big_frames_and_many_small_ones(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    payloads = [os.urandom(n) for n in (10, 5 << 20, 0, 7, 300_000)] + [b"m" * 40] * 20_000
    sender = threading.Thread(target=_send_all, args=(a, payloads, True))
    sender.start()
    reader, got = FrameReader(bufsize=64 * 1024), []
    try:
        while True:
            got += [p for p, _ in reader.feed_from(b)]
    except EOFError:
        pass
    sender.join()
    assert got == payloads


def test_frame_writer_never_blocks_and_bounds_an_unread_backlog(
    pair: tuple[socket.socket, ...],
) -> None:
    a, b = pair
    a.setblocking(False)
    writer, pushed = FrameWriter(limit=1 << 20), []
    with pytest.raises(OverflowError, match="does not read"):
        for i in range(1_000_000):  # far more than the socket buffer and the limit hold
            payload = f"reply {i}".encode() * 10
            writer.push(a, payload)  # returns at once even though b reads nothing
            pushed.append(payload)
    assert 0 < writer.pending <= (1 << 20) + 200
    # what the socket could not take yet is sent once the reader catches up
    got, reader = [], FrameReader()
    b.setblocking(False)
    while writer.pending or len(got) < len(pushed):
        writer.flush(a)
        got += [frame for frame, _ in reader.feed_from(b)]
    assert got == [*pushed, f"reply {len(pushed)}".encode() * 10]


def test_frame_reader_errors(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    b.setblocking(False)
    a.sendall(b"\x09\x00\x00\x00abc")
    a.shutdown(socket.SHUT_WR)
    reader = FrameReader()
    assert reader.feed_from(b) == []
    with pytest.raises(ConnectionError, match="inside a frame"):
        reader.feed_from(b)


def test_frame_reader_rejects_fds_in_the_middle_of_a_frame(
    pair: tuple[socket.socket, ...],
) -> None:
    a, b = pair
    b.setblocking(False)
    reader = FrameReader()
    fds = _open_fds()
    a.sendall(b"\x04\x00\x00\x00ab")
    assert reader.feed_from(b) == []
    a.sendmsg([b"cd"], [_rights(a.fileno())])
    with pytest.raises(ConnectionError, match="middle"):
        reader.feed_from(b)
    assert _open_fds() == fds  # the stray fd was closed


def test_too_many_fds_is_a_protocol_error(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    fds = _open_fds()
    a.sendmsg([_frame(b"x")], [_rights(*[a.fileno()] * (MAX_FDS + 1))])
    with pytest.raises(ConnectionError, match="more than"):
        recv_msg(b)
    assert _open_fds() == fds


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=30),
    cuts=st.lists(st.integers(1, 700), min_size=1, max_size=40),
)
def test_frame_reader_any_split(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(map(_frame, payloads))
    a, b = socket.socketpair()
    with a, b:
        b.setblocking(False)
        reader, got, pos, i = FrameReader(bufsize=4096), [], 0, 0
        while pos < len(stream):
            step = cuts[i % len(cuts)]
            a.sendall(stream[pos : pos + step])
            pos, i = pos + step, i + 1
            got += [p for p, fds in reader.feed_from(b) if not fds]
        assert got == payloads


def test_allocator_undo_frees_only_an_allocation_made_since_the_mark() -> None:
    # a caller interrupted right after alloc returned gives the space back with undo
    ring = RingAllocator(64)
    first = ring.alloc(16)
    mark = ring.allocations
    ring.undo(mark)  # nothing allocated since: nothing freed
    assert ring.used == 16
    ring.alloc(16)  # its offset is lost to the caller
    ring.undo(mark)
    ring.free(first)
    assert ring.used == 0 and ring.alloc(64) == 0
