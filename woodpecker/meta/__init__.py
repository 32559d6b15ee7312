"""Metadata in etcd: key layout, records, the store, and fenced writer sessions.

This package is the only way to etcd. ``connection`` holds the gRPC clients and
the bounded retry; every operation on top of it is a named method whose
docstring states its contract (``MetaStore``, ``WriterSession``, ``Lifecycle``,
the reader registration and commit watch), so no other module builds keys or
transactions. ``tests/unit/test_import_structure.py`` checks that nothing else
imports an etcd client library.
"""

from woodpecker.meta.keys import Keys
from woodpecker.meta.readers import LiveReader, live_reader_positions, live_readers
from woodpecker.meta.records import (
    BlockRecord,
    LogRecord,
    PendingDeletion,
    SegmentIndex,
    SegmentRecord,
    SegmentState,
    TruncationPoint,
    WriterRecord,
)
from woodpecker.meta.session import MAX_BLOCKS_PER_COMMIT, WriterSession
from woodpecker.meta.store import LogHead, MetaStore, SegmentSnapshot

__all__ = [
    "MAX_BLOCKS_PER_COMMIT",
    "BlockRecord",
    "Keys",
    "LiveReader",
    "LogHead",
    "LogRecord",
    "MetaStore",
    "PendingDeletion",
    "SegmentIndex",
    "SegmentRecord",
    "SegmentSnapshot",
    "SegmentState",
    "TruncationPoint",
    "WriterRecord",
    "WriterSession",
    "live_reader_positions",
    "live_readers",
]
