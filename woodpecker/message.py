"""Entry identity and positions: ``LogMessageId``, ``LogMessage``, ``EARLIEST``, ``LATEST``."""

from __future__ import annotations

from typing import NamedTuple


class LogMessageId(NamedTuple):
    """Where an entry lives: ``(segment_id, entry_id)``, totally ordered like a tuple."""

    segment_id: int
    entry_id: int

    def __str__(self) -> str:
        return f"{self.segment_id}:{self.entry_id}"

    @classmethod
    def parse(cls, text: str) -> LogMessageId:
        """Read the ``SEGMENT:ENTRY`` form printed by ``str()``."""
        seg, sep, entry = text.partition(":")
        if not sep or not seg.strip().isdigit() or not entry.strip().isdigit():
            raise ValueError(f"not a log position: {text!r} (expected SEGMENT:ENTRY)")
        return cls(int(seg), int(entry))


class LogMessage(NamedTuple):
    """One entry read back: its id and its payload."""

    id: LogMessageId
    payload: bytes


class _Position:
    """A symbolic start position for readers."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"woodpecker.{self._name}"


EARLIEST = _Position("EARLIEST")
"""Start at the first entry that is still retained."""

LATEST = _Position("LATEST")
"""Start after the last committed entry: only entries appended from now on."""

Position = LogMessageId | _Position
