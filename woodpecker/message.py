"""Entry identity and positions: ``LogMessageId``, ``LogMessage``, ``EARLIEST``, ``LATEST``."""

from __future__ import annotations

import re
from typing import NamedTuple

from woodpecker.errors import InvalidPositionError

MAX_ID = 2**63 - 1
"""The largest segment or entry id (ids are stored as int64)."""

_ID_RE = re.compile(r"[0-9]+")


class LogMessageId(NamedTuple):
    """Where an entry lives: ``(segment_id, entry_id)``, totally ordered like a tuple."""

    segment_id: int
    entry_id: int

    def __str__(self) -> str:
        return f"{self.segment_id}:{self.entry_id}"

    @classmethod
    def parse(cls, text: str) -> LogMessageId:
        """Read the ``SEGMENT:ENTRY`` form printed by ``str()`` (ASCII digits only)."""
        seg, sep, entry = text.strip().partition(":")
        if not sep or not _ID_RE.fullmatch(seg) or not _ID_RE.fullmatch(entry):
            raise InvalidPositionError(
                f"invalid position {text!r}: expected SEGMENT:ENTRY, two integers from 0 "
                f"to {MAX_ID}"
            )
        return cls(int(seg), int(entry)).checked()

    def checked(self) -> LogMessageId:
        """This id, if both parts are ints in ``0..MAX_ID``; else ``InvalidPositionError``."""
        if not all(type(n) is int and 0 <= n <= MAX_ID for n in self):
            raise InvalidPositionError(
                f"invalid position {self.segment_id!r}:{self.entry_id!r}: ids are integers "
                f"from 0 to {MAX_ID}"
            )
        return self


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
