"""A quorum node's flushing: acked ranges to object storage as large blocks, then forgotten.

Every ``FLUSH_TICK`` the node looks at each segment it holds (docs/quorum.md,
"Flushing"): it reads the segment's flush cursor and forgets what is committed below it;
the whole batches from the cursor up to the LAC are due once they reach
``quorum.flush_bytes`` or have waited ``quorum.flush_interval`` (and always when the node
drains). A due range is flushed by the node holding the segment's flush claim (claimed
on its lease if free): one block in the usual format (an Arrow IPC stream, its xxh3 in
the record) under a name unique to the attempt, then one commit transaction that moves
the cursor. Uploads run on a thread, so the event loop keeps answering writers meanwhile.
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
from woodpecker.storage import ObjectStore
from workers.node_state import NodeState

log = logging.getLogger("woodpecker.node")

FLUSH_TICK = 0.2
"""Seconds between looks at what is due (never longer than ``quorum.flush_interval``)."""


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
        self._waiting_since: dict[tuple[int, int], float] = {}

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

    async def _flush_next(self, key: tuple[int, int], force: bool) -> bool:
        """Flush the next due range of a segment if this node is its flusher; True if done.

        etcd is read only once something is due: at most once per ``flush_interval`` per
        segment on a node that is not the flusher (to forget what the flusher committed).
        """
        quorum = self.config.quorum
        held = self.state.flushable_bytes(key)
        if held == 0:
            self._waiting_since.pop(key, None)
            return False
        since = self._waiting_since.setdefault(key, time.monotonic())
        waited = time.monotonic() - since
        if not (force or held >= quorum.flush_bytes or waited >= quorum.flush_interval):
            return False
        read = await asyncio.to_thread(flush_cursor, self.meta, *key)
        self.state.drop_through(key, read.cursor.next_entry - 1)
        batches = self.state.flushable(key, read.cursor.next_entry, quorum.flush_bytes)
        claimant = None
        if batches:
            claimant = await asyncio.to_thread(
                claim_flush, self.meta, *key, self.node_id, self.lease_id()
            )
        if claimant != self.node_id:
            # nothing to flush from the cursor on, or another node flushes: look again later
            self._waiting_since[key] = time.monotonic()
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
        self.state.drop_through(key, block.last_entry_id)
        self._waiting_since.pop(key, None)
        return True
