"""Flush commits of quorum segments: which node flushes a segment, and how far it is flushed.

Per quorum segment two keys (docs/quorum.md, "Flushing"):

- ``<p>/flusher/<log_id>/<segment_id>``: the id of the node that flushes it, put
  create-only on that node's registration lease. One node flushes a segment at a time;
  if it dies, its lease expires, the claim goes with it and another node claims it.
- ``<p>/flush/<log_id>/<segment_id>``: a ``FlushCursor``, the next entry and block id
  to flush. A flush commit is one transaction that compares the claim (still ours), the
  cursor and the segment record (both unchanged since read), and puts the block record
  and the advanced cursor: a range is committed exactly once, an object whose commit
  failed is an orphan, and nothing is flushed into a segment that retention truncated or
  deleted (its cursor key gone, a compare of the cursor alone would pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from woodpecker.meta.connection import first
from woodpecker.meta.records import BlockRecord, Record, SegmentRecord, SegmentState, at_least
from woodpecker.meta.store import MetaStore


@dataclass(frozen=True, slots=True)
class FlushCursor(Record):
    """What is flushed of a segment: entries below ``next_entry``, in ``next_block`` blocks."""

    next_entry: int = at_least(0)
    next_block: int = at_least(0)


class CursorRead(NamedTuple):
    cursor: FlushCursor
    revision: int  # mod_revision of the cursor key; 0 while nothing is flushed
    segment: SegmentRecord | None  # the segment record read with it; None: deleted
    segment_revision: int  # its mod_revision (0: no record)


def flush_cursor(meta: MetaStore, log_id: int, segment_id: int) -> CursorRead:
    """The segment's flush cursor (nothing flushed yet: entry 0, block 0, revision 0) and
    its segment record, read together."""
    key = meta.keys.flush_cursor(log_id, segment_id)
    segment_key = meta.keys.segment(log_id, segment_id)
    ops = meta.etcd.ops
    cursor_kv, segment_kv = (
        first(reply)
        for reply in meta.etcd.read_together("flush_cursor", [ops.get(key), ops.get(segment_key)])
    )
    segment, segment_revision = None, 0
    if segment_kv is not None:
        segment = SegmentRecord.from_bytes(segment_kv[0], segment_key)
        segment_revision = segment_kv[1].mod_revision
    if cursor_kv is None:
        return CursorRead(FlushCursor(next_entry=0, next_block=0), 0, segment, segment_revision)
    cursor = FlushCursor.from_bytes(cursor_kv[0], key)
    return CursorRead(cursor, cursor_kv[1].mod_revision, segment, segment_revision)


def claim_flush(meta: MetaStore, log_id: int, segment_id: int, node_id: str, lease_id: int) -> str:
    """Claim the segment's flushing for ``node_id`` unless claimed; returns the claimant's id."""
    key = meta.keys.flusher(log_id, segment_id)
    ops = meta.etcd.ops
    ok, replies = meta.etcd.txn(
        "claim_flush",
        [ops.create(key) == 0],
        success=[ops.put(key, node_id, lease=lease_id)],
        failure=[ops.get(key)],
    )
    if ok:
        return node_id
    held = first(replies[0])
    return node_id if held is None else held[0].decode()


def commit_flush(meta: MetaStore, node_id: str, cursor: CursorRead, block: BlockRecord) -> bool:
    """Commit ``block`` as the next flushed range; False if the claim or the cursor moved.

    The block must start at the cursor's next entry and carry its next block id, and
    the segment record must have been read with the cursor: a segment deleted or changed
    since (truncated; sealed: the flush is retried) is never flushed into. A retry whose
    first attempt applied (reply lost) finds its own block record and counts as committed.
    """
    k, ops = meta.keys, meta.etcd.ops
    log_id, segment_id = block.log_id, block.segment_id
    if (block.first_entry_id, block.block_id) != (
        cursor.cursor.next_entry,
        cursor.cursor.next_block,
    ):
        raise ValueError(f"block {block} does not continue the flush cursor {cursor.cursor}")
    if cursor.segment is None or cursor.segment.state is SegmentState.TRUNCATED:
        raise ValueError(f"segment {log_id}/{segment_id} is deleted or truncated: not flushed")
    cursor_key = k.flush_cursor(log_id, segment_id)
    claim_key = k.flusher(log_id, segment_id)
    block_key = k.block(log_id, segment_id, block.block_id)
    advanced = FlushCursor(next_entry=block.last_entry_id + 1, next_block=block.block_id + 1)
    ok, replies = meta.etcd.txn(
        "commit_flush",
        [
            ops.value(claim_key) == node_id,
            ops.mod(cursor_key) == cursor.revision,
            ops.mod(k.segment(log_id, segment_id)) == cursor.segment_revision,
        ],
        success=[
            ops.put(block_key, block.to_bytes()),
            ops.put(cursor_key, advanced.to_bytes()),
        ],
        failure=[ops.get(block_key)],
    )
    if ok:
        return True
    existing = first(replies[0])
    return existing is not None and BlockRecord.from_bytes(existing[0], block_key) == block
