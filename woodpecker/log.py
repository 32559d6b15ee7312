"""``LogHandle``: one named log; opens its writers and readers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from woodpecker.message import EARLIEST, Position
from woodpecker.meta import SegmentRecord
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
        return LogWriter(self._client._producer_link(), self.name, self.log_id)

    def open_reader(self, start: Position = EARLIEST) -> LogReader:
        """Read from ``EARLIEST``, ``LATEST`` or a ``LogMessageId`` (inclusive)."""
        return LogReader(
            self._client._meta_store(), self._client._object_store(), self.name, self.log_id, start
        )

    def segments(self) -> list[SegmentRecord]:
        """The segment records of the log, oldest first."""
        return self._client._meta_store().list_segments(self.log_id)

    def __repr__(self) -> str:
        return f"LogHandle(name={self.name!r}, log_id={self.log_id})"
