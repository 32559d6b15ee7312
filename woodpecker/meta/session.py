"""``WriterSession``: the one writer of a log, fenced by etcd.

A session owns the log's writer key (``<p>/writer/<log_id>``), bound to its
lease and written with the next value of the log's persistent epoch counter.
Every change it makes is a transaction comparing that the writer key's
mod_revision is still the revision at which this session wrote it. A put by a
preempting session, a delete by lease expiry or log deletion all change (or
remove) that revision, so from then on every commit of the old session fails
and nothing more of it becomes visible. (create_revision alone would not do:
an overwrite by a preempting session keeps it.) Protocol and invariants:
``docs/fencing.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from woodpecker.errors import (
    LogNotFoundError,
    MetadataUnavailableError,
    WriterFencedError,
)
from woodpecker.meta.connection import KV, MAX_TXN_OPS, EtcdConnection, first
from woodpecker.meta.keys import Keys
from woodpecker.meta.records import (
    BlockRecord,
    EnsembleMember,
    SegmentRecord,
    SegmentState,
    TruncationPoint,
    WriterRecord,
    decode_counter,
    now_ms,
)

log = logging.getLogger(__name__)

# One commit is one etcd transaction: the block puts plus the segment update.
MAX_BLOCKS_PER_COMMIT = MAX_TXN_OPS - 1

# Acquire races only against other acquirers of the same log.
_ACQUIRE_ATTEMPTS = 16


class WriterSession:
    """Exclusive, lease-backed right to change a log's segments and blocks.

    ``epoch`` increases strictly over all sessions of a log. Once fenced
    (preempted, lease lost, log deleted or released) every method raises
    ``WriterFencedError`` without touching etcd.
    """

    def __init__(
        self,
        etcd: EtcdConnection,
        keys: Keys,
        log_id: int,
        name: str,
        record: WriterRecord,
        writer_revision: int,
        ttl: int,
        lease_started: float,
    ) -> None:
        self.log_id = log_id
        self.name = name
        self.epoch = record.epoch
        self.owner = record.owner
        self._etcd = etcd
        self._keys = keys
        self._lease_id = record.lease_id
        self._writer_revision = writer_revision
        self._ttl = ttl
        self._fenced_reason: str | None = None
        self._released = False
        self._lock = threading.Lock()
        # segment id -> (record, mod_revision) as last written or read by this session
        self._segments: dict[int, tuple[SegmentRecord, int]] = {}
        self._stop = threading.Event()
        self._keepalive_thread = threading.Thread(
            target=self._keepalive,
            args=(lease_started,),
            daemon=True,
            name=f"wp-lease-{log_id}-{self.epoch}",
        )
        self._keepalive_thread.start()

    @classmethod
    def acquire(
        cls, etcd: EtcdConnection, keys: Keys, log_id: int, owner: str, *, preempt: bool = False
    ) -> WriterSession:
        """Grant a lease, then in one txn put the writer key on it and bump the epoch.

        Without ``preempt`` the txn also requires the writer key to be absent.
        The epoch counter is compared by mod_revision, so two acquirers racing
        for the same epoch cannot both win.
        """
        ops, ttl = etcd.ops, etcd.config.etcd.lease_ttl
        lease_started = time.monotonic()
        lease_id = etcd.call("acquire_writer", lambda c: c.lease(ttl)).id
        try:
            epoch_kv = etcd.get("acquire_writer", keys.epoch(log_id))
            for _ in range(_ACQUIRE_ATTEMPTS):
                if epoch_kv is None:
                    last, guard = 0, ops.create(keys.epoch(log_id)) == 0
                else:
                    last = decode_counter(epoch_kv[0], keys.epoch(log_id))
                    guard = ops.mod(keys.epoch(log_id)) == epoch_kv[1].mod_revision
                record = WriterRecord(
                    log_id=log_id,
                    epoch=last + 1,
                    owner=owner,
                    lease_id=lease_id,
                    acquired_ms=now_ms(),
                )
                value = record.to_bytes()
                compare = [ops.version(keys.log_id(log_id)) > 0, guard]
                if not preempt:
                    compare.append(ops.create(keys.writer(log_id)) == 0)
                ok, replies = etcd.txn(
                    "acquire_writer",
                    compare,
                    success=[
                        ops.put(keys.writer(log_id), value, lease=lease_id),
                        ops.put(keys.epoch(log_id), str(record.epoch)),
                        ops.get(keys.log_id(log_id)),
                    ],
                    failure=[
                        ops.get(keys.log_id(log_id)),
                        ops.get(keys.writer(log_id)),
                        ops.get(keys.epoch(log_id)),
                    ],
                )
                if ok:
                    name = replies[2][0][0].decode()
                    revision = replies[0].response_put.header.revision
                    return cls(etcd, keys, log_id, name, record, revision, ttl, lease_started)
                name_kv, writer_kv, epoch_kv = (first(r) for r in replies)
                if name_kv is None:
                    raise LogNotFoundError(f"log id {log_id} not found")
                if writer_kv is not None and writer_kv[0] == value:
                    # our own earlier attempt, whose reply was lost
                    return cls(
                        etcd,
                        keys,
                        log_id,
                        name_kv[0].decode(),
                        record,
                        writer_kv[1].mod_revision,
                        ttl,
                        lease_started,
                    )
                if writer_kv is not None and not preempt:
                    holder = WriterRecord.from_bytes(writer_kv[0], keys.writer(log_id))
                    raise WriterFencedError(
                        f"log {name_kv[0].decode()!r} is held by session epoch "
                        f"{holder.epoch} (owner {holder.owner!r})"
                    )
                # the epoch moved: another acquirer won this round; try the next epoch
            raise MetadataUnavailableError(
                f"etcd acquire_writer: log id {log_id} stayed contended for "
                f"{_ACQUIRE_ATTEMPTS} attempts"
            )
        except BaseException:
            etcd.revoke_lease(lease_id, deadline=ttl)
            raise

    # ---- state -------------------------------------------------------------------------

    @property
    def fenced(self) -> bool:
        """True once this session can commit nothing more (for whatever reason)."""
        return self._fenced_reason is not None

    def _error(self) -> WriterFencedError:
        return WriterFencedError(
            f"log {self.name!r}: writer session epoch {self.epoch} (owner {self.owner!r}) "
            f"is fenced: {self._fenced_reason}"
        )

    def _check_live(self) -> None:
        if self._fenced_reason is not None:
            raise self._error()

    def _fence(self, reason: str) -> WriterFencedError:
        if self._fenced_reason is None:
            self._fenced_reason = reason
            log.warning("log %r: writer session epoch %d fenced: %s", self.name, self.epoch, reason)
        return self._error()

    def _check_writer(self, writer_kv: KV | None) -> None:
        """After a failed compare: fence the session unless the writer key is still ours."""
        if writer_kv is None:
            raise self._fence(
                "the writer key is gone (lease expired, session released or log deleted)"
            )
        if writer_kv[1].mod_revision != self._writer_revision:
            holder = WriterRecord.from_bytes(writer_kv[0], self._keys.writer(self.log_id))
            raise self._fence(f"preempted by session epoch {holder.epoch} (owner {holder.owner!r})")

    def _fence_if_preempted(self, writer_kv: KV | None) -> None:
        """Like _check_writer, but only records the fence (the caller's commit did land)."""
        with contextlib.suppress(WriterFencedError):
            self._check_writer(writer_kv)

    def _writer_guard(self) -> Any:
        return self._etcd.ops.mod(self._keys.writer(self.log_id)) == self._writer_revision

    # ---- segments ----------------------------------------------------------------------

    def next_segment_id(self) -> int:
        """One past the highest segment id ever used (existing or truncated), 0 if none."""
        self._check_live()
        prefix = self._keys.segments_prefix(self.log_id)
        last = self._etcd.call(
            "next_segment_id",
            lambda c: c.get_prefix_response(prefix, sort_order="descend", limit=1, keys_only=True),
        )
        candidates = [decode_counter(kv.key[len(prefix) :], kv.key.decode()) + 1 for kv in last.kvs]
        kv = self._etcd.get("next_segment_id", self._keys.truncation(self.log_id))
        if kv is not None:
            point = TruncationPoint.from_bytes(kv[0], self._keys.truncation(self.log_id))
            candidates.append(point.segment_id + 1)
        return max(candidates, default=0)

    def create_segment(
        self,
        segment_id: int,
        ensemble: Sequence[EnsembleMember] | None = None,
        ack: int | None = None,
    ) -> SegmentRecord:
        """Create an ACTIVE, empty segment; the key must not exist and we must still hold.

        A QuorumBuffer segment records its ``ensemble`` and ``ack`` here, in the create's
        CAS: recovery and readers find its nodes only through this record."""
        with self._lock:
            self._check_live()
            ops, key = self._etcd.ops, self._keys.segment(self.log_id, segment_id)
            record = SegmentRecord(
                log_id=self.log_id,
                segment_id=segment_id,
                state=SegmentState.ACTIVE,
                epoch=self.epoch,
                lac=-1,
                size=0,
                block_count=0,
                created_ms=now_ms(),
                sealed_ms=None,
                ensemble=None if ensemble is None else list(ensemble),
                ack=ack,
            )
            ok, replies = self._etcd.txn(
                "create_segment",
                [self._writer_guard(), ops.create(key) == 0],
                success=[ops.put(key, record.to_bytes())],
                failure=[ops.get(self._keys.writer(self.log_id)), ops.get(key)],
            )
            if ok:
                self._segments[segment_id] = (record, replies[0].response_put.header.revision)
                return record
            self._check_writer(first(replies[0]))
            value, meta = replies[1][0]
            existing = SegmentRecord.from_bytes(value, key)
            if existing.epoch != self.epoch:
                raise ValueError(f"log {self.name!r}: segment {segment_id} already exists")
            # created by this session (epochs are unique): an earlier attempt landed
            self._segments[segment_id] = (existing, meta.mod_revision)
            return existing

    def commit(self, segment_id: int, blocks: Sequence[BlockRecord], lac: int, size: int) -> None:
        """Commit blocks (consecutive, following the committed ones) and advance the LAC.

        One txn: the writer key is still ours and the segment unchanged since we
        last wrote it (so still ACTIVE); then the block records and the updated
        segment record are put together. WriterFencedError if the fence failed.
        """
        with self._lock:
            self._check_live()
            record, revision = self._own_segment(segment_id)
            self._check_blocks(record, blocks, lac, size)
            updated = dataclasses.replace(
                record, lac=lac, size=size, block_count=record.block_count + len(blocks)
            )
            ops, key = self._etcd.ops, self._keys.segment(self.log_id, segment_id)
            value = updated.to_bytes()
            puts = [
                ops.put(self._keys.block(self.log_id, segment_id, b.block_id), b.to_bytes())
                for b in blocks
            ]
            last_block = self._keys.block(self.log_id, segment_id, blocks[-1].block_id)
            ok, replies = self._etcd.txn(
                "commit",
                [self._writer_guard(), ops.mod(key) == revision],
                success=[*puts, ops.put(key, value)],
                failure=[
                    ops.get(self._keys.writer(self.log_id)),
                    ops.get(key),
                    ops.get(last_block),
                ],
            )
            if ok:
                self._segments[segment_id] = (updated, replies[-1].response_put.header.revision)
                return
            current, landed = first(replies[1]), first(replies[2])
            if landed is not None and landed[0] == blocks[-1].to_bytes():
                # An earlier attempt of this very commit landed (its reply was lost): the
                # txn is atomic and only this session writes this epoch's block records,
                # so the commit passed the fence when it was applied. It is a success even
                # if the session has been preempted since; that is noticed afterwards.
                if current is not None and current[0] == value:
                    self._segments[segment_id] = (updated, current[1].mod_revision)
                else:
                    self._segments[segment_id] = (updated, -1)
                    self._fence_if_preempted(first(replies[0]))
                return
            self._check_writer(first(replies[0]))
            if current is not None:
                self._segments[segment_id] = (
                    SegmentRecord.from_bytes(current[0], key),
                    current[1].mod_revision,
                )
            raise MetadataUnavailableError(
                f"log {self.name!r} segment {segment_id}: changed since this session last "
                "wrote it (a commit whose outcome was unknown landed); roll the segment"
            )

    def _own_segment(self, segment_id: int) -> tuple[SegmentRecord, int]:
        try:
            record, revision = self._segments[segment_id]
        except KeyError:
            raise ValueError(
                f"log {self.name!r}: segment {segment_id} was not created by this session"
            ) from None
        if record.state is not SegmentState.ACTIVE:
            raise ValueError(f"log {self.name!r}: segment {segment_id} is {record.state}")
        return record, revision

    def _check_blocks(
        self, record: SegmentRecord, blocks: Sequence[BlockRecord], lac: int, size: int
    ) -> None:
        """Blocks must continue the segment densely, so the LAC covers a contiguous prefix."""
        where = f"log {self.name!r} segment {record.segment_id}"
        if not 0 < len(blocks) <= MAX_BLOCKS_PER_COMMIT:
            raise ValueError(
                f"{where}: commit 1..{MAX_BLOCKS_PER_COMMIT} blocks, not {len(blocks)}"
            )
        next_block, next_entry = record.block_count, record.lac + 1
        for b in blocks:
            if (b.log_id, b.segment_id, b.block_id, b.first_entry_id) != (
                self.log_id,
                record.segment_id,
                next_block,
                next_entry,
            ):
                raise ValueError(
                    f"{where}: expected block {next_block} starting at entry {next_entry}, "
                    f"got log {b.log_id} segment {b.segment_id} block {b.block_id} "
                    f"starting at entry {b.first_entry_id}"
                )
            next_block, next_entry = next_block + 1, b.last_entry_id + 1
        if lac != next_entry - 1:
            raise ValueError(
                f"{where}: lac {lac} is not the last entry {next_entry - 1} of the blocks"
            )
        if size < record.size:
            raise ValueError(f"{where}: size {size} is below the committed {record.size}")

    def seal_segment(self, segment_id: int, last_entry: int | None = None) -> SegmentRecord:
        """ACTIVE -> SEALED at the committed LAC (idempotent for a sealed segment).

        A quorum segment's LAC is not in etcd: its writer gives ``last_entry``."""
        with self._lock:
            self._check_live()
            cached = self._segments.get(segment_id)
            if cached is None:
                key = self._keys.segment(self.log_id, segment_id)
                kv = self._etcd.get("seal_segment", key)
                if kv is None:
                    raise ValueError(f"log {self.name!r}: segment {segment_id} does not exist")
                cached = (SegmentRecord.from_bytes(kv[0], key), kv[1].mod_revision)
            return self._seal(*cached, last_entry)

    def _seal(
        self, record: SegmentRecord, revision: int, last_entry: int | None = None
    ) -> SegmentRecord:
        """Seal at the LAC in etcd (or at ``last_entry``); re-read and retry if our own
        unknown write moved it."""
        ops, key = self._etcd.ops, self._keys.segment(self.log_id, record.segment_id)
        for _ in range(3):
            if record.state is not SegmentState.ACTIVE:
                self._segments[record.segment_id] = (record, revision)
                return record
            lac = record.lac if last_entry is None else last_entry
            sealed = dataclasses.replace(
                record, state=SegmentState.SEALED, sealed_ms=now_ms(), lac=lac
            )
            ok, replies = self._etcd.txn(
                "seal_segment",
                [self._writer_guard(), ops.mod(key) == revision],
                success=[ops.put(key, sealed.to_bytes())],
                failure=[ops.get(self._keys.writer(self.log_id)), ops.get(key)],
            )
            if ok:
                self._segments[record.segment_id] = (
                    sealed,
                    replies[0].response_put.header.revision,
                )
                return sealed
            self._check_writer(first(replies[0]))
            current = first(replies[1])
            if current is None:
                raise ValueError(f"log {self.name!r}: segment {record.segment_id} was deleted")
            # the writer key is ours, so only this session changed the segment
            record = SegmentRecord.from_bytes(current[0], key)
            revision = current[1].mod_revision
        raise MetadataUnavailableError(
            f"log {self.name!r} segment {record.segment_id}: seal kept conflicting"
        )

    def recover(
        self, quorum_last: Callable[[SegmentRecord], int] | None = None
    ) -> list[SegmentRecord]:
        """Seal, at their committed LAC, the ACTIVE segments left by earlier sessions.

        Blocks past a segment's LAC were never committed: readers never see them. A
        quorum segment's last entry comes from ``quorum_last``, which fences its
        ensemble with this session's epoch (docs/quorum.md, "Recovery").
        """
        with self._lock:
            self._check_live()
            prefix = self._keys.segments_prefix(self.log_id)
            sealed = []
            for value, meta in self._etcd.scan("recover", prefix):
                record = SegmentRecord.from_bytes(value, meta.key.decode())
                if record.state is SegmentState.ACTIVE and record.epoch < self.epoch:
                    last = None
                    if record.quorum:
                        if quorum_last is None:
                            raise ValueError(
                                f"log {self.name!r} segment {record.segment_id} is a quorum "
                                "segment: recovering it needs its nodes"
                            )
                        last = quorum_last(record)
                    sealed.append(self._seal(record, meta.mod_revision, last))
            return sealed

    # ---- lease -------------------------------------------------------------------------

    def _keepalive(self, last_ok: float) -> None:
        """Refresh the lease every ttl/3; give up once it may have expired."""
        interval = self._ttl / 3
        wait = interval
        while not self._stop.wait(wait):
            sent = time.monotonic()
            try:
                replies = self._etcd.call(
                    "lease_keepalive", lambda c: list(c.refresh_lease(self._lease_id)), deadline=0
                )
                remaining = replies[0].TTL
            except Exception as e:  # any failure is a missed refresh, never a dead thread
                if time.monotonic() - last_ok >= self._ttl:
                    self._fence(f"lease not refreshed for {self._ttl}s ({e})")
                    return
                wait = min(interval, 0.5)
                continue
            if remaining <= 0:
                self._fence("the lease expired")
                return
            last_ok, wait = sent, interval

    def _stop_keepalive(self) -> None:
        self._stop.set()
        self._keepalive_thread.join()

    def release(self) -> None:
        """Give the log up: revoke the lease, which deletes the writer key if still ours.

        Idempotent and best effort: if etcd is unreachable the lease simply
        expires after its TTL, so this never waits longer than that.
        """
        with self._lock:
            if self._released:
                return
            self._released = True
            if self._fenced_reason is None:
                self._fenced_reason = "the session was released"
        self._stop_keepalive()
        self._etcd.revoke_lease(self._lease_id, deadline=self._ttl)

    close = release  # the usual name for giving a resource back

    def __enter__(self) -> WriterSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = f"fenced: {self._fenced_reason}" if self._fenced_reason else "live"
        return (
            f"WriterSession(log={self.name!r}, log_id={self.log_id}, epoch={self.epoch}, "
            f"owner={self.owner!r}, {state})"
        )
