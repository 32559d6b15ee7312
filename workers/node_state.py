"""What a quorum node holds, and the rules it answers by (docs/quorum.md, "Requests").

``NodeState`` is the node's state machine, free of sockets: per log the fence epoch, per
segment a contiguous run of batches and the LAC it was told. In ``disk`` durability a
``Journal`` writes every stored batch and every raised fence before the state changes,
``sync`` makes all of them durable with one fdatasync per file touched (a group commit:
the daemon calls it before any reply leaves), and they are replayed after a restart; in
``memory`` durability a restarted node has a new incarnation and knows nothing, so it
refuses the segments it lost instead of answering as if they were empty.
"""

from __future__ import annotations

import os
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import xxhash

from woodpecker.errors import CorruptedDataError
from woodpecker.format import check_batch_message
from woodpecker.private_files import FILE_MODE, make_private_dirs, private_opener
from woodpecker.quorum.wire import (
    APPEND,
    APPEND_BODY,
    FENCE,
    LAC,
    LAC_BODY,
    LAC_SEALED,
    READ,
    READ_BODY,
    Batch,
    Reply,
    Request,
    Status,
)

# a journal record: length of the body, xxh3_64 of the body, the body
RECORD_HEAD = struct.Struct("<IQ")
# a segment file's records: a stored batch (kind, first entry id, entry count, xxh3_64 of
# the batch, then its bytes), or where the flushed and forgotten entries end (kind, entry)
BATCH_RECORD = struct.Struct("<BqIQ")
DROPPED_RECORD = struct.Struct("<Bq")
BATCH, DROPPED = 1, 2
COMPACT_SLACK = 64 * 1024
"""A segment file is rewritten once it holds this much plus twice what is still kept."""
# a raised fence: log id, epoch
FENCE_RECORD = struct.Struct("<QQ")


@dataclass
class Replica:
    """One segment as this node holds it: a contiguous run of batches."""

    batches: list[Batch] = field(default_factory=list)
    lac: int = -1
    size: int = 0
    dropped_through: int = -1  # entries up to here were flushed and forgotten
    sealed_last: int | None = None  # the segment is sealed, this its last entry

    @property
    def last(self) -> int:
        if not self.batches:
            return self.dropped_through
        return self.batches[-1].first + self.batches[-1].count - 1


class SegmentSummary(NamedTuple):
    log_id: int
    segment_id: int
    last: int
    lac: int
    size: int


class NodeState:
    """The answers of one node incarnation; ``handle`` is the only entry point of requests.

    Not thread-safe: the node's event loop is its only caller.
    """

    def __init__(
        self, incarnation: int, max_buffer_bytes: int, journal: Journal | None = None
    ) -> None:
        self.incarnation = incarnation
        self.max_buffer_bytes = max_buffer_bytes
        self.journal = journal
        self.fences: dict[int, int] = {}  # log id -> highest epoch that fenced any segment
        self.replicas: dict[tuple[int, int], Replica] = {}
        self.buffered_bytes = 0
        if journal is not None:
            self.fences, self.replicas = journal.replay()
            self.buffered_bytes = sum(r.size for r in self.replicas.values())

    @classmethod
    def in_memory(cls, max_buffer_bytes: int) -> NodeState:
        """``memory`` durability: a fresh incarnation that knows no segment."""
        return cls(secrets.randbits(63), max_buffer_bytes)

    @classmethod
    def on_disk(cls, data_dir: Path, max_buffer_bytes: int) -> NodeState:
        """``disk`` durability: the incarnation and everything answered survive a restart."""
        journal = Journal(data_dir)
        return cls(journal.incarnation, max_buffer_bytes, journal)

    def handle(self, request: Request, body: memoryview) -> Reply:
        """Answer one decoded request (``body``: the bytes after its head).

        The answer may be sent only after ``sync``: until then what it reports may not be
        durable.
        """
        key = (request.log_id, request.segment_id)
        if request.kind == APPEND:
            first, count, lac, checksum = APPEND_BODY.unpack_from(body)
            data = body[APPEND_BODY.size :]
            return self.append(request, key, Batch(first, count, data), lac, checksum)
        if request.kind == FENCE:
            return self.fence(request, key)
        if request.kind == READ:
            start, budget, _ = READ_BODY.unpack(body)
            return self.read(request, key, start, budget)
        if request.kind == LAC:
            lac, flags = LAC_BODY.unpack(body)
            return self.raise_lac(request, key, lac, sealed=bool(flags & LAC_SEALED))
        raise ValueError(f"request type {request.kind}")

    def _reply(
        self, request: Request, status: int, key: tuple[int, int], batches: tuple[Batch, ...] = ()
    ) -> Reply:
        replica = self.replicas.get(key)
        last, lac = (replica.last, replica.lac) if replica else (-1, -1)
        fence = self.fences.get(request.log_id, 0)
        return Reply(request.request_id, status, self.incarnation, last, lac, fence, batches)

    def _fenced(self, request: Request) -> bool:
        return request.epoch < self.fences.get(request.log_id, 0)

    def append(
        self, request: Request, key: tuple[int, int], batch: Batch, lac: int, checksum: int
    ) -> Reply:
        """Store a batch that continues the segment; entry 0 creates an unknown segment."""
        if self._fenced(request):
            return self._reply(request, Status.FENCED, key)
        replica = self.replicas.get(key)
        if replica is None and batch.first != 0:
            return self._reply(request, Status.UNKNOWN, key)
        last = replica.last if replica else -1
        end = batch.first + batch.count - 1
        if batch.count < 1 or batch.first < 0:
            return self._reply(request, Status.REJECTED, key)
        if end <= last:  # a re-send of what is held: same epoch, same ids, same bytes
            replica.lac = max(replica.lac, min(lac, last))
            return self._reply(request, Status.OK, key)
        if batch.first != last + 1:
            return self._reply(request, Status.GAP, key)
        if self.buffered_bytes + len(batch.data) > self.max_buffer_bytes:
            return self._reply(request, Status.BUSY, key)
        try:
            if xxhash.xxh3_64_intdigest(batch.data) != checksum:
                raise CorruptedDataError("checksum mismatch")
            check_batch_message(batch.data, batch.count)
        except CorruptedDataError:
            return self._reply(request, Status.REJECTED, key)
        if self.journal is not None:
            self.journal.store(key, batch, checksum)
        if replica is None:
            replica = self.replicas[key] = Replica()
        replica.batches.append(batch)
        replica.size += len(batch.data)
        replica.lac = max(replica.lac, min(lac, end))
        self.buffered_bytes += len(batch.data)
        return self._reply(request, Status.OK, key)

    def fence(self, request: Request, key: tuple[int, int]) -> Reply:
        """Raise the log's fence to the request's epoch, durably, then say what is held.

        A segment this node does not hold is answered UNKNOWN, never as empty: after a
        restart in memory durability the node cannot tell it lost it from never got it.
        """
        if self._fenced(request):
            return self._reply(request, Status.FENCED, key)
        if request.epoch > self.fences.get(request.log_id, 0):
            if self.journal is not None:
                self.journal.fence(request.log_id, request.epoch)
            self.fences[request.log_id] = request.epoch
        status = Status.OK if key in self.replicas else Status.UNKNOWN
        return self._reply(request, status, key)

    def read(self, request: Request, key: tuple[int, int], start: int, budget: int) -> Reply:
        """Whole batches from the one holding ``start``, up to the LAC, within ``budget`` bytes.

        Above the LAC only for the epoch that fenced the log (a recovery read). Any epoch
        may read up to the LAC: what is at or below it was acknowledged.
        """
        replica = self.replicas.get(key)
        if replica is None:
            return self._reply(request, Status.UNKNOWN, key)
        if start <= replica.dropped_through:
            return self._reply(request, Status.FLUSHED, key)
        recovering = request.epoch == self.fences.get(request.log_id, 0) != 0
        limit = replica.last if recovering else replica.lac
        found: list[Batch] = []
        size = 0
        for batch in replica.batches:
            if batch.first > limit or (found and size + len(batch.data) > budget):
                break
            if batch.first + batch.count > start:
                found.append(batch)
                size += len(batch.data)
        return self._reply(request, Status.OK, key, tuple(found))

    def would_wait(self, key: tuple[int, int], start: int) -> bool:
        """Whether a read of ``start`` finds nothing yet: not acked that far, or a segment
        not known yet (a reader at the start of a new segment waits for its first append;
        a restarted node that lost it is never asked: its incarnation differs)."""
        replica = self.replicas.get(key)
        return replica is None or (replica.dropped_through < start and replica.lac < start)

    def acked_through(self, key: tuple[int, int]) -> int:
        """The segment's LAC as this node knows it (-1: unknown segment or nothing acked)."""
        replica = self.replicas.get(key)
        return -1 if replica is None else replica.lac

    def raise_lac(
        self, request: Request, key: tuple[int, int], lac: int, *, sealed: bool = False
    ) -> Reply:
        """The writer's LAC (never lowered, never above what is held); -1 only asks.

        ``sealed``: the segment is sealed at ``lac``, its last entry."""
        if self._fenced(request):
            return self._reply(request, Status.FENCED, key)
        if key not in self.replicas:
            return self._reply(request, Status.UNKNOWN, key)
        if sealed:
            self.seal(key, lac)
        else:
            replica = self.replicas[key]
            replica.lac = max(replica.lac, min(lac, replica.last))
        return self._reply(request, Status.OK, key)

    def seal(self, key: tuple[int, int], last: int) -> None:
        """The segment is sealed at ``last`` (an acknowledged entry): what this node holds
        above it is no entry of the segment, and it is forgotten once flushed to there."""
        replica = self.replicas.get(key)
        if replica is not None:
            replica.sealed_last = last
            replica.lac = max(replica.lac, min(last, replica.last))

    def sealed_last(self, key: tuple[int, int]) -> int | None:
        """The last entry of a segment known to be sealed; None if not known sealed (or held)."""
        replica = self.replicas.get(key)
        return None if replica is None else replica.sealed_last

    def flushable(self, key: tuple[int, int], start: int, max_bytes: int) -> list[Batch]:
        """Whole batches from entry ``start`` on, all at or below the LAC: the next flush.

        At most ``max_bytes`` (and at least one batch); empty when the node does not hold
        entry ``start`` at the start of a batch or nothing there is below the LAC yet.
        """
        replica = self.replicas.get(key)
        if replica is None:
            return []
        found: list[Batch] = []
        size = 0
        for batch in replica.batches:
            end = batch.first + batch.count - 1
            if end < start:
                continue
            if (not found and batch.first != start) or end > replica.lac:
                break
            if found and size + len(batch.data) > max_bytes:
                break
            found.append(batch)
            size += len(batch.data)
        return found

    def flushable_bytes(self, key: tuple[int, int]) -> int:
        """Bytes of the batches held that lie wholly at or below the LAC."""
        replica = self.replicas.get(key)
        if replica is None:
            return 0
        return sum(len(b.data) for b in replica.batches if b.first + b.count - 1 <= replica.lac)

    def drop_through(self, key: tuple[int, int], entry: int) -> int:
        """Forget the batches ending at or below ``entry`` (flushed and committed); bytes freed.

        The segment stays known (its last entry and LAC still answer fences and reads).
        """
        replica = self.replicas.get(key)
        if replica is None:
            return 0
        kept = [b for b in replica.batches if b.first + b.count - 1 > entry]
        if len(kept) == len(replica.batches):
            return 0
        freed = sum(len(b.data) for b in replica.batches) - sum(len(b.data) for b in kept)
        replica.dropped_through = max(replica.dropped_through, min(entry, replica.last))
        replica.batches = kept
        replica.size -= freed
        self.buffered_bytes -= freed
        if self.journal is not None:
            self.journal.forgotten(key, replica)
        return freed

    def forget(self, key: tuple[int, int]) -> int:
        """Forget a segment altogether (wholly flushed, or deleted from etcd); bytes freed.

        Its batches, its state and (disk durability) its file go; the log's fence stays
        (docs/quorum.md, "Flushing"). A later request for it is answered UNKNOWN.
        """
        replica = self.replicas.pop(key, None)
        if replica is None:
            return 0
        self.buffered_bytes -= replica.size
        if self.journal is not None:
            self.journal.remove(key)
        return replica.size

    def sync(self) -> None:
        """Make everything handled so far durable (disk durability; nothing to do in memory)."""
        if self.journal is not None:
            self.journal.sync()

    def segments(self) -> list[SegmentSummary]:
        """Every segment held, in id order."""
        return [
            SegmentSummary(log_id, segment_id, r.last, r.lac, r.size)
            for (log_id, segment_id), r in sorted(self.replicas.items())
        ]

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()


class Journal:
    """The files of a disk-durability node: its incarnation, fences and segment batches.

    ``<dir>/incarnation`` (decimal), ``<dir>/fences.wal`` and one
    ``<dir>/segments/<log_id>-<segment_id>.wal`` per segment; each ``.wal`` is a run of
    records (length, xxh3, body), fdatasync'd by ``sync`` before the request is answered.
    A record cut by a crash was never answered: replay stops at it and truncates it off.
    The files stay bounded: a segment file is rewritten with only what is still kept once
    forgotten (flushed) batches make up most of it, and the fence file is rewritten with
    one record per log at every start.
    """

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        make_private_dirs(data_dir / "segments")
        path = data_dir / "incarnation"
        if not path.exists():
            with open(path.with_suffix(".tmp"), "wb", opener=private_opener) as f:
                f.write(str(secrets.randbits(63)).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(path.with_suffix(".tmp"), path)
            _fsync_dir(data_dir)
        self.incarnation = int(path.read_text())
        self._fds: dict[tuple[int, int], int] = {}
        self._bytes: dict[tuple[int, int], int] = {}  # size of each segment file
        self._fence_fd = -1
        self._unsynced: set[int] = set()

    def _segment_path(self, key: tuple[int, int]) -> Path:
        return self.dir / "segments" / f"{key[0]}-{key[1]}.wal"

    def _open(self, path: Path) -> int:
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        if created:
            _fsync_dir(path.parent)
        return fd

    def _write(self, fd: int, body: bytes | memoryview, *more: bytes | memoryview) -> int:
        """Append one record (not synced yet); its size in the file."""
        size = len(body) + sum(len(m) for m in more)
        hasher = xxhash.xxh3_64(body)
        for m in more:
            hasher.update(m)
        os.writev(fd, [RECORD_HEAD.pack(size, hasher.intdigest()), body, *more])
        self._unsynced.add(fd)
        return RECORD_HEAD.size + size

    def sync(self) -> None:
        """One fdatasync per file written since the last sync."""
        while self._unsynced:
            os.fdatasync(self._unsynced.pop())

    def store(self, key: tuple[int, int], batch: Batch, checksum: int) -> None:
        fd = self._fds.get(key)
        if fd is None:
            fd = self._fds[key] = self._open(self._segment_path(key))
        head = BATCH_RECORD.pack(BATCH, batch.first, batch.count, checksum)
        self._bytes[key] = self._bytes.get(key, 0) + self._write(fd, head, batch.data)

    def fence(self, log_id: int, epoch: int) -> None:
        if self._fence_fd < 0:
            self._fence_fd = self._open(self.dir / "fences.wal")
        self._write(self._fence_fd, FENCE_RECORD.pack(log_id, epoch))

    def forgotten(self, key: tuple[int, int], replica: Replica) -> None:
        """Batches of ``key`` were flushed and forgotten: rewrite its file once they dominate."""
        if self._bytes.get(key, 0) <= 2 * replica.size + COMPACT_SLACK:
            return
        records = [(DROPPED_RECORD.pack(DROPPED, replica.dropped_through),)]
        records += [
            (
                BATCH_RECORD.pack(BATCH, b.first, b.count, xxhash.xxh3_64_intdigest(b.data)),
                b.data,
            )
            for b in replica.batches
        ]
        path = self._segment_path(key)
        self._bytes[key] = self._replace(path, records)
        old = self._fds.pop(key, None)
        if old is not None:
            self._unsynced.discard(old)  # what it had unsynced is in the new file, synced
            os.close(old)

    def remove(self, key: tuple[int, int]) -> None:
        """Delete the file of a forgotten segment (not synced: if a crash brings it back, the
        node forgets the segment again at its next flush check)."""
        fd = self._fds.pop(key, None)
        if fd is not None:
            self._unsynced.discard(fd)
            os.close(fd)
        self._bytes.pop(key, None)
        self._segment_path(key).unlink(missing_ok=True)

    def _replace(self, path: Path, records: list[tuple[bytes | memoryview, ...]]) -> int:
        """Write ``path`` anew with ``records``, durably, in one rename; its size."""
        temp = path.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            size = sum(self._write(fd, *record) for record in records)
            self._unsynced.discard(fd)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        _fsync_dir(path.parent)
        return size

    def replay(self) -> tuple[dict[int, int], dict[tuple[int, int], Replica]]:
        """The fences and segments the files hold, torn tails cut off."""
        fences: dict[int, int] = {}
        records = _records(self.dir / "fences.wal")
        for body in records:
            log_id, epoch = FENCE_RECORD.unpack(body)
            fences[log_id] = max(fences.get(log_id, 0), epoch)
        if len(records) > len(fences):
            kept = [(FENCE_RECORD.pack(log_id, epoch),) for log_id, epoch in fences.items()]
            self._replace(self.dir / "fences.wal", kept)
        replicas: dict[tuple[int, int], Replica] = {}
        for path in sorted((self.dir / "segments").glob("*.wal")):
            log_id, _, segment_id = path.stem.partition("-")
            key = (int(log_id), int(segment_id))
            replicas[key] = _replay_segment(path)
            self._bytes[key] = path.stat().st_size
        return fences, replicas

    def close(self) -> None:
        self.sync()
        for fd in [*self._fds.values(), self._fence_fd]:
            if fd >= 0:
                os.close(fd)
        self._fds.clear()
        self._fence_fd = -1


def _replay_segment(path: Path) -> Replica:
    replica = Replica()
    for body in _records(path):
        if body[0] == DROPPED:
            (_, replica.dropped_through) = DROPPED_RECORD.unpack(body)
            continue
        _, first, count, _ = BATCH_RECORD.unpack_from(body)
        if first != replica.last + 1:
            raise CorruptedDataError(f"{path}: batch at entry {first} after {replica.last}")
        data = body[BATCH_RECORD.size :]
        replica.batches.append(Batch(first, count, data))
        replica.size += len(data)
    return replica


def _records(path: Path) -> list[memoryview]:
    """The whole records of a journal file; a torn or corrupt tail is truncated away."""
    if not path.exists():
        return []
    data = memoryview(path.read_bytes())
    found = []
    at = 0
    while at + RECORD_HEAD.size <= len(data):
        size, digest = RECORD_HEAD.unpack_from(data, at)
        body = data[at + RECORD_HEAD.size : at + RECORD_HEAD.size + size]
        if len(body) != size or xxhash.xxh3_64_intdigest(body) != digest:
            break
        found.append(body)
        at += RECORD_HEAD.size + size
    if at != len(data):
        with open(path, "r+b") as f:
            f.truncate(at)
            f.flush()
            os.fsync(f.fileno())
    return found


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
