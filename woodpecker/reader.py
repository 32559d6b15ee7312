"""``LogReader``: committed entries in order, from a position, across segments.

A reader sees only what etcd says is committed: blocks listed in a segment's
metadata, entries up to the segment's LAC. Every block is verified against the
checksum recorded with it before any byte of it is returned.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator

from woodpecker.errors import LogNotFoundError, PositionTruncatedError
from woodpecker.format import decode_block
from woodpecker.message import EARLIEST, LATEST, LogMessage, LogMessageId, Position
from woodpecker.meta import MetaStore, SegmentRecord, SegmentState
from woodpecker.storage import ObjectStore

POLL_INTERVAL = 0.02


class LogReader:
    """Reads one log from ``start``; ``read_next`` waits for entries not written yet."""

    def __init__(
        self, meta: MetaStore, store: ObjectStore, name: str, log_id: int, start: Position
    ) -> None:
        self._meta = meta
        self._store = store
        self.name = name
        self.log_id = log_id
        self._buffer: deque[LogMessage] = deque()
        self._segment, self._entry = self._resolve(start)
        self._closed = False

    def _resolve(self, start: Position) -> tuple[int, int]:
        segments = self._meta.list_segments(self.log_id)
        if start is EARLIEST:
            return (segments[0].segment_id if segments else 0), 0
        if start is LATEST:
            if not segments:
                return 0, 0
            last = segments[-1]
            if last.state == SegmentState.ACTIVE:
                return last.segment_id, last.lac + 1
            return last.segment_id + 1, 0
        if not isinstance(start, LogMessageId):
            raise TypeError(f"start must be EARLIEST, LATEST or a LogMessageId, not {start!r}")
        if segments and start.segment_id < segments[0].segment_id:
            raise PositionTruncatedError(
                f"log {self.name!r}: position {start} was truncated and deleted; "
                f"the earliest retained segment is {segments[0].segment_id}"
            )
        return start.segment_id, start.entry_id

    @property
    def position(self) -> LogMessageId:
        """The id of the next entry this reader returns."""
        if self._buffer:
            return self._buffer[0].id
        return LogMessageId(self._segment, self._entry)

    def read_next(self, timeout: float | None = None) -> LogMessage | None:
        """The next entry, or None when none is committed within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._buffer:
            if not self._fill():
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                time.sleep(POLL_INTERVAL)
        return self._buffer.popleft()

    def __iter__(self) -> Iterator[LogMessage]:
        while not self._closed:
            message = self.read_next(timeout=None)
            if message is not None:
                yield message

    def _segment_record(self) -> SegmentRecord | None:
        """The record of the segment to read next, skipping ids that were never created."""
        segments = self._meta.list_segments(self.log_id)
        if not segments and self._meta_log_gone():
            raise LogNotFoundError(f"log {self.name!r} was deleted")
        for seg in segments:
            if seg.segment_id >= self._segment:
                if seg.segment_id > self._segment:
                    self._segment, self._entry = seg.segment_id, 0
                return seg
        return None

    def _meta_log_gone(self) -> bool:
        try:
            self._meta.get_log(self.name)
        except LogNotFoundError:
            return True
        return False

    def _fill(self) -> bool:
        """Load the block holding the next entry; False when nothing new is committed."""
        seg = self._segment_record()
        if seg is None:
            return False
        if self._entry > seg.lac:
            if seg.state == SegmentState.ACTIVE:
                return False
            self._segment, self._entry = seg.segment_id + 1, 0
            return self._fill()
        for block in self._meta.list_blocks(self.log_id, seg.segment_id):
            last = block.first_entry_id + block.entry_count - 1
            if last < self._entry:
                continue
            data = self._store.get(block.key, block.offset, block.length)
            table = decode_block(
                data,
                expected_checksum=block.checksum,
                expected_entries=block.entry_count,
                where=f"log {self.name} segment {block.segment_id} block {block.block_id}",
            )
            payloads = table.column("payload").to_pylist()
            for i in range(self._entry - block.first_entry_id, block.entry_count):
                entry_id = block.first_entry_id + i
                if entry_id > seg.lac:
                    break
                self._buffer.append(LogMessage(LogMessageId(seg.segment_id, entry_id), payloads[i]))
            self._entry = min(last, seg.lac) + 1
            return True
        return False

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
