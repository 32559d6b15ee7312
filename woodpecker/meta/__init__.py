"""Metadata in etcd: key layout, records, the store, and fenced writer sessions."""

from woodpecker.meta.keys import Keys
from woodpecker.meta.records import (
    BlockRecord,
    LogRecord,
    SegmentRecord,
    SegmentState,
    TruncationPoint,
    WriterRecord,
)
from woodpecker.meta.session import WriterSession
from woodpecker.meta.store import MetaStore

__all__ = [
    "BlockRecord",
    "Keys",
    "LogRecord",
    "MetaStore",
    "SegmentRecord",
    "SegmentState",
    "TruncationPoint",
    "WriterRecord",
    "WriterSession",
]
