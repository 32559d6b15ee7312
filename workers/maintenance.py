"""Maintenance: retention, garbage collection and compaction, run by every logstore.

One pass (``Maintenance.run_once``) walks every log:

1. **retention**: segments wholly before the truncation point go SEALED ->
   TRUNCATED; ``retention.ttl`` later, unless a live reader is positioned at or
   before them, their metadata is deleted and their objects become a
   PendingDeletion;
2. **compaction**: finished segments of several blocks are rewritten into Arrow
   IPC files of about ``compaction.target_bytes`` and their block records
   replaced by one segment index;
3. **pending deletions** whose deadline passed delete their objects;
4. **orphan sweep**: objects under ``<log_id>/`` that no block record references
   and no PendingDeletion lists, older than ``retention.orphan_grace``, go; so do
   multipart uploads of such keys left open that long (their uploader was killed);
5. **etcd**: its revision history older than ``etcd.history_retention`` is
   compacted, and its database size is checked against its quota (a warning
   at 80 %, an error while an alarm is raised).

Every metadata change is a compare-and-swap (``woodpecker.meta.lifecycle``), so
any number of logstores may run passes at once. The safety argument (stalled
writers, slow readers, concurrent maintainers) is in ``docs/lifecycle.md``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from woodpecker.config import Config
from woodpecker.deployment import verify_deployment
from woodpecker.errors import CorruptedDataError, WoodpeckerError
from woodpecker.format import checksum, decode_block, decode_messages, encode_file
from woodpecker.meta import (
    BlockRecord,
    LogRecord,
    MetaStore,
    SegmentIndex,
    SegmentRecord,
    SegmentState,
)
from woodpecker.meta.history import HistoryCompactor
from woodpecker.meta.lifecycle import Lifecycle, Versioned
from woodpecker.meta.readers import live_readers
from woodpecker.meta.records import TruncationPoint
from woodpecker.meta.space import EtcdSpace, QuotaWatch
from woodpecker.storage import ObjectInfo, ObjectStore
from workers import metrics

log = logging.getLogger("woodpecker.maintenance")

COMPACTION_READERS = 8
"""Block GETs in flight while a segment is compacted."""


class ActionKind(enum.StrEnum):
    TRUNCATE = "truncate-segment"  # SEALED -> TRUNCATED
    HOLD = "held-by-reader"  # deletion postponed: a live reader still needs the segment
    DELETE_SEGMENT = "delete-segment"  # metadata deleted, objects pending
    COMPACT = "compact-segment"  # blocks rewritten into IPC files + an index, old objects pending
    DELETE_OBJECTS = "delete-objects"  # a PendingDeletion carried out
    DELETE_ORPHANS = "delete-orphans"  # unreferenced objects past the grace
    ABORT_UPLOADS = "abort-uploads"  # multipart uploads left open past the grace
    COMPACT_HISTORY = "compact-etcd-history"  # etcd revisions older than the retention


for _kind in ActionKind:
    metrics.maintenance_actions.labels(_kind.value)  # every series exists from the start


@dataclass(frozen=True)
class Action:
    """One thing a pass did (or, dry, would do), and why."""

    kind: ActionKind
    log_id: int
    segment_id: int | None
    keys: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Waiting:
    """Objects already condemned whose deletion is not due yet: when it is, and why."""

    log_id: int
    objects: int
    bytes: int | None  # None: not listed in this pass
    due: float  # wall-clock seconds
    reason: str


@dataclass
class MaintenanceReport:
    """What one pass did; ``errors`` are steps that failed and are retried next pass.

    ``waiting`` lists deletions that are decided but not due yet (so a dry run
    explains where the space of a deleted log or truncated segment still is).
    """

    now: float
    dry_run: bool
    actions: list[Action] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)
    segment_states: dict[str, int] = field(
        default_factory=lambda: {s.value.lower(): 0 for s in SegmentState}
    )
    etcd_space: EtcdSpace | None = None

    def add(
        self,
        kind: ActionKind,
        log_id: int,
        segment_id: int | None,
        keys: Any = (),
        reason: str = "",
    ) -> None:
        self.actions.append(Action(kind, log_id, segment_id, tuple(keys), reason))

    def of(self, kind: ActionKind) -> list[Action]:
        return [a for a in self.actions if a.kind is kind]

    def keys(self, kind: ActionKind) -> list[str]:
        """Every object key the actions of ``kind`` name."""
        return [k for a in self.of(kind) for k in a.keys]


def log_id_of(key: str) -> int | None:
    """The log id an object key belongs to (``<log_id>/...``); None for keys not ours."""
    head, sep, _ = key.partition("/")
    if not sep or not head.isdigit() or head.startswith("0"):
        return None
    return int(head)


def plan_groups(
    blocks: list[Versioned[BlockRecord]], target: int
) -> list[list[Versioned[BlockRecord]]]:
    """Consecutive blocks packed into runs of at most ``target`` bytes (a bigger block alone)."""
    groups: list[list[Versioned[BlockRecord]]] = []
    size = 0
    for b in blocks:
        if groups and size + b.record.length <= target:
            groups[-1].append(b)
            size += b.record.length
        else:
            groups.append([b])
            size = b.record.length
    return groups


class Maintenance:
    """Retention, GC and compaction over every log of ``meta``, on objects of ``store``."""

    def __init__(self, config: Config, meta: MetaStore, store: ObjectStore) -> None:
        self.config = config
        self.meta = meta
        self.store = store
        self.lifecycle = Lifecycle(meta)
        self.history = HistoryCompactor(meta, config.etcd.history_retention)
        self.quota = QuotaWatch(meta)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        stall_bound = 2 * config.retry.deadline + config.etcd.lease_ttl
        if config.retention.orphan_grace < stall_bound:
            log.warning(
                "retention.orphan_grace=%ss is below %ss (2 x retry.deadline + etcd.lease_ttl): "
                "a block uploaded by a writer that stalls that long may be swept before its commit",
                config.retention.orphan_grace,
                stall_bound,
            )

    # ---- the pass ----------------------------------------------------------------------

    def run_once(
        self, now: float | None = None, *, dry_run: bool = False, sweep: bool = True
    ) -> MaintenanceReport:
        """One pass over every log at wall-clock time ``now``; ``dry_run`` changes nothing.

        ``sweep`` includes the orphan sweep, which lists every object of the store.
        Raises ``ConfigError`` before touching anything when the deployment's claims
        disagree: etcd and the store then belong to different deployments, and every
        object of the other one would look like an orphan.
        """
        verify_deployment(self.config, self.meta, self.store, claim=not dry_run)
        report = MaintenanceReport(time.time() if now is None else now, dry_run)
        logs = self._step(report, "list logs", self.lifecycle.logs) or []
        for record in logs:
            if self._stop.is_set():
                return report
            self._step(report, f"log {record.name!r}", self._maintain_log, record, report)
        self._step(report, "pending deletions", self._carry_out_pending, report)
        if sweep:
            self._step(report, "orphan sweep", self._sweep_orphans, report)
        if not dry_run:
            self._step(report, "etcd history compaction", self._compact_history, report)
        report.etcd_space = self._step(report, "etcd space", self.quota.check)
        return report

    def _compact_history(self, report: MaintenanceReport) -> None:
        revision = self.history.run()
        if revision is not None:
            report.add(
                ActionKind.COMPACT_HISTORY,
                0,
                None,
                reason=f"etcd history compacted to revision {revision} "
                f"(etcd.history_retention {self.config.etcd.history_retention:g}s)",
            )

    @staticmethod
    def _step(report: MaintenanceReport, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one step; a backend failure is reported and the pass goes on."""
        try:
            return fn(*args)
        except WoodpeckerError as e:
            log.warning("maintenance: %s failed: %s", what, e)
            report.errors.append(f"{what}: {e}")
            return None

    def _maintain_log(self, record: LogRecord, report: MaintenanceReport) -> None:
        point = self.lifecycle.truncation(record.log_id)
        what = repr(record.name)
        if point is not None:
            self._step(report, f"retention of {what}", self._retention, record, point, report)
        self._step(report, f"compaction of {what}", self._compaction, record, point, report)

    # ---- retention ---------------------------------------------------------------------

    def _retention(
        self, record: LogRecord, point: TruncationPoint, report: MaintenanceReport
    ) -> None:
        """Truncate, then delete, the segments wholly before the truncation point.

        Never the segment holding the point, nothing after it, never an ACTIVE
        segment (a crashed writer's: the next writer seals it, a later pass
        truncates it), never one a live reader is positioned at or before.
        """
        now_ms = _ms(report.now)
        readers = None
        for seg in self.lifecycle.segments(record.log_id):
            r = seg.record
            if r.segment_id >= point.segment_id:
                break
            if r.state is SegmentState.ACTIVE:
                continue
            if r.state is SegmentState.SEALED:
                marked = self._mark_truncated(seg, report)
                if marked is None:
                    continue
                seg = marked
            stamp = seg.record.truncated_ms or seg.record.sealed_ms or seg.record.created_ms
            if now_ms - stamp < self.config.retention.ttl * 1000:
                continue
            if readers is None:  # lowest first; a malformed one raises: nothing is deleted
                readers = live_readers(self.meta, record.log_id)
            if readers and readers[0].segment_id <= r.segment_id:
                holder = readers[0]
                report.add(
                    ActionKind.HOLD,
                    r.log_id,
                    r.segment_id,
                    reason=f"reader {holder.name!r} is at {holder.segment_id}:{holder.entry_id}",
                )
                continue
            keys = sorted({b.record.key for b in self.lifecycle.blocks(r.log_id, r.segment_id)})
            if not report.dry_run and not self.lifecycle.delete_segment(
                seg, keys, now_ms + self._grace_ms()
            ):
                continue  # changed meanwhile (another maintainer): the next pass looks again
            report.add(
                ActionKind.DELETE_SEGMENT,
                r.log_id,
                r.segment_id,
                keys,
                f"truncated {(now_ms - stamp) / 1000:.0f}s ago (retention.ttl "
                f"{self.config.retention.ttl:g}s), before truncation point "
                f"{point.segment_id}:{point.entry_id}",
            )

    def _mark_truncated(
        self, seg: Versioned[SegmentRecord], report: MaintenanceReport
    ) -> Versioned[SegmentRecord] | None:
        now_ms = _ms(report.now)
        if report.dry_run:
            marked = dataclasses.replace(
                seg.record, state=SegmentState.TRUNCATED, truncated_ms=now_ms
            )
            result: Versioned[SegmentRecord] | None = Versioned(marked, seg.key, seg.revision)
        else:
            result = self.lifecycle.mark_truncated(seg, now_ms)
        if result is not None:
            r = seg.record
            report.add(
                ActionKind.TRUNCATE, r.log_id, r.segment_id, reason="before the truncation point"
            )
        return result

    def _grace_ms(self) -> int:
        return int(self.config.retention.orphan_grace * 1000)

    # ---- compaction --------------------------------------------------------------------

    def _compaction(
        self, record: LogRecord, point: TruncationPoint | None, report: MaintenanceReport
    ) -> None:
        """Compact finished segments not compacted yet, except those retention deletes soon."""
        for seg in self.lifecycle.segments(record.log_id):
            r = seg.record
            report.segment_states[r.state.value.lower()] += 1
            if self._stop.is_set():
                continue
            if (
                r.state is not SegmentState.ACTIVE
                and r.compacted_ms is None
                and r.block_count >= self.config.compaction.min_blocks
                and not self._deleted_soon(r, point, _ms(report.now))
            ):
                self._compact(seg, report)

    def _deleted_soon(self, r: SegmentRecord, point: TruncationPoint | None, now_ms: int) -> bool:
        """Whether retention deletes the segment by the next pass (compacting it is wasted)."""
        if point is None or r.segment_id >= point.segment_id:
            return False
        stamp = r.truncated_ms or now_ms
        retention = self.config.retention
        return stamp + (retention.ttl - retention.interval) * 1000 <= now_ms

    def _compact(self, seg: Versioned[SegmentRecord], report: MaintenanceReport) -> None:
        """Rewrite a segment's blocks into Arrow IPC files and its block records into one index.

        Runs of blocks up to ``compaction.target_bytes`` become one IPC file each
        (blocks are read and verified first: corruption is never copied); the
        index lists chunks of up to ``compaction.chunk_bytes`` of record batch
        messages with a fresh checksum, which is what readers fetch by range.
        One txn swaps the block records for the index (``Lifecycle.index_segment``);
        if the segment changed meanwhile nothing is swapped and the files are
        orphans for the sweep.
        """
        r, now_ms = seg.record, _ms(report.now)
        blocks = self.lifecycle.blocks(r.log_id, r.segment_id)
        if self.lifecycle.meta.segment_revision(r.log_id, r.segment_id) != seg.revision:
            return  # changed since it was listed (another maintainer): the next pass looks again
        if len(blocks) != r.block_count or any(b.record.messages_only for b in blocks):
            raise CorruptedDataError(
                f"compaction: log {r.log_id} segment {r.segment_id} has {len(blocks)} block "
                f"records, its record counts {r.block_count}; left as it is"
            )
        groups = plan_groups(blocks, self.config.compaction.target_bytes)
        before = sorted({b.record.key for b in blocks})
        files = [
            f"{r.log_id}/{r.segment_id}/compacted-{g[0].record.block_id}-{uuid.uuid4().hex[:12]}"
            ".arrow"
            for g in groups
        ]
        reason = (
            f"{len(before)} objects -> {len(files)} Arrow IPC files, "
            f"{len(blocks)} block records -> 1 index"
        )
        if report.dry_run:
            report.add(ActionKind.COMPACT, r.log_id, r.segment_id, files, reason)
            return
        started = time.monotonic()
        chunks: list[list[int]] = []
        with ThreadPoolExecutor(COMPACTION_READERS, thread_name_prefix="wp-compact") as pool:
            for number, (key, group) in enumerate(zip(files, groups, strict=True)):
                tables = list(pool.map(self._read_block, [b.record for b in group]))
                data, spans = encode_file(tables)
                chunks += self._chunks(number, data, group, spans)
                self.store.put(key, data)
        if time.monotonic() - started > self.config.retention.orphan_grace / 2:
            report.errors.append(
                f"compaction of log {r.log_id} segment {r.segment_id} took longer than half of "
                "retention.orphan_grace; abandoned (its files are orphans)"
            )
            return
        index = SegmentIndex(log_id=r.log_id, segment_id=r.segment_id, objects=files, chunks=chunks)
        if self.lifecycle.index_segment(seg, index, before, now_ms + self._grace_ms(), now_ms):
            report.add(ActionKind.COMPACT, r.log_id, r.segment_id, files, reason)
        else:
            log.info(
                "compaction: log %d segment %d changed meanwhile; its files are orphans",
                r.log_id,
                r.segment_id,
            )

    def _read_block(self, b: BlockRecord) -> pa.Table:
        """A block's entries, verified like a reader verifies them (on the pool)."""
        return decode_block(
            self.store.get(b.key, b.offset, b.length),
            expected_checksum=b.checksum,
            expected_entries=b.entry_count,
            where=f"compaction: log {b.log_id} segment {b.segment_id} block {b.block_id}",
        )

    def _chunks(
        self,
        number: int,
        data: pa.Buffer,
        group: list[Versioned[BlockRecord]],
        spans: list[tuple[int, int]],
    ) -> list[list[int]]:
        """Index chunks of file ``number``: consecutive blocks up to ``compaction.chunk_bytes``.

        Each chunk is parsed back before it is indexed, so an index never names
        bytes that do not decode to its entries.
        """
        limit = self.config.compaction.chunk_bytes
        runs: list[list[int]] = []  # [object, first, count, size, offset, length]
        for b, (offset, length) in zip(group, spans, strict=True):
            last = runs[-1] if runs else None
            if last is not None and last[5] + length <= limit:
                last[2] += b.record.entry_count
                last[3] += b.record.size
                last[5] += length
            else:
                runs.append(
                    [number, b.record.first_entry_id, b.record.entry_count, b.record.size,
                     offset, length]
                )  # fmt: skip
        chunks = []
        for obj, first, count, size, offset, length in runs:
            part = data[offset : offset + length]
            digest = checksum([part])
            decode_messages(part, expected_checksum=digest, expected_entries=count)
            chunks.append([obj, first, count, size, offset, length, digest])
        return chunks

    # ---- garbage collection ------------------------------------------------------------

    def _carry_out_pending(self, report: MaintenanceReport) -> None:
        """Delete the objects of every PendingDeletion past its deadline, then the entry.

        The block records are read after the entries and any key they still
        reference is kept: by construction none is, so that would be a bug,
        reported instead of acted on.
        """
        now_ms = _ms(report.now)
        entries = self.lifecycle.pending_deletions()
        ripe = [e for e in entries if e.record.not_before_ms <= now_ms]
        for entry in entries:
            if entry.record.not_before_ms > now_ms:
                r = entry.record
                report.waiting.append(
                    Waiting(r.log_id, len(r.keys), None, r.not_before_ms / 1000, r.reason)
                )
        referenced: dict[int, set[str]] = {}
        for entry in ripe:
            log_id = entry.record.log_id
            if log_id not in referenced:
                referenced[log_id] = {b.record.key for b in self.lifecycle.blocks(log_id)}
            keys = [k for k in entry.record.keys if k not in referenced[log_id]]
            if len(keys) < len(entry.record.keys):
                kept = sorted(set(entry.record.keys) - set(keys))
                log.error("pending deletion %s lists referenced objects %s: kept", entry.key, kept)
                report.errors.append(f"{entry.key}: lists referenced objects {kept}; kept them")
            if not report.dry_run:
                self.store.delete_many(keys)
                self.lifecycle.forget_deletion(entry)
            report.add(ActionKind.DELETE_OBJECTS, log_id, None, keys, entry.record.reason)

    def _sweep_orphans(self, report: MaintenanceReport) -> None:
        """Delete objects no committed metadata references, once older than the grace.

        Reads in this order: objects, then block records, then pending
        deletions. A swap or segment deletion replaces references by a
        PendingDeletion in one txn, so a key unreferenced in the block read is
        listed in the (later) pending read; and an object is never referenced
        again once unreferenced. The only object that can gain a reference is a
        fresh upload, which the grace protects.
        """
        grace = self.config.retention.orphan_grace
        cutoff = report.now - grace
        candidates: dict[int, list[str]] = {}
        young: dict[int, list[ObjectInfo]] = {}
        for info in self.store.list(""):
            log_id = log_id_of(info.key)
            if log_id is not None:
                if info.mtime <= cutoff:
                    candidates.setdefault(log_id, []).append(info.key)
                else:
                    young.setdefault(log_id, []).append(info)
        for log_id, infos in young.items():
            if self._log_deleted(log_id):
                report.waiting.append(
                    Waiting(
                        log_id,
                        len(infos),
                        sum(i.size for i in infos),
                        max(i.mtime for i in infos) + grace,
                        f"of a deleted log: removed by the orphan sweep once older than "
                        f"retention.orphan_grace {grace:g}s",
                    )
                )
        for log_id, keys in candidates.items():
            if self._stop.is_set():
                return
            referenced = {b.record.key for b in self.lifecycle.blocks(log_id)}
            pending = {k for e in self.lifecycle.pending_deletions(log_id) for k in e.record.keys}
            orphans = [k for k in keys if k not in referenced and k not in pending]
            if not orphans:
                continue
            if not report.dry_run:
                self.store.delete_many(orphans)
            why = "of a deleted log" if self._log_deleted(log_id) else "unreferenced"
            report.add(
                ActionKind.DELETE_ORPHANS,
                log_id,
                None,
                orphans,
                f"{why}, older than retention.orphan_grace {self.config.retention.orphan_grace:g}s",
            )
        self._abort_abandoned_uploads(report, cutoff)

    def _log_deleted(self, log_id: int) -> bool:
        return not self.lifecycle.meta.log_id_exists(log_id)

    def _abort_abandoned_uploads(self, report: MaintenanceReport, cutoff: float) -> None:
        """Abort multipart uploads open longer than the grace: their parts are billed
        storage, and the block could never be committed any more (the coordinator
        refuses blocks uploaded more than half the grace ago)."""
        for upload in self.store.list_multipart(""):
            log_id = log_id_of(upload.key)
            if log_id is None or upload.initiated > cutoff or self._stop.is_set():
                continue
            if not report.dry_run:
                self.store.abort_multipart(upload.key, upload.upload_id)
            report.add(
                ActionKind.ABORT_UPLOADS,
                log_id,
                None,
                [upload.key],
                f"multipart upload {upload.upload_id} open for "
                f"{report.now - upload.initiated:.0f}s, longer than retention.orphan_grace",
            )

    # ---- background thread -------------------------------------------------------------

    def start(self) -> None:
        """Run a pass now and then every ``retention.interval`` seconds, until ``stop``.

        The orphan sweep runs in the first pass and then every ``retention.sweep_interval``.
        """
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="wp-maintenance", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        next_sweep = time.monotonic()
        while not self._stop.is_set():
            sweep = time.monotonic() >= next_sweep
            if sweep:
                next_sweep = time.monotonic() + self.config.retention.sweep_interval
            try:
                report = self.run_once(sweep=sweep)
                metrics.record_maintenance(
                    [a.kind.value for a in report.actions], report.segment_states
                )
                if report.etcd_space is not None:
                    metrics.record_etcd_space(report.etcd_space.db_size, report.etcd_space.quota)
                if report.actions:
                    log.info(
                        "maintenance: %s",
                        ", ".join(f"{len(report.of(k))} {k}" for k in ActionKind if report.of(k)),
                    )
            except Exception:  # a bug in one pass must not end maintenance for good
                log.exception("maintenance pass failed")
            self._stop.wait(self.config.retention.interval)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread; waits at most ``timeout`` (default: one retry deadline) for a pass."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.config.retry.deadline if timeout is None else timeout)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
