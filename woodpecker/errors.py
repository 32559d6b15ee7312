"""The one error hierarchy of the project, and its one wire form.

Every failure a caller can see is a ``WoodpeckerError`` subclass, so that
``except WoodpeckerError`` catches everything the library raises on purpose
(``TypeError`` / ``ValueError`` for plain programming mistakes excepted).

An append that fails tells its caller what became of it: a ``NotWrittenError``
means it was not, and will never be, written (retrying it cannot duplicate it);
an ``OutcomeUnknownError`` means it may or may not become readable (a retry may
write it twice). Storage and etcd outages also reach readers and admin calls, where
no append is at stake: there they are the plain ``StorageUnavailableError`` /
``MetadataUnavailableError``. On the append path the logstore raises the subclass
that is both the outage and its outcome, so ``except StorageUnavailableError``
still catches it. Every class says with ``retryable`` whether repeating the same
call, unchanged, may succeed once a transient cause is gone.

    WoodpeckerError
    ├── NotWrittenError                   the append was not written, and never will be
    │   ├── EntryTooLargeError (ValueError)
    │   ├── WriterFencedError
    │   ├── WriterClosedError
    │   │   └── ClientClosedError (also a ReaderClosedError)
    │   ├── ForkedClientError
    │   ├── BackpressureTimeout (TimeoutError)              retryable
    │   ├── BatchRejectedError
    │   ├── NotDurableError (a StorageUnavailableError)     retryable
    │   └── CommitNotAttemptedError (a MetadataUnavailableError)  retryable
    ├── OutcomeUnknownError               the append may or may not become readable
    │   ├── CommitOutcomeUnknownError (a MetadataUnavailableError)  retryable
    │   ├── LogstoreUnavailableError
    │   └── QuorumUnavailableError                          retryable
    ├── StorageUnavailableError                             retryable
    ├── MetadataUnavailableError                            retryable
    ├── ConfigError
    ├── InvalidLogNameError (ValueError)
    ├── LogNotFoundError
    ├── LogExistsError
    ├── CorruptedDataError
    ├── PositionTruncatedError
    ├── InvalidPositionError (ValueError)
    ├── ObjectNotFoundError
    └── ReaderClosedError
        └── ClientClosedError

Errors cross process boundaries (uploader -> logstore -> producer) only through
``to_wire`` / ``from_wire``: the class name and the message. docs/write-pipeline.md
says which failure of the pipeline ends in which class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class WoodpeckerError(Exception):
    """Base class of every error raised by Woodpecker."""

    retryable: bool = False
    """Whether repeating the same call, unchanged, may succeed once a transient cause is gone."""


class NotWrittenError(WoodpeckerError):
    """The append was not written and never will be: retrying it cannot duplicate it."""


class OutcomeUnknownError(WoodpeckerError):
    """The append was pending when its fate was lost: it may or may not become readable."""


class ConfigError(WoodpeckerError):
    """A configuration value is missing, malformed or out of range."""


class InvalidLogNameError(WoodpeckerError, ValueError):
    """A log name breaks the naming rules (1-255 chars of ``[A-Za-z0-9._-]``)."""


class LogNotFoundError(WoodpeckerError):
    """The named log does not exist (or was deleted)."""


class LogExistsError(WoodpeckerError):
    """A log with that name already exists."""


class EntryTooLargeError(NotWrittenError, ValueError):
    """A payload exceeds ``writer.max_entry_size``."""


class WriterFencedError(NotWrittenError):
    """Another writer session took over the log; this one can commit nothing more.

    A commit is conditional on the writer's fence, so an append failed by a fence
    was never committed (docs/fencing.md)."""


class WriterClosedError(NotWrittenError):
    """The writer was closed; no further appends are accepted."""


class BackpressureTimeout(NotWrittenError, TimeoutError):
    """The shared-memory arena stayed full for longer than ``writer.append_timeout``."""

    retryable = True


class BatchRejectedError(NotWrittenError):
    """The logstore dropped the append's batch before any commit of it; the message says why."""


class StorageUnavailableError(WoodpeckerError):
    """The object store did not answer successfully within the retry deadline."""

    retryable = True


class MetadataUnavailableError(WoodpeckerError):
    """etcd did not answer successfully within the retry deadline."""

    retryable = True


class NotDurableError(StorageUnavailableError, NotWrittenError):
    """The append's block could not be made durable in storage, so no commit of it was
    attempted (or the logstore stopped before it was)."""


class CommitNotAttemptedError(MetadataUnavailableError, NotWrittenError):
    """etcd failed before the append's commit was attempted: opening the log or its
    segment failed, or an earlier block of its segment failed to commit (the segment
    rolled, and a segment's later blocks are never committed after a gap)."""


class CommitOutcomeUnknownError(MetadataUnavailableError, OutcomeUnknownError):
    """The commit of the append's block was sent and no answer came within the retry
    deadline: it may have been applied."""


class LogstoreUnavailableError(OutcomeUnknownError):
    """The logstore serving this host went away; pending appends may not be durable.

    Raised by ``open_writer`` too when no logstore can be reached (no append is then
    at stake). The writer's link is gone: reopen the writer."""


class QuorumUnavailableError(OutcomeUnknownError):
    """Fewer than ``quorum.ack`` nodes of a quorum segment answered before the deadline.

    The append may have reached some nodes, and recovery keeps the longest run a quorum
    of them reports (docs/quorum.md), so it may still become readable. Retry once the
    nodes are back. A reader raises it when it needs entries not in object storage yet
    and no node of the segment's ensemble answers; it stays at its position."""

    retryable = True


class CorruptedDataError(WoodpeckerError):
    """Stored bytes failed verification (checksum, structure or identity)."""


class PositionTruncatedError(WoodpeckerError):
    """The requested position was truncated and its data already deleted."""


class ObjectNotFoundError(WoodpeckerError):
    """An object the caller asked for does not exist in the store."""


class ReaderClosedError(WoodpeckerError):
    """The reader was closed; it returns nothing more."""


class ClientClosedError(WriterClosedError, ReaderClosedError):
    """The Client was closed: it, and every writer and reader it opened, refuse further use."""


class ForkedClientError(NotWrittenError):
    """A Client, writer or reader was used in a process forked from the one that created it.

    A forked child shares the parent's logstore connection and etcd channels; using
    them would corrupt the parent's, so nothing is sent. Create a new Client in the child.
    """


class InvalidPositionError(WoodpeckerError, ValueError):
    """A position names no committed entry: past the LAC, or in a segment that does not exist."""


def not_written(cause: WoodpeckerError) -> NotWrittenError:
    """The error for an append that ``cause`` kept from being committed at all."""
    if isinstance(cause, NotWrittenError):
        return cause
    if isinstance(cause, StorageUnavailableError):
        return NotDurableError(str(cause))
    if isinstance(cause, MetadataUnavailableError):
        return CommitNotAttemptedError(str(cause))
    return BatchRejectedError(_naming_class(cause))


def outcome_unknown(cause: WoodpeckerError) -> OutcomeUnknownError:
    """The error for an append whose commit was sent when ``cause`` happened."""
    if isinstance(cause, OutcomeUnknownError):
        return cause
    if isinstance(cause, MetadataUnavailableError):
        return CommitOutcomeUnknownError(str(cause))
    return OutcomeUnknownError(_naming_class(cause))


def _naming_class(cause: WoodpeckerError) -> str:
    """The message of ``cause``, led by its class when that says more than the new class."""
    return str(cause) if type(cause) is WoodpeckerError else f"{type(cause).__name__}: {cause}"


def to_wire(error: BaseException) -> dict[str, str]:
    """The form in which an error crosses a process boundary: class name and message.

    An exception outside the hierarchy travels as a plain ``WoodpeckerError`` naming it."""
    if not isinstance(error, WoodpeckerError):
        return {"error": "WoodpeckerError", "message": f"{type(error).__name__}: {error}"}
    return {"error": type(error).__name__, "message": str(error)}


def from_wire(body: Mapping[str, Any]) -> WoodpeckerError:
    """Rebuild an error sent by ``to_wire`` (an unknown name: a plain ``WoodpeckerError``)."""
    return _BY_NAME.get(body["error"], WoodpeckerError)(body["message"])


def _subclasses(cls: type[WoodpeckerError]) -> list[type[WoodpeckerError]]:
    return [cls, *(s for sub in cls.__subclasses__() for s in _subclasses(sub))]


_BY_NAME = {cls.__name__: cls for cls in _subclasses(WoodpeckerError)}
