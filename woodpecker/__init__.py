"""Woodpecker for Python: a durable, ordered write-ahead log on object storage.

Data lives in object storage (S3-compatible or a local/shared file system),
metadata in etcd. Everything a user needs is importable from here.
"""

__version__ = "0.1.0"

from woodpecker.aio import AsyncClient, AsyncLogHandle, AsyncLogReader, AsyncLogWriter
from woodpecker.client import Client
from woodpecker.config import Config
from woodpecker.errors import (
    BackpressureTimeout,
    BatchRejectedError,
    ClientClosedError,
    CommitNotAttemptedError,
    CommitOutcomeUnknownError,
    ConfigError,
    CorruptedDataError,
    EntryTooLargeError,
    ForkedClientError,
    InvalidLogNameError,
    InvalidPositionError,
    LogExistsError,
    LogNotFoundError,
    LogstoreUnavailableError,
    MetadataUnavailableError,
    NotDurableError,
    NotWrittenError,
    ObjectNotFoundError,
    OutcomeUnknownError,
    PositionTruncatedError,
    QuorumUnavailableError,
    ReaderClosedError,
    StorageUnavailableError,
    WoodpeckerError,
    WriterClosedError,
    WriterFencedError,
)
from woodpecker.log import LogHandle
from woodpecker.message import EARLIEST, LATEST, LogMessage, LogMessageId
from woodpecker.producer import AppendFuture
from woodpecker.reader import LogReader
from woodpecker.writer import LogWriter

__all__ = [
    "EARLIEST",
    "LATEST",
    "AppendFuture",
    "AsyncClient",
    "AsyncLogHandle",
    "AsyncLogReader",
    "AsyncLogWriter",
    "BackpressureTimeout",
    "BatchRejectedError",
    "Client",
    "ClientClosedError",
    "CommitNotAttemptedError",
    "CommitOutcomeUnknownError",
    "Config",
    "ConfigError",
    "CorruptedDataError",
    "EntryTooLargeError",
    "ForkedClientError",
    "InvalidLogNameError",
    "InvalidPositionError",
    "LogExistsError",
    "LogHandle",
    "LogMessage",
    "LogMessageId",
    "LogNotFoundError",
    "LogReader",
    "LogWriter",
    "LogstoreUnavailableError",
    "MetadataUnavailableError",
    "NotDurableError",
    "NotWrittenError",
    "ObjectNotFoundError",
    "OutcomeUnknownError",
    "PositionTruncatedError",
    "QuorumUnavailableError",
    "ReaderClosedError",
    "StorageUnavailableError",
    "WoodpeckerError",
    "WriterClosedError",
    "WriterFencedError",
    "__version__",
]
