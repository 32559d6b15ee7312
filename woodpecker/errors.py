"""The one error hierarchy of the project.

Every failure a caller can see is a ``WoodpeckerError`` subclass, so that
``except WoodpeckerError`` catches everything the library raises on purpose
(``TypeError`` / ``ValueError`` for plain programming mistakes excepted).
"""

from __future__ import annotations


class WoodpeckerError(Exception):
    """Base class of every error raised by Woodpecker."""


class ConfigError(WoodpeckerError):
    """A configuration value is missing, malformed or out of range."""


class InvalidLogNameError(WoodpeckerError, ValueError):
    """A log name breaks the naming rules (1-255 chars of ``[A-Za-z0-9._-]``)."""


class LogNotFoundError(WoodpeckerError):
    """The named log does not exist (or was deleted)."""


class LogExistsError(WoodpeckerError):
    """A log with that name already exists."""


class EntryTooLargeError(WoodpeckerError, ValueError):
    """A payload exceeds ``writer.max_entry_size``."""


class WriterFencedError(WoodpeckerError):
    """Another writer session took over the log; this one can commit nothing more."""


class WriterClosedError(WoodpeckerError):
    """The writer was closed; no further appends are accepted."""


class BackpressureTimeout(WoodpeckerError, TimeoutError):
    """The shared-memory arena stayed full for longer than ``writer.append_timeout``."""


class StorageUnavailableError(WoodpeckerError):
    """The object store did not answer successfully within the retry deadline."""


class MetadataUnavailableError(WoodpeckerError):
    """etcd did not answer successfully within the retry deadline."""


class CorruptedDataError(WoodpeckerError):
    """Stored bytes failed verification (checksum, structure or identity)."""


class PositionTruncatedError(WoodpeckerError):
    """The requested position was truncated and its data already deleted."""


class ObjectNotFoundError(WoodpeckerError):
    """An object the caller asked for does not exist in the store."""


class LogstoreUnavailableError(WoodpeckerError):
    """The logstore serving this host went away; pending appends may not be durable."""


class ReaderClosedError(WoodpeckerError):
    """The reader was closed; it returns nothing more."""


class ClientClosedError(WriterClosedError, ReaderClosedError):
    """The Client was closed: it, and every writer and reader it opened, refuse further use."""


class ForkedClientError(WoodpeckerError):
    """A Client, writer or reader was used in a process forked from the one that created it.

    A forked child shares the parent's logstore connection and etcd channels; using
    them would corrupt the parent's. Create a new Client in the child.
    """


class InvalidPositionError(WoodpeckerError, ValueError):
    """A position names no committed entry: past the LAC, or in a segment that does not exist."""
