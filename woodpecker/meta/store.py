"""``MetaStore``: the named metadata operations on logs, segments and blocks, and the door to
writer sessions.

Each method is one etcd operation with a stated contract, so that nothing outside
``woodpecker.meta`` builds keys or transactions (the Go Woodpecker's
``MetadataProvider`` plays the same role). Calls go through ``EtcdConnection``
(bounded retries, ``MetadataUnavailableError`` when etcd stays unreachable).
Transactions that change state compare first and read back in their failure
branch, so a retry of a request whose reply was lost can recognise its own
earlier success instead of reporting a conflict.

The protocol (keys, fencing, invariants) is described in ``docs/fencing.md``.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from dataclasses import dataclass
from typing import NamedTuple

from pyetcd import utils as etcd_utils

from woodpecker.config import Config
from woodpecker.errors import LogExistsError, LogNotFoundError, MetadataUnavailableError
from woodpecker.meta.connection import EtcdConnection, first
from woodpecker.meta.keys import Keys
from woodpecker.meta.records import (
    BlockRecord,
    LogRecord,
    SegmentIndex,
    SegmentRecord,
    TruncationPoint,
    decode_counter,
    now_ms,
)
from woodpecker.meta.session import WriterSession
from woodpecker.naming import validate_log_name

log = logging.getLogger(__name__)

# Compare-and-swap conflicts are not failures (another client won a race), so
# they are retried immediately; this bounds a pathological livelock.
CAS_ATTEMPTS = 64


class LogHead(NamedTuple):
    """Whether a log id exists, and its truncation point, read at one revision."""

    exists: bool
    truncation: TruncationPoint | None


@dataclass(frozen=True, slots=True)
class SegmentSnapshot:
    """One consistent read of what a reader needs to know about one segment."""

    log_exists: bool
    truncation: TruncationPoint | None
    segment: SegmentRecord | None
    blocks: list[BlockRecord]
    revision: int  # etcd revision of the read (a commit watch starts after it)

    def truncated(self, segment_id: int, entry_id: int) -> bool:
        """Whether the position is at or before the truncation point."""
        t = self.truncation
        return t is not None and (segment_id, entry_id) <= (t.segment_id, t.entry_id)


class MetaStore:
    """The metadata of every log under ``etcd.prefix``.

    ``endpoints`` overrides ``config.etcd.endpoints`` (e.g. an embedded etcd).
    Construction does no I/O; the first call connects.
    """

    def __init__(self, config: Config, endpoints: list[str] | None = None) -> None:
        self.config = config
        self.keys = Keys(config.etcd.prefix)
        self.etcd = EtcdConnection(config, list(endpoints or config.etcd.endpoints))
        self._sessions: weakref.WeakSet[WriterSession] = weakref.WeakSet()

    def __enter__(self) -> MetaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the writer sessions opened here, then drop the connections."""
        for session in list(self._sessions):
            session.release()
        self.etcd.close()

    def server_version(self) -> str:
        """The etcd server version (also a cheap reachability probe)."""
        return self.etcd.call("status", lambda c: c.status().version)

    # ---- logs ------------------------------------------------------------------------

    def create_log(self, name: str, buffer_mode: str = "memory") -> LogRecord:
        """Create a log with a fresh id, in ``buffer_mode``; LogExistsError if the name is taken.

        One transaction checks the name is free and advances the id counter by
        compare-and-swap, so concurrent creators get distinct ids and exactly one
        of several creators of the same name wins.
        """
        validate_log_name(name)
        k, ops = self.keys, self.etcd.ops
        counter = self.etcd.get("create_log", k.log_idgen)
        uid = uuid.uuid4().hex
        for _ in range(CAS_ATTEMPTS):
            if counter is None:
                last, guard = 0, ops.create(k.log_idgen) == 0
            else:
                last = decode_counter(counter[0], k.log_idgen)
                guard = ops.mod(k.log_idgen) == counter[1].mod_revision
            record = LogRecord(
                log_id=last + 1, name=name, created_ms=now_ms(), uid=uid, buffer_mode=buffer_mode
            )
            ok, replies = self.etcd.txn(
                "create_log",
                compare=[ops.create(k.log(name)) == 0, guard],
                success=[
                    ops.put(k.log(name), record.to_bytes()),
                    ops.put(k.log_id(record.log_id), name),
                    ops.put(k.log_idgen, str(record.log_id)),
                ],
                failure=[ops.get(k.log(name)), ops.get(k.log_idgen)],
            )
            if ok:
                return record
            existing, counter = first(replies[0]), first(replies[1])
            if existing is not None:
                found = LogRecord.from_bytes(existing[0], k.log(name))
                if found.uid == uid:
                    return found  # our own earlier attempt, whose reply was lost
                raise LogExistsError(f"log {name!r} already exists")
        raise MetadataUnavailableError(
            f"etcd create_log {name!r}: the log id counter stayed contended "
            f"for {CAS_ATTEMPTS} attempts"
        )

    def get_log(self, name: str) -> LogRecord:
        """The record of a log; LogNotFoundError if it does not exist."""
        validate_log_name(name)
        kv = self.etcd.get("get_log", self.keys.log(name))
        if kv is None:
            raise LogNotFoundError(f"log {name!r} not found")
        return LogRecord.from_bytes(kv[0], self.keys.log(name))

    def list_logs(self, prefix: str = "") -> list[str]:
        """Names of the logs starting with ``prefix``, sorted."""
        base = self.keys.logs_prefix
        kvs = self.etcd.scan("list_logs", base + prefix, keys_only=True)
        return [kv.key.decode()[len(base) :] for _, kv in kvs]

    def delete_log(self, name: str) -> LogRecord:
        """Delete every metadata key of a log in one transaction; return what was deleted.

        Atomic, so a reader sees the whole log or LogNotFoundError, never a
        half-deleted log. The writer key goes too, which fences a live writer.
        Objects are not touched: once unreferenced they are orphans for the
        garbage collector (the caller may delete ``<log_id>/`` right away).
        """
        validate_log_name(name)
        k, ops = self.keys, self.etcd.ops
        for _ in range(CAS_ATTEMPTS):
            kv = self.etcd.get("delete_log", k.log(name))
            if kv is None:
                raise LogNotFoundError(f"log {name!r} not found")
            record = LogRecord.from_bytes(kv[0], k.log(name))
            deletes = [ops.delete(k.log(name))]
            deletes += [ops.delete(key) for key in k.log_scoped_keys(record.log_id)]
            deletes += [
                ops.delete(prefix, etcd_utils.prefix_range_end(prefix.encode()))
                for prefix in k.log_scoped_prefixes(record.log_id)
            ]
            ok, _ = self.etcd.txn(
                "delete_log", compare=[ops.mod(k.log(name)) == kv[1].mod_revision], success=deletes
            )
            if ok:
                return record
        raise MetadataUnavailableError(
            f"etcd delete_log {name!r}: the log record kept changing for {CAS_ATTEMPTS} attempts"
        )

    # ---- segments, blocks, truncation ----------------------------------------------------

    def list_segments(self, log_id: int) -> list[SegmentRecord]:
        """Every segment of a log, by segment id."""
        return [
            SegmentRecord.from_bytes(v, kv.key.decode())
            for v, kv in self.etcd.scan("list_segments", self.keys.segments_prefix(log_id))
        ]

    def get_segment(self, log_id: int, segment_id: int) -> SegmentRecord | None:
        """One segment, or None if it does not exist (not created yet, or deleted)."""
        key = self.keys.segment(log_id, segment_id)
        kv = self.etcd.get("get_segment", key)
        return None if kv is None else SegmentRecord.from_bytes(kv[0], key)

    def list_blocks(self, log_id: int, segment_id: int) -> list[BlockRecord]:
        """The committed blocks of a segment, by block id (a compacted one's index chunks)."""
        index_key = self.keys.segment_index(log_id, segment_id)
        prefix = self.keys.blocks_prefix(log_id, segment_id)
        ops = self.etcd.ops
        _, (index, blocks) = self.etcd.txn(  # one snapshot: compaction swaps one for the other
            "list_blocks",
            compare=[],
            success=[
                ops.get(index_key),
                ops.get(prefix, etcd_utils.prefix_range_end(prefix.encode())),
            ],
        )
        if index:
            return SegmentIndex.from_bytes(index[0][0], index_key).blocks()
        return [BlockRecord.from_bytes(v, kv.key.decode()) for v, kv in blocks]

    def get_truncation(self, log_id: int) -> TruncationPoint | None:
        """The log's truncation point, or None if it was never truncated."""
        key = self.keys.truncation(log_id)
        kv = self.etcd.get("get_truncation", key)
        return None if kv is None else TruncationPoint.from_bytes(kv[0], key)

    # ---- writers ---------------------------------------------------------------------

    def acquire_writer(self, log_id: int, owner: str, *, preempt: bool = False) -> WriterSession:
        """Become the log's only writer (see WriterSession); ``preempt`` fences the holder.

        WriterFencedError if another session holds the log and ``preempt`` is
        false; LogNotFoundError if the log id does not exist.
        """
        session = WriterSession.acquire(self.etcd, self.keys, log_id, owner, preempt=preempt)
        self._sessions.add(session)
        return session

    # ---- reading a log (one revision per call; ``deadline`` bounds the retries) ------

    def log_head(self, log_id: int, *, deadline: float | None = None) -> LogHead:
        """Whether the log id exists and where it is truncated, as one snapshot."""
        k = self.keys
        exists, truncation = self.etcd.read_together(
            "open_reader",
            [self.etcd.ops.get(k.log_id(log_id)), self.etcd.ops.get(k.truncation(log_id))],
            deadline=deadline,
        )
        point = (
            TruncationPoint.from_bytes(truncation[0][0], k.truncation(log_id))
            if truncation
            else None
        )
        return LogHead(bool(exists), point)

    def log_id_exists(self, log_id: int, *, deadline: float | None = None) -> bool:
        """Whether the log id still exists (deleting a log removes it first of all)."""
        return self.etcd.get("read_log", self.keys.log_id(log_id), deadline=deadline) is not None

    def last_segment(self, log_id: int, *, deadline: float | None = None) -> SegmentRecord | None:
        """The segment with the highest id, None if the log has none."""
        prefix = self.keys.segments_prefix(log_id)
        reply = self.etcd.call(
            "read_log",
            lambda c: c.get_prefix_response(prefix, sort_order="descend", limit=1),
            deadline=deadline,
        )
        if not reply.kvs:
            return None
        return SegmentRecord.from_bytes(reply.kvs[0].value, reply.kvs[0].key.decode())

    def next_segment_id(
        self, log_id: int, after: int, *, deadline: float | None = None
    ) -> int | None:
        """The lowest existing segment id greater than ``after`` (ids may be skipped), or None."""
        k = self.keys
        prefix = k.segments_prefix(log_id)
        start = k.segment(log_id, after + 1)
        end = etcd_utils.prefix_range_end(prefix.encode())
        reply = self.etcd.call(
            "read_log",
            lambda c: c.get_range_response(start, end, limit=1, keys_only=True),
            deadline=deadline,
        )
        if not reply.kvs:
            return None
        key = reply.kvs[0].key
        return decode_counter(key[len(prefix) :], key.decode())

    def read_segment(
        self, log_id: int, segment_id: int, from_block: int = 0, *, deadline: float | None = None
    ) -> SegmentSnapshot:
        """The log's existence, truncation point, one segment and its blocks from
        ``from_block`` on, all at one revision.

        Every block listed is committed (a commit writes its blocks and the LAC in
        one transaction). A compacted segment's blocks are its index's chunks,
        all of them: the caller skips the ones it has seen.
        """
        k, ops = self.keys, self.etcd.ops
        blocks_end = etcd_utils.prefix_range_end(k.blocks_prefix(log_id, segment_id).encode())
        exists, truncation, segment, blocks, index = self.etcd.read_together(
            "read_log",
            [
                ops.get(k.log_id(log_id)),
                ops.get(k.truncation(log_id)),
                ops.get(k.segment(log_id, segment_id)),
                ops.get(k.block(log_id, segment_id, from_block), blocks_end),
                ops.get(k.segment_index(log_id, segment_id)),
            ],
            deadline=deadline,
        )
        records = [BlockRecord.from_bytes(v, meta.key.decode()) for v, meta in blocks]
        if index:  # a compacted segment: its index replaced the block records
            records = SegmentIndex.from_bytes(
                index[0][0], k.segment_index(log_id, segment_id)
            ).blocks()
        return SegmentSnapshot(
            log_exists=bool(exists),
            truncation=(
                TruncationPoint.from_bytes(truncation[0][0], k.truncation(log_id))
                if truncation
                else None
            ),
            segment=(
                SegmentRecord.from_bytes(segment[0][0], k.segment(log_id, segment_id))
                if segment
                else None
            ),
            blocks=records,
            revision=exists[0][1].response_header.revision if exists else 0,
        )

    def segment_revision(self, log_id: int, segment_id: int) -> int | None:
        """The mod revision of a segment record (changes on every commit, seal or
        truncation), None if the segment does not exist."""
        kv = self.etcd.get("segment_revision", self.keys.segment(log_id, segment_id))
        return None if kv is None else kv[1].mod_revision

    # ---- deployment claim (see ``woodpecker.deployment``) -----------------------------

    def deployment_claim(self) -> bytes | None:
        """The value of the deployment claim key, None if unclaimed."""
        kv = self.etcd.get("read deployment claim", self.keys.deployment)
        return None if kv is None else kv[0]

    def claim_deployment(self, claim: bytes) -> bytes:
        """Create the claim key with ``claim`` unless it exists; the value there afterwards.

        Create-only: of concurrent claimers exactly one wins, and every one of them
        returns the winner's value.
        """
        key, ops = self.keys.deployment, self.etcd.ops
        ok, replies = self.etcd.txn(
            "claim deployment",
            compare=[ops.create(key) == 0],
            success=[ops.put(key, claim)],
            failure=[ops.get(key)],
        )
        return claim if ok else replies[0][0][0]

    def drop_deployment_claim(self, claim: bytes) -> None:
        """Delete the claim key if its value is still ``claim`` (else leave it alone)."""
        key, ops = self.keys.deployment, self.etcd.ops
        self.etcd.txn(
            "drop deployment claim", compare=[ops.value(key) == claim], success=[ops.delete(key)]
        )

    def ever_created_a_log(self) -> bool:
        """Whether any log was ever created under this prefix (the id counter exists)."""
        return self.etcd.get("read log id counter", self.keys.log_idgen) is not None
