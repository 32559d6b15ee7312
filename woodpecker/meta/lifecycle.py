"""The lifecycle of a log's metadata: truncation, retention states, segment indexes, GC.

Every change here is one etcd transaction that compares what it read (the
truncation key, the segment record, the block records) by ``mod_revision``, so
several logstores can run maintenance at the same time: one of them wins each
step, the others see a failed compare and move on. A segment's record is put by
every transaction that changes its blocks (a writer's commit, a compaction swap),
so its ``mod_revision`` stamps the whole block set: a compare on it alone proves
the blocks read after it are still current.

Objects are never deleted here. A transaction that drops the last reference to
objects records them in a ``PendingDeletion`` with a deadline, in the same
transaction, and maintenance deletes them after the deadline. Why, and the
whole protocol: ``docs/lifecycle.md``.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pyetcd import utils as etcd_utils

from woodpecker.errors import InvalidPositionError, LogNotFoundError, MetadataUnavailableError
from woodpecker.meta.connection import first
from woodpecker.meta.records import (
    BlockRecord,
    LogRecord,
    PendingDeletion,
    SegmentIndex,
    SegmentRecord,
    SegmentState,
    TruncationPoint,
)
from woodpecker.meta.store import CAS_ATTEMPTS, MetaStore

R = TypeVar("R")


@dataclass(frozen=True)
class Versioned(Generic[R]):
    """A record as read from etcd, with the revision a later txn compares."""

    record: R
    key: str
    revision: int


class Lifecycle:
    """Truncation and maintenance transitions of the logs under one ``MetaStore``."""

    def __init__(self, meta: MetaStore) -> None:
        self.etcd = meta.etcd
        self.keys = meta.keys
        self.meta = meta

    # ---- reads -----------------------------------------------------------------------

    def logs(self) -> list[LogRecord]:
        """Every live log."""
        return [
            LogRecord.from_bytes(v, kv.key.decode())
            for v, kv in self.etcd.scan("lifecycle_logs", self.keys.logs_prefix)
        ]

    def truncation(self, log_id: int) -> TruncationPoint | None:
        """The log's truncation point, None if it was never truncated."""
        return self.meta.get_truncation(log_id)

    def segments(self, log_id: int) -> list[Versioned[SegmentRecord]]:
        """Every segment of the log by id, each with the revision a guarded change compares."""
        return [
            Versioned(
                SegmentRecord.from_bytes(v, kv.key.decode()), kv.key.decode(), kv.mod_revision
            )
            for v, kv in self.etcd.scan("lifecycle_segments", self.keys.segments_prefix(log_id))
        ]

    def blocks(self, log_id: int, segment_id: int | None = None) -> list[Versioned[BlockRecord]]:
        """The blocks of one segment, or of the whole log: block records and index chunks.

        A chunk carries its index's key and revision.
        """
        k = self.keys
        found = [
            Versioned(BlockRecord.from_bytes(v, kv.key.decode()), kv.key.decode(), kv.mod_revision)
            for v, kv in self.etcd.scan("lifecycle_blocks", k.blocks_prefix(log_id, segment_id))
        ]
        if segment_id is None:
            indexes = self.etcd.scan("lifecycle_blocks", k.indexes_prefix(log_id))
        else:
            one = self.etcd.get("lifecycle_blocks", k.segment_index(log_id, segment_id))
            indexes = [] if one is None else [one]
        for v, kv in indexes:
            key = kv.key.decode()
            found += [
                Versioned(b, key, kv.mod_revision) for b in SegmentIndex.from_bytes(v, key).blocks()
            ]
        return found

    def pending_deletions(self, log_id: int | None = None) -> list[Versioned[PendingDeletion]]:
        """Recorded deletions of one log or of all logs (including deleted logs)."""
        return [
            Versioned(
                PendingDeletion.from_bytes(v, kv.key.decode()), kv.key.decode(), kv.mod_revision
            )
            for v, kv in self.etcd.scan("lifecycle_gc", self.keys.gc_prefix(log_id))
        ]

    # ---- truncation ------------------------------------------------------------------

    def truncate(
        self,
        log_id: int,
        name: str,
        segment_id: int,
        entry_id: int,
        *,
        nodes_lac: Callable[[SegmentRecord], int] | None = None,
    ) -> TruncationPoint:
        """Move the truncation point forward to (segment_id, entry_id), inclusive.

        A point at or behind the current one changes nothing. Otherwise the
        entry must be committed: its segment exists and ``entry_id <= lac``,
        else ``InvalidPositionError`` and nothing is written. An ACTIVE quorum
        segment's LAC is not in etcd: ``nodes_lac`` asks its nodes (without it
        no entry of such a segment counts as committed). One txn compares
        the truncation key (absent or as read), that the log id is still live
        (a deleted log never gets its key back) and that the segment still
        exists; a lost race re-reads and decides again.
        """
        if segment_id < 0 or entry_id < 0:
            raise InvalidPositionError(
                f"log {name!r}: position {segment_id}:{entry_id} is negative"
            )
        k, ops = self.keys, self.etcd.ops
        wanted = (segment_id, entry_id)
        tkey, skey = k.truncation(log_id), k.segment(log_id, segment_id)
        live = self.etcd.get("truncate", k.log_id(log_id))
        current = self.etcd.get("truncate", tkey)
        segment = self.etcd.get("truncate", skey)
        for _ in range(CAS_ATTEMPTS):
            if live is None:
                raise LogNotFoundError(f"log {name!r} not found")
            point = None if current is None else TruncationPoint.from_bytes(current[0], tkey)
            if point is not None and (point.segment_id, point.entry_id) >= wanted:
                return point  # backwards (or a retry of our own landed write): a no-op
            if segment is None:
                raise InvalidPositionError(
                    f"log {name!r}: cannot truncate to {segment_id}:{entry_id}: "
                    f"segment {segment_id} does not exist"
                )
            record = SegmentRecord.from_bytes(segment[0], skey)
            lac, where = record.lac, ""
            if record.lac_on_nodes:
                lac = -1 if nodes_lac is None else nodes_lac(record)
                where = ", its nodes not asked" if nodes_lac is None else " from its nodes"
            if entry_id > lac:
                raise InvalidPositionError(
                    f"log {name!r}: cannot truncate to {segment_id}:{entry_id}: past the "
                    f"committed end of segment {segment_id} (lac {lac}{where})"
                )
            guard = (
                ops.create(tkey) == 0
                if current is None
                else ops.mod(tkey) == current[1].mod_revision
            )
            new = TruncationPoint(segment_id=segment_id, entry_id=entry_id)
            ok, replies = self.etcd.txn(
                "truncate",
                compare=[guard, ops.version(k.log_id(log_id)) > 0, ops.version(skey) > 0],
                success=[ops.put(tkey, new.to_bytes())],
                failure=[ops.get(tkey), ops.get(k.log_id(log_id)), ops.get(skey)],
            )
            if ok:
                return new
            current, live, segment = (first(r) for r in replies)
        raise MetadataUnavailableError(
            f"etcd truncate {name!r}: the truncation point kept changing "
            f"for {CAS_ATTEMPTS} attempts"
        )

    # ---- retention -------------------------------------------------------------------

    def mark_truncated(
        self, seg: Versioned[SegmentRecord], now_ms: int
    ) -> Versioned[SegmentRecord] | None:
        """SEALED -> TRUNCATED (stamped ``truncated_ms``); None if the segment changed meanwhile."""
        if seg.record.state is not SegmentState.SEALED:
            raise ValueError(
                f"segment {seg.key} is {seg.record.state}, only SEALED can be truncated"
            )
        marked = dataclasses.replace(seg.record, state=SegmentState.TRUNCATED, truncated_ms=now_ms)
        ops = self.etcd.ops
        ok, replies = self.etcd.txn(
            "mark_truncated",
            compare=[ops.mod(seg.key) == seg.revision],
            success=[ops.put(seg.key, marked.to_bytes())],
        )
        return Versioned(marked, seg.key, replies[0].response_put.header.revision) if ok else None

    def delete_segment(
        self, seg: Versioned[SegmentRecord], keys: Sequence[str], not_before_ms: int
    ) -> bool:
        """Delete a TRUNCATED segment's record, block records or index, and a quorum segment's
        flush cursor and claim; its objects become pending.

        ``keys`` are the objects its block records (read after ``seg``) point to.
        False if the segment changed since it was read.
        """
        if seg.record.state is not SegmentState.TRUNCATED:
            raise ValueError(f"segment {seg.key} is {seg.record.state}, only TRUNCATED is deleted")
        r, ops = seg.record, self.etcd.ops
        blocks = self.keys.blocks_prefix(r.log_id, r.segment_id)
        success = [
            ops.delete(seg.key),
            ops.delete(blocks, etcd_utils.prefix_range_end(blocks.encode())),
            ops.delete(self.keys.segment_index(r.log_id, r.segment_id)),
            ops.delete(self.keys.flush_cursor(r.log_id, r.segment_id)),
            ops.delete(self.keys.flusher(r.log_id, r.segment_id)),
        ]
        success += self._pending(r.log_id, keys, not_before_ms, f"segment {r.segment_id} retention")
        ok, _ = self.etcd.txn(
            "delete_segment", compare=[ops.mod(seg.key) == seg.revision], success=success
        )
        return ok

    # ---- compaction ------------------------------------------------------------------

    def index_segment(
        self,
        seg: Versioned[SegmentRecord],
        index: SegmentIndex,
        unreferenced: Sequence[str],
        not_before_ms: int,
        compacted_ms: int,
    ) -> Versioned[SegmentRecord] | None:
        """Replace a segment's block records by one SegmentIndex, in one txn.

        Compares the segment record only: every change of its blocks puts it,
        so its revision (read before the blocks) proves they are still the
        ones the index was built from. Deletes the block records, puts the
        index, the segment with ``compacted_ms`` and a PendingDeletion of
        ``unreferenced``. Returns the segment as written, or None if it changed.
        """
        r = seg.record
        if r.state is SegmentState.ACTIVE:
            raise ValueError(f"segment {seg.key} is ACTIVE; only a finished segment is compacted")
        if (index.log_id, index.segment_id) != (r.log_id, r.segment_id):
            raise ValueError(f"index of {index.log_id}/{index.segment_id} for {seg.key}")
        ops = self.etcd.ops
        record = dataclasses.replace(r, compacted_ms=compacted_ms)
        blocks = self.keys.blocks_prefix(r.log_id, r.segment_id)
        success = [
            ops.delete(blocks, etcd_utils.prefix_range_end(blocks.encode())),
            ops.put(self.keys.segment_index(r.log_id, r.segment_id), index.to_bytes()),
            ops.put(seg.key, record.to_bytes()),
        ]
        reason = f"segment {r.segment_id} compaction"
        success += self._pending(r.log_id, unreferenced, not_before_ms, reason)
        ok, replies = self.etcd.txn(
            "index_segment", compare=[ops.mod(seg.key) == seg.revision], success=success
        )
        if not ok:
            return None
        return Versioned(record, seg.key, replies[2].response_put.header.revision)

    # ---- pending deletions -----------------------------------------------------------

    def _pending(
        self, log_id: int, keys: Sequence[str], not_before_ms: int, reason: str
    ) -> list[Any]:
        """The txn operation recording a PendingDeletion of ``keys`` (none if no keys)."""
        if not keys:
            return []
        entry = PendingDeletion(
            log_id=log_id, keys=sorted(set(keys)), not_before_ms=not_before_ms, reason=reason
        )
        name = f"{not_before_ms:020d}-{uuid.uuid4().hex[:12]}"
        return [self.etcd.ops.put(self.keys.gc_entry(log_id, name), entry.to_bytes())]

    def forget_deletion(self, entry: Versioned[PendingDeletion]) -> None:
        """Drop a PendingDeletion whose objects are gone (a concurrent drop is fine)."""
        ops = self.etcd.ops
        self.etcd.txn(
            "forget_deletion",
            compare=[ops.mod(entry.key) == entry.revision],
            success=[ops.delete(entry.key)],
        )
