"""Metadata records stored as etcd values, encoded as JSON with orjson.

Records are frozen dataclasses: a value read from etcd is a snapshot, and a
change is a new record written by a guarded transaction. Constructing a record
checks every field's type and range, so a record that exists is well formed;
``from_bytes`` turns any malformed or wrong-typed value into a
``CorruptedDataError`` naming the etcd key, never a half-built record. Unknown
JSON fields are ignored so that a newer version can add fields.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Self

import orjson

from woodpecker.errors import CorruptedDataError

_U64_MAX = 2**64 - 1


def at_least(n: int) -> Any:
    """A required int field of a ``Record`` whose value must be >= n."""
    return field(metadata={"min": n})


def now_ms() -> int:
    """Wall-clock milliseconds, the timestamp records carry."""
    return time.time_ns() // 1_000_000


class SegmentState(enum.StrEnum):
    """Lifecycle of a segment; stored by value, so new states can be appended."""

    ACTIVE = "ACTIVE"
    SEALED = "SEALED"
    TRUNCATED = "TRUNCATED"


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Record:
    """Shared validation and JSON codec of the record dataclasses (subclass it for a new one)."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not _is_instance(value, hints[f.name]):
                raise TypeError(f"{f.name} must be {_type_name(hints[f.name])}, not {value!r}")
            low = f.metadata.get("min")
            if low is not None and value is not None and value < low:
                raise ValueError(f"{f.name} must be >= {low}, not {value!r}")

    def to_bytes(self) -> bytes:
        """The etcd value of this record."""
        return orjson.dumps(self)

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> Self:
        """Decode the value stored at ``key``; CorruptedDataError if it is malformed."""
        try:
            obj = orjson.loads(data)
            if not isinstance(obj, dict):
                raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
            hints = _hints(cls)
            kwargs = {}
            for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                if f.name not in obj:
                    if f.default is not dataclasses.MISSING:
                        continue  # a field added later, with a default: older values lack it
                    raise ValueError(f"field {f.name!r} is missing")
                value = obj[f.name]
                kwargs[f.name] = _decode(value, hints[f.name])
            return cls(**kwargs)
        except (orjson.JSONDecodeError, TypeError, ValueError) as e:
            raise CorruptedDataError(
                f"corrupted metadata at {key!r}: not a valid {cls.__name__} ({e})"
            ) from None


def _decode(value: Any, hint: Any) -> Any:
    """A JSON value as the field's type: enums by value, nested records from objects."""
    if isinstance(hint, types.UnionType):
        inner = [h for h in typing.get_args(hint) if h is not type(None)]
        return value if value is None or len(inner) != 1 else _decode(value, inner[0])
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if typing.get_origin(hint) is list and isinstance(value, list):
        (item,) = typing.get_args(hint)
        if isinstance(item, type) and issubclass(item, Record):
            return [_record(v, item) for v in value]
    return value


def _record(value: Any, cls: type[Record]) -> Record:
    if not isinstance(value, dict):
        raise TypeError(f"expected a {cls.__name__} object, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in value.items() if k in names})


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def _is_instance(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType):
        return any(_is_instance(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if hint is int:
        return type(value) is int  # bool and float are not ids or sizes
    return isinstance(value, hint)


@dataclass(frozen=True, slots=True)
class LogRecord(Record):
    """A named log and its numeric id (ids are never reused).

    ``uid`` is random per create call: a create retried after a lost reply
    finds its own record by it (racers for the same name compute the same id).
    ``buffer_mode`` is chosen when the log is created and never changes; records
    written before it existed are MemoryBuffer logs.
    """

    log_id: int = at_least(1)
    name: str = field()
    created_ms: int = at_least(0)
    uid: str = field()
    buffer_mode: str = "memory"


@dataclass(frozen=True, slots=True)
class WriterRecord(Record):
    """Value of the writer-session key: who holds the log, under which epoch."""

    log_id: int = at_least(1)
    epoch: int = at_least(1)
    owner: str = field()
    lease_id: int = field()
    acquired_ms: int = at_least(0)


@dataclass(frozen=True, slots=True)
class EnsembleMember(Record):
    """A quorum node as a segment record lists it: who, where, and which incarnation."""

    node_id: str = field()
    address: str = field()
    incarnation: int = at_least(0)


@dataclass(frozen=True, slots=True)
class SegmentRecord(Record):
    """A segment: its state, the epoch of its creator and what is committed of it."""

    log_id: int = at_least(1)
    segment_id: int = at_least(0)
    state: SegmentState = field()
    epoch: int = at_least(1)
    lac: int = at_least(-1)
    size: int = at_least(0)
    block_count: int = at_least(0)
    created_ms: int = at_least(0)
    sealed_ms: int | None = at_least(0)
    # set by maintenance (docs/lifecycle.md); absent in records written before it existed
    truncated_ms: int | None = field(default=None, metadata={"min": 0})
    compacted_ms: int | None = field(default=None, metadata={"min": 0})
    # a QuorumBuffer segment: the nodes that hold it and how many must hold an entry
    # (docs/quorum.md); None for a MemoryBuffer segment. Its ``lac`` stays -1 while it
    # is ACTIVE (the nodes know the LAC) and is set to its last entry when it is sealed.
    ensemble: list[EnsembleMember] | None = None
    ack: int | None = field(default=None, metadata={"min": 1})

    @property
    def quorum(self) -> bool:
        return self.ensemble is not None

    @property
    def lac_on_nodes(self) -> bool:
        """An ACTIVE quorum segment: its LAC is known to its nodes, not to etcd (-1 there)."""
        return self.quorum and self.state is SegmentState.ACTIVE

    @property
    def entry_count(self) -> int:
        """Committed entries (ids are dense from 0, so LAC + 1)."""
        return self.lac + 1


@dataclass(frozen=True, slots=True)
class BlockRecord(Record):
    """A committed block: which entries it holds and where its bytes are.

    ``offset``/``length`` locate the block inside the object ``key``, and
    ``checksum`` is the xxh3_64 of exactly those bytes. A block written by a
    writer is a whole Arrow IPC stream; a chunk of a compacted segment
    (``messages_only``, from a ``SegmentIndex``) is only the record batch
    messages inside an Arrow IPC file, whose schema is the block format's.
    """

    log_id: int = at_least(1)
    segment_id: int = at_least(0)
    block_id: int = at_least(0)
    first_entry_id: int = at_least(0)
    entry_count: int = at_least(1)
    size: int = at_least(0)
    key: str = field()
    offset: int = at_least(0)
    length: int = at_least(0)
    checksum: int = at_least(0)
    messages_only: bool = False

    def __post_init__(self) -> None:
        Record.__post_init__(self)
        if self.checksum > _U64_MAX:
            raise ValueError(f"checksum must fit in 64 bits, not {self.checksum!r}")
        if not self.key:
            raise ValueError("key must not be empty")

    @property
    def last_entry_id(self) -> int:
        return self.first_entry_id + self.entry_count - 1


_CHUNK_FIELDS = ("object", "first_entry_id", "entry_count", "size", "offset", "length", "checksum")


@dataclass(frozen=True, slots=True)
class SegmentIndex(Record):
    """Where the entries of a compacted segment are: one value instead of a record per block.

    ``objects`` are the segment's Arrow IPC files. Each chunk is a list of
    ``_CHUNK_FIELDS``: entries ``first_entry_id`` onwards are the record batch
    messages at ``objects[object][offset:offset + length]``, whose xxh3_64 is
    ``checksum``. Chunks are in entry order and cover the segment densely from 0.
    """

    log_id: int = at_least(1)
    segment_id: int = at_least(0)
    objects: list[str] = field()
    chunks: list[list[int]] = field()

    def __post_init__(self) -> None:
        Record.__post_init__(self)
        if not self.objects or not all(self.objects):
            raise ValueError("objects must be a non-empty list of non-empty keys")
        expected = 0
        for chunk in self.chunks:
            if len(chunk) != len(_CHUNK_FIELDS) or min(chunk) < 0:
                raise ValueError(f"a chunk is {len(_CHUNK_FIELDS)} ints >= 0, not {chunk!r}")
            if chunk[0] >= len(self.objects):
                raise ValueError(f"chunk {chunk!r} names object {chunk[0]} of {len(self.objects)}")
            if chunk[1] != expected or chunk[2] < 1:
                raise ValueError(f"chunk {chunk!r} does not continue at entry {expected}")
            if chunk[6] > _U64_MAX:
                raise ValueError(f"checksum must fit in 64 bits, not {chunk[6]!r}")
            expected += chunk[2]

    def blocks(self) -> list[BlockRecord]:
        """The chunks as block records (block id = chunk number), for readers and GC."""
        return [
            BlockRecord(
                log_id=self.log_id,
                segment_id=self.segment_id,
                block_id=number,
                first_entry_id=first,
                entry_count=count,
                size=size,
                key=self.objects[obj],
                offset=offset,
                length=length,
                checksum=checksum,
                messages_only=True,
            )
            for number, (obj, first, count, size, offset, length, checksum) in enumerate(
                self.chunks
            )
        ]


@dataclass(frozen=True, slots=True)
class TruncationPoint(Record):
    """Entries up to and including (segment_id, entry_id) are logically deleted."""

    segment_id: int = at_least(0)
    entry_id: int = at_least(0)


def decode_counter(data: bytes, key: str) -> int:
    """A counter value (log id generator, writer epoch): a decimal integer."""
    if not data.isdigit():  # ASCII digits only: no sign, spaces or underscores
        raise CorruptedDataError(f"corrupted metadata at {key!r}: not a counter ({data[:40]!r})")
    return int(data)


@dataclass(frozen=True, slots=True)
class PendingDeletion(Record):
    """Objects that lost their last reference, to be deleted once ``not_before_ms`` passed.

    Written in the same txn that drops the references (retention, compaction), so a
    reader still holding the old block records can finish reading them.
    """

    log_id: int = at_least(1)
    keys: list[str] = field()
    not_before_ms: int = at_least(0)
    reason: str = field()

    def __post_init__(self) -> None:
        Record.__post_init__(self)
        if not self.keys or not all(self.keys):
            raise ValueError("keys must be a non-empty list of non-empty keys")
