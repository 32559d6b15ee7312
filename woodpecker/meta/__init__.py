"""Metadata in etcd: key layout, records, the store, and fenced writer sessions."""

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
