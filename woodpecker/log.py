"""``LogHandle``: one named log; opens its writers and readers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from woodpecker.message import EARLIEST, LogMessageId, Position
from woodpecker.meta import SegmentRecord
from woodpecker.meta.lifecycle import Lifecycle
from woodpecker.quorum.tail import TailReads
from woodpecker.reader import LogReader
from woodpecker.writer import LogWriter

if TYPE_CHECKING:
    from woodpecker.client import Client


class LogHandle:
    """A log by name and id, bound to the Client that opened it."""

    def __init__(self, client: Client, name: str, log_id: int) -> None:
        self._client = client
        self.name = name
        self.log_id = log_id

    def open_writer(self) -> LogWriter:
        """Join this host's writer session for the log (fencing other hosts' sessions)."""
        return LogWriter(self._client.producer_link(), self.name, self.log_id)

    def open_reader(self, start: Position = EARLIEST, name: str | None = None) -> LogReader:
        """Read from ``EARLIEST``, ``LATEST`` or a ``LogMessageId`` (inclusive).

        ``name`` labels the reader's registration (what GC and tools show).
        See docs/reading.md.
        """
        reader = LogReader(
            self._client.meta_store(),
            self._client.object_store(),
            self.name,
            self.log_id,
            start,
            reader_name=name,
        )
        self._client.reader_opened(reader)
        return reader

    def read_table(self, start: Position = EARLIEST, end: LogMessageId | None = None) -> pa.Table:
        """Committed entries from ``start`` (inclusive) to ``end`` (exclusive) as one Table.

        Columns ``segment_id``, ``entry_id``, ``payload``. ``end=None`` reads
        everything committed when the call starts; never waits for new entries.
        """
        with self.open_reader(start, name="read_table") as reader:
            return reader.read_until(end)

    def segments(self) -> list[SegmentRecord]:
        """The segment records of the log, oldest first."""
        return self._client.meta_store().list_segments(self.log_id)

    def truncate(self, mid: LogMessageId) -> LogMessageId:
        """Mark every entry up to and including ``mid`` as deletable; return the truncation point.

        Truncating at or behind the current point is a no-op (the current point
        is returned). ``mid`` must be committed: ``InvalidPositionError`` (a
        ``ValueError``) if its segment does not exist or it is past the
        segment's LAC, and nothing changes. An ACTIVE QuorumBuffer segment's
        LAC is the one its nodes report (``QuorumUnavailableError`` if none
        answers). Truncated segments are deleted by the logstores' maintenance
        after ``retention.ttl`` (docs/lifecycle.md).
        """
        if not isinstance(mid, LogMessageId):
            raise TypeError(f"truncate takes a LogMessageId, not {mid!r}")
        mid.checked()
        self._client.deployment_id()
        meta = self._client.meta_store()
        with TailReads(meta.config, self.log_id, self.name) as nodes:  # started only if asked
            point = Lifecycle(meta).truncate(
                self.log_id,
                self.name,
                mid.segment_id,
                mid.entry_id,
                nodes_lac=lambda segment: nodes.committed_lac(meta, segment),
            )
        return LogMessageId(point.segment_id, point.entry_id)

    def truncation_point(self) -> LogMessageId | None:
        """The last truncated entry (inclusive), or None if the log was never truncated."""
        point = self._client.meta_store().get_truncation(self.log_id)
        return None if point is None else LogMessageId(point.segment_id, point.entry_id)

    def __repr__(self) -> str:
        return f"LogHandle(name={self.name!r}, log_id={self.log_id})"
