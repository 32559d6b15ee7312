"""``LogReader``: committed entries in order, from any position, tailing the live end.

What a reader sees is decided by etcd: the block records of a segment, up to
the segment's LAC. A commit writes its block records and the new LAC in one
transaction, so every listed block is committed. Every block is verified (xxh3
checksum, Arrow structure, entry count) before any byte of it is returned. A
QuorumBuffer segment's entries not flushed yet are read from its nodes
(``woodpecker.quorum.tail``), up to the LAC they know (an ACTIVE one's is not in
etcd) and never past a sealed segment's last entry.

How it works:

- a *cursor* walks the metadata ahead of the reader: one etcd transaction
  reads, as one snapshot, the log's id key, its truncation point, the cursor's
  segment record and that segment's block records from the first unseen block;
- planned blocks are fetched ``reader.read_ahead`` at a time on a thread pool
  (range GETs at each record's offset/length) and served in order; the next
  segment is planned as soon as a sealed one is fully planned;
- when nothing more is committed the reader blocks on a ``CommitWatch`` (an
  etcd watch on the log's segment records, the commit point), not a sleep loop;
  at a quorum segment's tail a long-poll READ on one of its nodes wakes it too,
  as soon as that node's LAC reaches the entry;
- a ``ReaderRegistration`` tells garbage collection where the reader is;
- entries are served from a *serving iterator* over the current block: a
  C-level ``map`` that builds each ``LogMessage`` as it is asked for, from the
  block's payloads (copied to ``bytes`` in one pass when the block is first
  served). ``read_next`` and iteration cost one ``next()`` per entry, and the
  position is derived from how far the payload iterator has gone (``_settle``).

The user's view (positions, tailing, errors) is ``docs/reading.md``.
"""

from __future__ import annotations

import bisect
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import count, repeat

import pyarrow as pa
import pyarrow.compute as pc

from woodpecker import forking
from woodpecker.errors import (
    CorruptedDataError,
    ForkedClientError,
    LogNotFoundError,
    ObjectNotFoundError,
    PositionTruncatedError,
    QuorumUnavailableError,
    ReaderClosedError,
    WoodpeckerError,
)
from woodpecker.format import decode_block, decode_messages
from woodpecker.message import EARLIEST, LATEST, LogMessage, LogMessageId, Position
from woodpecker.meta import BlockRecord, MetaStore, SegmentRecord, SegmentSnapshot, SegmentState
from woodpecker.meta.readers import CommitWatch, ReaderRegistration
from woodpecker.quorum.tail import TailRead, TailReads
from woodpecker.storage import ObjectStore

READ_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("segment_id", pa.int64(), nullable=False),
        pa.field("entry_id", pa.int64(), nullable=False),
        pa.field("payload", pa.binary(), nullable=False),
    ]
)
"""Columns of what ``read_batch`` and ``read_table`` return."""

MAX_BATCH_BYTES = 64 * 1024 * 1024
MAX_GET_BYTES = 32 * 1024 * 1024  # contiguous blocks fetched by one ranged GET
"""``read_batch`` stops joining further blocks into one batch past this many bytes."""

NODE_RETRY = 0.5
"""Seconds a waiting reader pauses before asking a quorum segment's nodes again when none
answered (a seal or a new segment in etcd ends the pause sooner)."""

_ONE = pa.scalar(1, pa.int64())
_new_tuple = tuple.__new__  # builds LogMessageId / LogMessage tuples without a Python __new__


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    return time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


@dataclass(slots=True)
class _Cursor:
    """How far the metadata has been planned: the next entry and block id to look for."""

    segment_id: int
    next_entry: int
    next_block: int = 0
    finished: bool = False  # the segment is sealed and every entry of it is planned


@dataclass(frozen=True, slots=True)
class _Planned:
    """Entries ``start``..``last`` to serve: of a block to fetch (``record``), or of a quorum
    segment's tail read from a node already (``received``)."""

    segment_id: int
    first: int  # the first entry of the block or of what was received
    start: int
    last: int
    record: BlockRecord | None = None
    received: pa.ChunkedArray | None = None

    @classmethod
    def block(cls, record: BlockRecord, start: int, last: int) -> _Planned:
        return cls(record.segment_id, record.first_entry_id, start, last, record=record)


class _Loaded:
    """A verified block being served; ``payloads`` shares memory with the fetched bytes."""

    __slots__ = ("_ids", "_list", "_starts", "first", "last", "payloads", "segment_id")

    def __init__(self, item: _Planned, payloads: pa.ChunkedArray) -> None:
        self.segment_id = item.segment_id
        self.first = item.first
        self.last = item.last
        self.payloads = payloads
        starts, at = [], self.first
        for chunk in payloads.chunks:
            starts.append(at)
            at += len(chunk)
        self._starts = starts  # first entry id of each IPC message (chunk)
        self._list: list[bytes] | None = None
        self._ids: tuple[pa.Array, pa.Array] | None = None  # segment_id, entry_id columns

    def holds(self, pos: LogMessageId) -> bool:
        return pos.segment_id == self.segment_id and self.first <= pos.entry_id <= self.last

    def serve_from(self, entry_id: int) -> tuple[Iterator[LogMessage], Iterator[bytes]]:
        """The messages from ``entry_id`` to ``last``, made one by one as they are asked for
        without a Python-level call per entry, and the payload iterator that drives them
        (whose length hint says how far the serving went, see ``served``)."""
        if self._list is None:
            self._list = self.payloads.slice(0, self.last - self.first + 1).to_pylist()
        payloads = iter(self._list)
        payloads.__setstate__(entry_id - self.first)  # type: ignore[attr-defined]
        ids = map(_new_tuple, repeat(LogMessageId), zip(repeat(self.segment_id), count(entry_id)))
        return map(_new_tuple, repeat(LogMessage), zip(ids, payloads, strict=False)), payloads

    def served(self, payloads: Iterator[bytes]) -> LogMessageId:
        """The position after the last message served from ``payloads`` (of ``serve_from``)."""
        left = payloads.__length_hint__()  # type: ignore[attr-defined]
        return LogMessageId(self.segment_id, self.last + 1 - left)

    def slice(self, entry_id: int, limit: int) -> pa.RecordBatch:
        """Up to ``limit`` entries from ``entry_id`` within one chunk: no copy of payloads."""
        index = bisect.bisect_right(self._starts, entry_id) - 1
        chunk = self.payloads.chunk(index)
        offset = entry_id - self._starts[index]
        n = min(limit, len(chunk) - offset, self.last - entry_id + 1)
        if self._ids is None:  # once per block: the id columns of every slice are views of it
            count = self.last - self.first + 1
            self._ids = (
                pa.repeat(pa.scalar(self.segment_id, pa.int64()), count),
                pc.cumulative_sum(pa.repeat(_ONE, count), start=self.first - 1),
            )
        at = entry_id - self.first
        segment_ids, entry_ids = self._ids
        return pa.RecordBatch.from_arrays(
            [segment_ids.slice(at, n), entry_ids.slice(at, n), chunk.slice(offset, n)],
            schema=READ_SCHEMA,
        )


class LogReader:
    """Reads one log in order from ``start``; waits for entries not committed yet.

    Use one reader from one thread; ``close()`` may be called from any thread
    and ends a waiting read (``ReaderClosedError``; iteration just stops).
    Obtain readers with ``LogHandle.open_reader``.
    """

    def __init__(
        self,
        meta: MetaStore,
        store: ObjectStore,
        name: str,
        log_id: int,
        start: Position = EARLIEST,
        *,
        reader_name: str | None = None,
    ) -> None:
        self._meta = meta
        self._store = store
        self.name = name
        self.log_id = log_id
        self._closed: WoodpeckerError | None = None  # what reads raise once closed
        self._deleted = False  # the log was deleted through this reader's Client
        self._tail = TailReads(meta.config, log_id, name)  # quorum segments' unflushed tails
        self._tail_at: tuple[SegmentRecord, int] | None = None  # the entry awaited from nodes
        self._outage: float | None = None  # since when no node of a quorum segment answers
        try:
            self._pos = self._resolve(start)
        except BaseException:
            self._tail.close()
            raise
        self._cursor = _Cursor(*self._pos)
        self._planned: deque[_Planned] = deque()
        self._fetches: deque[tuple[_Planned, Future[pa.ChunkedArray]]] = deque()
        self._current: _Loaded | None = None
        self._serving: Iterator[LogMessage] | None = None  # over _current, from the position
        self._serving_payloads: Iterator[bytes] | None = None  # what drives _serving
        self._window = max(1, meta.config.reader.read_ahead)
        self._ahead_seen: int | None = None  # watch version of the last fruitless plan-ahead
        self._watch = CommitWatch(meta, log_id)
        self._registration = ReaderRegistration(meta, log_id, reader_name or "", self._pos)
        self.reader_name = self._registration.name
        self._pool = ThreadPoolExecutor(self._window, thread_name_prefix=f"wp-read-{log_id}")
        forking.track(self)
        try:
            if self._plan(None):  # fails fast on a deleted position; starts fetching now
                self._schedule()
        except QuorumUnavailableError:
            pass  # a quorum segment's nodes do not answer now: the reads ask them again
        except BaseException:
            self.close()
            raise

    # ---- positions ---------------------------------------------------------------------

    @property
    def position(self) -> LogMessageId:
        """The id of the next entry to return; ``open_reader(position)`` resumes here."""
        self._settle()
        return self._pos

    def _settle(self) -> None:
        """Fold what the serving iterator gave out into the position, and stop serving.

        Also ends an iteration suspended in the block (the iterator is left exhausted),
        so ``close()`` from another thread stops it at the next entry."""
        payloads, self._serving, self._serving_payloads = self._serving_payloads, None, None
        if payloads is not None and self._current is not None:
            self._move(self._current.served(payloads))
            payloads.__setstate__(sys.maxsize)  # type: ignore[attr-defined]

    def _resolve(self, start: Position) -> LogMessageId:
        if isinstance(start, LogMessageId):
            start.checked()
        elif start is not EARLIEST and start is not LATEST:
            raise TypeError(f"start must be EARLIEST, LATEST or a LogMessageId, not {start!r}")
        exists, truncation = self._meta.log_head(self.log_id)
        if not exists:
            raise LogNotFoundError(f"log {self.name!r} not found")
        if isinstance(start, LogMessageId):
            return start
        earliest = LogMessageId(0, 0)
        if truncation:
            earliest = LogMessageId(truncation.segment_id, truncation.entry_id + 1)
        if start is EARLIEST:
            return earliest
        return max(earliest, self._committed_end() or earliest)

    def _committed_end(self) -> LogMessageId | None:
        """Just past the last committed entry (of the last segment), None if no segment.

        An ACTIVE quorum segment's LAC is the highest its nodes report (at least what is
        flushed)."""
        last = self._meta.last_segment(self.log_id)
        if last is None:
            return None
        lac = last.lac
        if last.lac_on_nodes:
            try:
                lac = self._tail.committed_lac(self._meta, last)
            except CancelledError:
                self._check_usable()  # cancelled by close()
                raise
        return LogMessageId(last.segment_id, lac + 1)

    # ---- reading -----------------------------------------------------------------------

    def read_next(self, timeout: float | None = None) -> LogMessage | None:
        """The next entry, or None if none is committed within ``timeout`` seconds.

        ``timeout=None`` waits as long as it takes.
        """
        serving = self._serving
        if (
            serving is not None
            and self._closed is None
            and not self._deleted
            and not self._watch.deleted
        ):
            message = next(serving, None)
            if message is not None:
                return message
        if not self._ready(_deadline(timeout), wait=True):
            return None
        return next(self._serve())

    def _serve(self) -> Iterator[LogMessage]:
        """The serving iterator over the current block from the position (after ``_ready``)."""
        assert self._current is not None
        self._serving, self._serving_payloads = self._current.serve_from(self._pos.entry_id)
        return self._serving

    def read_batch(
        self, max_entries: int = 1000, timeout: float | None = None
    ) -> pa.RecordBatch | None:
        """Up to ``max_entries`` consecutive entries (columns ``READ_SCHEMA``), or None.

        Waits up to ``timeout`` for the first entry, then adds whatever is
        already fetched. Payloads are zero-copy slices of the fetched block
        when the batch lies inside one of its Arrow messages.
        """
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, not {max_entries!r}")
        self._settle()
        if not self._ready(_deadline(timeout), wait=True):
            return None
        parts: list[pa.RecordBatch] = []
        count = size = 0
        while True:
            part = self._take(max_entries - count, None)
            parts.append(part)
            count += part.num_rows
            size += part.nbytes
            if count >= max_entries or size >= MAX_BATCH_BYTES or not self._ready_now():
                break
        if len(parts) == 1:
            return parts[0]
        return pa.Table.from_batches(parts, schema=READ_SCHEMA).combine_chunks().to_batches()[0]

    def read_until(self, end: LogMessageId | None = None) -> pa.Table:
        """Every entry from the position up to ``end`` (exclusive), committed data only.

        ``end=None`` means everything committed when the call starts. Never
        waits for new commits; stops early where the committed data ends.
        """
        if end is None:
            end = self._committed_end()
            if end is None:
                return READ_SCHEMA.empty_table()
        elif not isinstance(end, LogMessageId):
            raise TypeError(f"end must be a LogMessageId or None, not {end!r}")
        else:
            end.checked()
        self._settle()
        batches = []
        # _ready may move the position into a later segment: compare again after it
        while self._pos < end and self._ready(None, wait=False) and self._pos < end:
            batches.append(self._take(sys.maxsize, end))
        return pa.Table.from_batches(batches, schema=READ_SCHEMA)

    def __iter__(self) -> Iterator[LogMessage]:
        """Every entry from the position on, waiting for new ones until ``close()``.

        Within a block, entries come straight from the serving iterator; the checks
        (closed, deleted) run between blocks, and ``close()`` / a deletion through the
        Client end the serving iterator early."""
        while True:
            try:
                message = self.read_next(timeout=None)
            except ReaderClosedError:
                return
            if message is not None:
                yield message
                serving = self._serving
                if serving is not None:
                    yield from serving

    def _move(self, pos: LogMessageId) -> None:
        self._pos = pos
        self._registration.track(pos)

    def _take(self, limit: int, end: LogMessageId | None) -> pa.RecordBatch:
        """Serve up to ``limit`` entries (and not ``end`` or past it) from the current block."""
        assert self._current is not None
        pos = self._pos
        if end is not None and end.segment_id == pos.segment_id:
            limit = min(limit, end.entry_id - pos.entry_id)
        batch = self._current.slice(pos.entry_id, limit)
        self._move(LogMessageId(pos.segment_id, pos.entry_id + batch.num_rows))
        return batch

    def _check_usable(self) -> None:
        if self._closed is not None:
            raise type(self._closed)(str(self._closed))
        if self._deleted or self._watch.deleted:
            raise LogNotFoundError(f"log {self.name!r} was deleted")

    def _ready(self, deadline: float | None, *, wait: bool) -> bool:
        """Load the block holding the entry at the position; False if none by ``deadline``.

        ``wait=False`` returns False as soon as nothing more is committed.
        """
        self._settle()
        self._check_usable()
        if wait:  # a waiting reader is pushed commits and the deletion of the log
            self._watch.ensure_armed()
        while True:
            self._check_usable()
            if self._current is not None and self._current.holds(self._pos):
                return True
            self._current = None
            if self._fetches:
                # a planned block is committed: wait for its fetch whatever the timeout
                # (bounded by the store's retry deadline), so that an entry acked before
                # the call is returned by it (read-your-writes)
                self._load_head()
                continue
            seen = self._watch.version  # before reading: a commit after the read wakes us
            try:
                planned = self._plan(deadline)
                self._outage = None
            except QuorumUnavailableError:
                if not wait or self._outage_over(deadline):
                    raise
                planned = False
            if planned:
                if not self._fetches and len(self._planned) == 1:
                    self._load_inline()  # a tail reader's new block: no thread hand-offs
                else:
                    self._schedule()
                continue
            remaining = _remaining(deadline)
            if not wait or remaining == 0.0:
                self._check_sealed_served()
                return False
            self._wait(seen, remaining)

    def _check_sealed_served(self) -> None:
        """A read that does not wait longer never calls committed entries "nothing yet":
        entries of a sealed quorum segment that no node serves yet (none knows them acked:
        its writer has not told them the final LAC) raise instead."""
        if self._tail_at is None:
            return
        seg, start = self._tail_at
        if seg.state is not SegmentState.ACTIVE and start <= seg.lac:
            raise QuorumUnavailableError(
                f"log {self.name!r} segment {seg.segment_id}: entries {start}..{seg.lac} are "
                "sealed, not in object storage yet, and no node of its ensemble serves them "
                "(none knows them acknowledged yet)"
            )

    def _wait(self, seen: int, remaining: float | None) -> None:
        """Until etcd reports a change (the watch), a quorum node's LAC reaches the entry
        the reader is at (a long-poll), or ``remaining`` seconds passed."""
        if self._outage is not None:  # no node answers: ask again after a pause, or on a seal
            pause = NODE_RETRY if remaining is None else min(remaining, NODE_RETRY)
            self._watch.wait(seen, pause)
            return
        if self._tail_at is not None:
            seg, start = self._tail_at
            self._tail.long_poll(seg, start, remaining, self._watch.wake)
        self._watch.wait(seen, remaining)

    def _outage_over(self, deadline: float | None) -> bool:
        """No node of a quorum segment answers: whether a waiting read gives up now (its
        deadline, or ``retry.deadline`` without one) rather than asking again later."""
        now = time.monotonic()
        if self._outage is None:
            self._outage = now
        if deadline is None:
            return now - self._outage >= self._meta.config.retry.deadline
        return now >= deadline

    def _ready_now(self) -> bool:
        """Whether the next entry is at hand without waiting (a failed fetch is left for later)."""
        self._settle()
        if self._current is not None and self._current.holds(self._pos):
            return True
        if not self._fetches:
            return False
        future = self._fetches[0][1]
        if not future.done() or future.cancelled() or future.exception() is not None:
            return False
        self._load_head()
        return self._current is not None and self._current.holds(self._pos)

    # ---- fetching ----------------------------------------------------------------------

    def _load_head(self) -> None:
        """Make the oldest fetch the current block, waiting for it (a committed block)."""
        item, future = self._fetches[0]
        self._load(item, future.result, queued=True)

    def _load_inline(self) -> None:
        """Fetch the one planned block on the caller's thread and make it the current block.

        What a tail reader does for each new commit: a pool hand-off there and back
        costs more than the fetch of a small block, twice a scheduling delay under load.
        """
        item = self._planned.popleft()
        self._load(item, lambda: self._fetch_one(item), queued=False)

    def _load(
        self, item: _Planned, fetched: Callable[[], pa.ChunkedArray], *, queued: bool
    ) -> None:
        """Make ``item`` the current block from ``fetched()`` (``queued``: the oldest fetch)."""
        try:
            payloads = fetched()
        except CancelledError:
            self._check_usable()  # cancelled by close()
            raise
        except ObjectNotFoundError as e:
            self._reset()
            if self._layout_changed(item):
                return  # compaction moved the block: planned again from the position
            record = item.record
            assert record is not None
            raise ObjectNotFoundError(
                f"log {self.name!r} segment {record.segment_id} block {record.block_id}: "
                f"object {record.key!r} is missing although committed metadata references it"
            ) from e
        except BaseException:
            self._reset()  # the next read plans and fetches again from the position
            raise
        if queued:
            self._fetches.popleft()
        self._current = _Loaded(item, payloads)
        self._move(LogMessageId(item.segment_id, item.start))
        self._schedule()

    def _fetch_one(self, item: _Planned) -> pa.ChunkedArray:
        """The payloads of one planned item: received from a node already, or fetched."""
        if item.received is not None:
            return item.received
        assert item.record is not None
        return self._fetch([item.record])[0]

    def _fetch(self, records: list[BlockRecord]) -> list[pa.ChunkedArray]:
        """GET contiguous blocks of one object in ONE request and verify each (on the pool).

        Compaction packs a segment's blocks into a few large Arrow IPC files,
        indexed by chunks of their messages; reading contiguous chunks with one
        ranged GET is what makes compaction cut GETs per GB.
        CorruptedDataError names log/segment/block.
        """
        first = records[0]
        total = records[-1].offset + records[-1].length - first.offset
        data = memoryview(self._store.get(first.key, first.offset, total))
        columns = []
        for record in records:
            start = record.offset - first.offset
            decode = decode_messages if record.messages_only else decode_block
            table = decode(
                data[start : start + record.length],
                expected_checksum=record.checksum,
                expected_entries=record.entry_count,
                where=f"log {self.name!r} segment {record.segment_id} block {record.block_id}",
            )
            columns.append(table.column(0))
        return columns

    def _next_group(self) -> list[_Planned]:
        """The next planned block plus those that follow it contiguously in the same object."""
        group = [self._planned.popleft()]
        if group[0].record is None:
            return group  # received from a node: nothing to fetch
        size = group[0].record.length
        while self._planned:
            prev, nxt = group[-1].record, self._planned[0].record
            if (
                prev is None
                or nxt is None
                or nxt.key != prev.key
                or nxt.offset != prev.offset + prev.length
                or size + nxt.length > MAX_GET_BYTES
            ):
                break
            group.append(self._planned.popleft())
            size += nxt.length
        return group

    def _schedule(self) -> None:
        """Keep up to ``read_ahead`` GETs in flight, planning the next segment early."""
        while len(self._fetches) < self._window:
            if not self._planned and not (self._cursor.finished and self._plan_ahead()):
                return
            group = self._next_group()
            if group[0].received is not None:  # from a node: nothing to fetch
                done: Future = Future()
                done.set_result(group[0].received)
                self._fetches.append((group[0], done))
                continue
            records = [item.record for item in group if item.record is not None]
            try:
                shared = self._pool.submit(self._fetch, records)
            except RuntimeError:  # the pool was shut down by a concurrent close()
                self._check_usable()
                raise
            for index, item in enumerate(group):
                future: Future = Future()
                shared.add_done_callback(lambda f, out=future, i=index: _relay(f, out, i))
                self._fetches.append((item, future))

    def _plan_ahead(self) -> bool:
        """Plan the next segment before the reader gets there (one attempt per request).

        Best effort: an error here surfaces when the reader itself gets there. An attempt
        that found nothing is not repeated until the watch reports a change (its etcd
        round trips would otherwise follow every block of the last segment); the
        reader's own ``_plan`` looks again when it gets there.
        """
        seen = self._watch.version
        if seen == self._ahead_seen:
            return False
        try:
            found = self._plan(time.monotonic())
        except Exception:
            found = False
        if not found:
            self._ahead_seen = seen
        return found

    def _reset(self) -> None:
        """Forget every plan and fetch; planning restarts at the position."""
        for _, future in self._fetches:
            future.cancel()
        self._fetches.clear()
        self._planned.clear()
        self._settle()
        self._current = None
        self._cursor = _Cursor(*self._pos)

    # ---- planning ----------------------------------------------------------------------

    def _plan(self, deadline: float | None) -> bool:
        """Add the next committed blocks after the cursor to the plan; False if none yet."""
        c = self._cursor
        self._tail_at = None
        if c.finished and not self._advance_cursor(deadline):
            return False
        rescanned = flushed = False
        while True:
            snap = self._snapshot(c.segment_id, c.next_block, deadline)
            if not snap.log_exists:
                raise LogNotFoundError(f"log {self.name!r} was deleted")
            seg = snap.segment
            if seg is None:
                if snap.truncated(c.segment_id, c.next_entry):
                    raise self._truncated(c, "its segment was already deleted")
                if not self._advance_cursor(deadline):
                    return False  # the segment is not created yet
                rescanned = flushed = False
                continue
            if self._select(seg, snap.blocks):
                return True
            if seg.quorum and (seg.state is SegmentState.ACTIVE or c.next_entry <= seg.lac):
                read = self._read_tail(seg, c.next_entry)
                if read.entries is not None:
                    return True
                if not read.flushed:
                    self._tail_at = (seg, c.next_entry)  # a waiting reader long-polls there
                    return False
                if not flushed:
                    flushed = True  # forgotten by the nodes since the snapshot: in etcd now
                    continue
            if c.next_entry <= seg.lac or flushed:  # committed, yet no block record holds it
                if c.next_block and not rescanned:
                    c.next_block, rescanned = 0, True  # the layout changed: look from the start
                    continue
                if snap.truncated(c.segment_id, c.next_entry):
                    raise self._truncated(c, "its blocks were already deleted")
                why = "its nodes say it was flushed" if flushed else f"LAC {seg.lac}"
                raise CorruptedDataError(
                    f"log {self.name!r} segment {seg.segment_id}: entry {c.next_entry} is "
                    f"committed ({why}) but no block record holds it"
                )
            if seg.state is SegmentState.ACTIVE or not self._advance_cursor(deadline):
                return False
            rescanned = flushed = False

    def _read_tail(self, seg: SegmentRecord, start: int) -> TailRead:
        """Read a quorum segment's unflushed entries from ``start`` from its nodes, and plan
        what they sent (never past a node's LAC nor a sealed segment's last entry)."""
        try:
            read = self._tail.read(seg, start)
        except CancelledError:
            self._check_usable()  # cancelled by close()
            raise
        got = read.entries
        if got is not None:
            self._planned.append(
                _Planned(got.segment_id, got.first, got.start, got.last, received=got.payloads)
            )
            c = self._cursor
            c.next_entry = got.last + 1
            c.finished = seg.state is not SegmentState.ACTIVE and c.next_entry > seg.lac
        return read

    def _select(self, seg: SegmentRecord, blocks: list[BlockRecord]) -> bool:
        """Plan the blocks continuing the cursor densely, up to the LAC.

        An ACTIVE quorum segment's LAC is not in etcd, but every block record of it is a
        flushed range, at or below the LAC of the node that flushed it."""
        c = self._cursor
        added = False
        end = sys.maxsize if seg.lac_on_nodes else seg.lac
        for b in blocks:
            if (b.log_id, b.segment_id) != (self.log_id, seg.segment_id):
                raise CorruptedDataError(
                    f"log {self.name!r} segment {seg.segment_id}: block record {b.block_id} "
                    f"names log {b.log_id} segment {b.segment_id}"
                )
            if b.last_entry_id < c.next_entry:
                c.next_block = b.block_id + 1  # never needed again: later reads start after it
                continue
            if b.first_entry_id > c.next_entry or c.next_entry > end:
                break
            last = min(b.last_entry_id, end)
            self._planned.append(_Planned.block(b, c.next_entry, last))
            c.next_entry, c.next_block, added = last + 1, b.block_id + 1, True
        c.finished = seg.state is not SegmentState.ACTIVE and c.next_entry > seg.lac
        return added

    def _advance_cursor(self, deadline: float | None) -> bool:
        """Move the cursor to the next existing segment (ids may be skipped); False if none."""
        budget = self._budget(deadline)
        following = self._meta.next_segment_id(
            self.log_id, self._cursor.segment_id, deadline=budget
        )
        if following is None:
            if not self._meta.log_id_exists(self.log_id, deadline=budget):
                raise LogNotFoundError(f"log {self.name!r} was deleted")
            return False
        c = self._cursor
        c.segment_id = following
        c.next_entry = c.next_block = 0
        c.finished = False
        return True

    def _layout_changed(self, item: _Planned) -> bool:
        """After a missing object: whether its block record changed (else explain the loss)."""
        record = item.record
        assert record is not None  # what a node sent is never missing
        snap = self._snapshot(record.segment_id, 0, None)
        if not snap.log_exists:
            raise LogNotFoundError(f"log {self.name!r} was deleted")
        now = next((b for b in snap.blocks if b.block_id == record.block_id), None)
        if now != record:
            return True
        if snap.truncated(record.segment_id, item.start):
            raise self._truncated(_Cursor(record.segment_id, item.start), "its data was deleted")
        return False

    def _truncated(self, c: _Cursor, why: str) -> PositionTruncatedError:
        return PositionTruncatedError(
            f"log {self.name!r}: position {LogMessageId(c.segment_id, c.next_entry)} was "
            f"truncated and {why}; open a reader at EARLIEST for the first retained entry"
        )

    # ---- metadata ----------------------------------------------------------------------

    def _budget(self, deadline: float | None) -> float | None:
        """The retry budget of one metadata read: the caller's time left, at most the default."""
        remaining = _remaining(deadline)
        return None if remaining is None else min(remaining, self._meta.config.retry.deadline)

    def _snapshot(
        self, segment_id: int, from_block: int, deadline: float | None
    ) -> SegmentSnapshot:
        snap = self._meta.read_segment(
            self.log_id, segment_id, from_block, deadline=self._budget(deadline)
        )
        if snap.log_exists:
            self._watch.observe(snap.revision)
        return snap

    # ---- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading: end a waiting read, release the registration (idempotent)."""
        self.close_with(ReaderClosedError(f"the reader of log {self.name!r} is closed"))

    # ---- package seams: the Client that opened the reader calls these ------------------

    def close_with(self, error: WoodpeckerError) -> None:
        """Close; later reads raise ``error`` (the Client closes its readers with
        ``ClientClosedError``). Idempotent: the first error stays."""
        if self._closed is not None:
            return
        self._closed = error
        self._settle()
        self._watch.close()
        self._tail.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._registration.close()

    def log_deleted(self) -> None:
        """The log was deleted through this reader's Client: the next read says so."""
        self._deleted = True
        self._settle()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forked(self, error: ForkedClientError) -> None:
        # the watch, pool and lease threads stayed in the parent; the lease is the parent's
        self._closed = error
        self._settle()

    def __repr__(self) -> str:
        state = "closed" if self._closed is not None else f"at {self.position}"
        return f"LogReader(log={self.name!r}, reader={self.reader_name!r}, {state})"


def _relay(shared: Future, out: Future, index: int) -> None:
    """Hand one block's share of a grouped GET to that block's future."""
    if shared.cancelled():
        out.cancel()
    elif shared.exception() is not None:
        out.set_exception(shared.exception())
    else:
        out.set_result(shared.result()[index])
