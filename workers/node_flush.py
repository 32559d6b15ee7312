"""A quorum node's flushing: acked ranges to object storage as large blocks, then forgotten.

Every ``FLUSH_TICK`` the node looks at each segment it holds (docs/quorum.md,
"Flushing"). A segment is due once what it holds up to the LAC reaches
``quorum.flush_bytes``, once ``quorum.flush_interval`` passed since it was last looked
at, at once when the node learns it is sealed (and then every ``SEALED_RECHECK`` until
it is forgotten), and always when the node drains. A due segment's flush cursor and
record are read together: what is committed below the cursor is forgotten, a SEALED
record tells the seal to a node that missed the writer's word, and a segment wholly
flushed (the cursor past its last entry) or whose record is gone or TRUNCATED is
forgotten altogether. What is left is flushed by the node holding the segment's flush
claim (claimed on its lease if free): one block in the usual format (an Arrow IPC
stream, its xxh3 in the record) under a name unique to the attempt, then one commit
transaction that moves the cursor. Uploads run on a thread, so the event loop keeps
answering writers meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from woodpecker.config import Config
from woodpecker.format import STREAM_FOOTER, STREAM_HEADER, checksum
from woodpecker.meta import BlockRecord, MetaStore
from woodpecker.meta.flush import claim_flush, commit_flush, flush_cursor
from woodpecker.meta.records import SegmentState
from woodpecker.storage import ObjectStore
from workers.node_state import NodeState

log = logging.getLogger("woodpecker.node")

FLUSH_TICK = 0.2
"""Seconds between looks at what is due (never longer than ``quorum.flush_interval``)."""

SEALED_RECHECK = 1.0
"""Seconds between reads of a sealed segment's flush cursor on a node that does not flush
it (it forgets the segment once the flusher's commits reach its last entry)."""


class Flusher:
    """Flushes what one node holds; its methods run on the node's event loop."""

    def __init__(
        self,
        config: Config,
        node_id: str,
        state: NodeState,
        meta: MetaStore,
        store: ObjectStore,
        lease_id: Callable[[], int],
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.state = state
        self.meta = meta
        self.store = store
        self.lease_id = lease_id
        self.flushed = 0  # blocks this node committed
        self.forgotten = 0  # segments this node forgot altogether
        self._next_look: dict[tuple[int, int], float] = {}  # when a segment is due at the latest
        self._sealed_seen: set[tuple[int, int]] = set()  # known sealed, looked at since

    async def run(self) -> None:
        """Flush what is due, forever; an error is logged and retried at the next tick."""
        tick = min(FLUSH_TICK, self.config.quorum.flush_interval)
        while True:
            await asyncio.sleep(tick)
            try:
                await self.flush(force=False)
            except Exception as e:
                log.warning("node %s: flush failed, retried: %s", self.node_id, e)

    async def flush(self, *, force: bool) -> None:
        """One pass over every segment held; ``force`` flushes whatever is below the LAC."""
        for key in list(self.state.replicas):
            while await self._flush_next(key, force):
                pass

    def _due(self, key: tuple[int, int], force: bool) -> bool:
        """Whether to look at the segment in etcd now (and flush it if this node flushes it).

        etcd is read at most once per ``flush_interval`` per segment while it is ACTIVE and
        small, and every ``SEALED_RECHECK`` once it is known sealed (the first time at once).
        """
        now = time.monotonic()
        if self.state.sealed_last(key) is not None and key not in self._sealed_seen:
            self._sealed_seen.add(key)
            self._next_look[key] = now
        next_look = self._next_look.setdefault(key, now + self.config.quorum.flush_interval)
        if force or now >= next_look:
            return True
        return self.state.flushable_bytes(key) >= self.config.quorum.flush_bytes

    def _look_again(self, key: tuple[int, int], *, now: bool = False) -> None:
        if now:
            delay = 0.0
        elif key in self._sealed_seen:
            delay = min(SEALED_RECHECK, self.config.quorum.flush_interval)
        else:
            delay = self.config.quorum.flush_interval
        self._next_look[key] = time.monotonic() + delay

    def _forget(self, key: tuple[int, int], why: str) -> None:
        self.state.forget(key)
        self._next_look.pop(key, None)
        self._sealed_seen.discard(key)
        self.forgotten += 1
        log.info("node %s: forgot segment %d/%d (%s)", self.node_id, *key, why)

    def _forgotten_if_done(self, key: tuple[int, int], flushed_through: int) -> bool:
        """Forget a sealed segment flushed through its last entry; True if it was."""
        last = self.state.sealed_last(key)
        if last is None or flushed_through < last:
            return False
        self._forget(key, f"sealed at entry {last} and flushed")
        return True

    async def _flush_next(self, key: tuple[int, int], force: bool) -> bool:
        """Flush the next due range of a segment if this node is its flusher; True if done."""
        if key not in self.state.replicas or not self._due(key, force):
            return False
        read = await asyncio.to_thread(flush_cursor, self.meta, *key)
        if read.segment is None or read.segment.state is SegmentState.TRUNCATED:
            # deleted (retention, a deleted log) or about to be: nothing of it is flushed
            self._forget(key, "its record is gone" if read.segment is None else "truncated")
            return False
        if read.segment.state is SegmentState.SEALED:
            self.state.seal(key, read.segment.lac)  # a node that missed the writer's word
        if self._forgotten_if_done(key, read.cursor.next_entry - 1):
            return False
        self.state.drop_through(key, read.cursor.next_entry - 1)
        batches = self.state.flushable(key, read.cursor.next_entry, self.config.quorum.flush_bytes)
        claimant = None
        if batches:
            claimant = await asyncio.to_thread(
                claim_flush, self.meta, *key, self.node_id, self.lease_id()
            )
        if claimant != self.node_id:
            # nothing to flush from the cursor on, or another node flushes: look again later
            self._look_again(key)
            return False
        parts = [STREAM_HEADER, *(b.data for b in batches), STREAM_FOOTER]
        length = sum(len(p) for p in parts)
        log_id, segment_id = key
        first = batches[0].first
        object_key = f"{log_id}/{segment_id}/q{first}-{self.node_id}-{uuid.uuid4().hex[:12]}.arrow"
        started = time.monotonic()
        await asyncio.to_thread(self.store.put, object_key, parts)
        if time.monotonic() - started > self.config.retention.orphan_grace / 2:
            # the orphan sweep may already count it as garbage: never commit it
            log.warning("node %s: flush of %s took too long; retried", self.node_id, object_key)
            return False
        block = BlockRecord(
            log_id=log_id,
            segment_id=segment_id,
            block_id=read.cursor.next_block,
            first_entry_id=first,
            entry_count=sum(b.count for b in batches),
            size=length,
            key=object_key,
            offset=0,
            length=length,
            checksum=checksum(parts),
        )
        if not await asyncio.to_thread(commit_flush, self.meta, self.node_id, read, block):
            return False  # the claim or the cursor moved: the object is an orphan
        self.flushed += 1
        if self._forgotten_if_done(key, block.last_entry_id):
            return False
        self.state.drop_through(key, block.last_entry_id)
        self._look_again(key, now=key in self._sealed_seen)  # a sealed one goes on at once
        return True
