"""Entry identity and positions: ``LogMessageId``, ``LogMessageIds``, ``LogMessage``,
``EARLIEST``, ``LATEST``."""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, overload

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


class LogMessageIds(Sequence[LogMessageId]):
    """The ids of one ``write_batch``: consecutive entries of one segment.

    Behaves as a read-only list of ``LogMessageId`` (``len``, indexing, negative
    indices, slicing, iteration, ``in``, ``index``, ``count``; equal to the list
    of the same ids) but holds only ``(segment_id, range of entry ids)``: an id
    is built when it is read, so a batch of many small entries is acknowledged
    without building one object per entry.
    """

    __slots__ = ("entry_ids", "segment_id")

    def __init__(self, segment_id: int, entry_ids: range) -> None:
        self.segment_id = segment_id
        self.entry_ids = entry_ids

    def __len__(self) -> int:
        return len(self.entry_ids)

    @overload
    def __getitem__(self, index: int) -> LogMessageId: ...

    @overload
    def __getitem__(self, index: slice) -> LogMessageIds: ...

    def __getitem__(self, index: int | slice) -> LogMessageId | LogMessageIds:
        if isinstance(index, slice):
            return LogMessageIds(self.segment_id, self.entry_ids[index])
        return LogMessageId(self.segment_id, self.entry_ids[index])

    def __iter__(self) -> Iterator[LogMessageId]:
        # tuple.__new__ through map builds the ids at C speed (no Python __new__ per id)
        pairs = zip(itertools.repeat(self.segment_id), self.entry_ids)
        return map(tuple.__new__, itertools.repeat(LogMessageId), pairs)

    def __reversed__(self) -> Iterator[LogMessageId]:
        return iter(self[::-1])

    def __contains__(self, value: object) -> bool:
        return (
            isinstance(value, tuple)
            and len(value) == 2
            and value[0] == self.segment_id
            and value[1] in self.entry_ids
        )

    def index(self, value: Any, start: int = 0, stop: int | None = None) -> int:
        """The position of ``value`` (``ValueError`` if absent), as ``list.index``."""
        window = range(len(self))[start:stop]
        if value in self:
            at = self.entry_ids.index(value[1])
            if at in window:
                return at
        raise ValueError(f"{value!r} is not in the ids")

    def count(self, value: Any) -> int:
        return 1 if value in self else 0

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LogMessageIds):
            return self.entry_ids == other.entry_ids and (
                not self.entry_ids or self.segment_id == other.segment_id
            )
        if isinstance(other, list):
            return len(other) == len(self) and all(map(operator.eq, self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which are unhashable

    def __repr__(self) -> str:
        return f"LogMessageIds({self.segment_id}, {self.entry_ids!r})"

    def __reduce__(self) -> tuple[type[LogMessageIds], tuple[int, range]]:
        return LogMessageIds, (self.segment_id, self.entry_ids)


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
