"""The logstore's side of QuorumBuffer mode: replicators for its open quorum segments.

The coordinator is a single-threaded state machine on the logstore's selector loop; the
quorum client (``woodpecker.quorum``) is asyncio. This module runs one asyncio loop on
a thread of its own, holding one ``SegmentReplicator`` per open quorum segment, and
offers the coordinator plain calls: blocking ones for its etcd pool threads (open a
segment's links, recover a segment) and fire-and-forget ones for its loop (append a
batch, finish a sealed segment), whose outcomes come back through callbacks that the
coordinator routes to its own loop. Protocol: docs/quorum.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from woodpecker.config import Config
from woodpecker.deployment import Deployment
from woodpecker.meta.records import EnsembleMember, SegmentRecord
from woodpecker.quorum import wire
from woodpecker.quorum.client import NodeFailed, NodeLink, QuorumSegment, SegmentReplicator
from woodpecker.quorum.recovery import recover_segment

log = logging.getLogger("woodpecker.quorum")

AppendDone = Callable[[BaseException | None, bool], None]
"""Told once per batch, on the quorum thread: its error (None: acked) and whether a node
said this writer is fenced."""

CLOSE_TIMEOUT = 10.0  # seconds the logstore's shutdown waits for sealed segments to finish


class QuorumWriter:
    """The quorum segments this logstore writes, on one asyncio loop thread."""

    def __init__(self, config: Config, deployment: Deployment) -> None:
        self.config = config
        self.deployment = deployment
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="wp-quorum"
        )
        self._thread.start()
        self._replicators: dict[tuple[int, int], SegmentReplicator] = {}
        self._finishing: set[concurrent.futures.Future[Any]] = set()

    def _segment(self, record: SegmentRecord, epoch: int) -> QuorumSegment:
        assert record.ack is not None
        return QuorumSegment(
            record.log_id, record.segment_id, epoch, record.ack, self.config.quorum.node_timeout
        )

    def _run(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # ---- called from the coordinator's etcd pool (blocking) ----------------------------

    def open_segment(
        self, record: SegmentRecord, epoch: int, on_drop: Callable[[str, bool], None]
    ) -> None:
        """Connect to the new segment's ensemble; QuorumUnavailableError if fewer than
        ``ack`` of its nodes answer. ``on_drop`` is told (on the quorum thread) the id of
        each node that leaves the segment's live set, and whether fewer than ``ack`` are
        left (the segment can ack nothing more)."""
        assert record.ensemble is not None

        async def open_links() -> None:
            replicator = await SegmentReplicator.open(
                record.ensemble or [], self.deployment, self._segment(record, epoch)
            )
            replicator.on_drop = lambda node_id: on_drop(
                node_id, len(replicator.live) < replicator.quorum.ack
            )
            self._replicators[(record.log_id, record.segment_id)] = replicator
            for member in record.ensemble or []:
                if member.node_id not in replicator.live:
                    replicator.on_drop(member.node_id)  # not reached: it starts degraded

        self._run(open_links()).result()

    def reachable(self, members: Sequence[EnsembleMember]) -> list[EnsembleMember]:
        """The members that answer a handshake within ``quorum.node_timeout``, in order
        (checked at once; their connections are closed again)."""

        async def probe() -> list[EnsembleMember]:
            timeout = self.config.quorum.node_timeout
            links = await asyncio.gather(
                *(NodeLink.connect(m, self.deployment, timeout=timeout, window=1) for m in members),
                return_exceptions=True,
            )
            await asyncio.gather(
                *(link.close() for link in links if isinstance(link, NodeLink)),
                return_exceptions=True,
            )
            return [m for m, link in zip(members, links, strict=True) if isinstance(link, NodeLink)]

        return self._run(probe()).result()

    def recover(self, record: SegmentRecord, epoch: int) -> int:
        """Fence the segment's ensemble with ``epoch`` and make every entry up to the
        maximum held by ``ack`` nodes; the last entry to seal it at."""
        assert record.ensemble is not None
        found = self._run(
            recover_segment(record.ensemble, self.deployment, self._segment(record, epoch))
        ).result()
        return found.last_entry

    def announce_seal(self, record: SegmentRecord, epoch: int) -> None:
        """Tell the nodes of a segment sealed by recovery its final LAC and that it is sealed
        (so they flush all of it at once, then forget it); best effort: a node that misses
        it learns the seal from etcd at its next flush check."""
        self._track(self._run(self._announce(record, epoch)))

    async def _announce(self, record: SegmentRecord, epoch: int) -> None:
        for member in record.ensemble or []:
            try:
                link = await NodeLink.connect(
                    member, self.deployment, timeout=self.config.quorum.node_timeout, window=1
                )
            except (NodeFailed, OSError) as e:
                log.info("segment %d/%d: %s", record.log_id, record.segment_id, e)
                continue
            try:
                await link.call(
                    lambda rid: wire.frame(
                        wire.request(wire.LAC, rid, record.log_id, record.segment_id, epoch)
                        + wire.lac_body(record.lac, sealed=True)
                    )
                )
            except NodeFailed as e:
                log.info("segment %d/%d: %s", record.log_id, record.segment_id, e)
            finally:
                await link.close()

    # ---- called from the coordinator's loop (never blocks) ---------------------------

    def append(
        self,
        log_id: int,
        segment_id: int,
        first: int,
        payload: bytes,
        count: int,
        timeout: float,
        done: AppendDone,
    ) -> None:
        """Replicate one batch of entries ``first``..; ``done`` is told its outcome."""

        def send() -> None:
            replicator = self._replicators[(log_id, segment_id)]
            future = replicator.append(payload, count, timeout, first=first)
            future.add_done_callback(
                lambda f: done(f.exception(), replicator.fenced_by is not None)
            )

        self._loop.call_soon_threadsafe(send)

    def lac(self, log_id: int, segment_id: int) -> int:
        """The segment's LAC as its replicator knows it (-1 if it never opened)."""
        replicator = self._replicators.get((log_id, segment_id))
        return -1 if replicator is None else replicator.lac

    def finish(
        self, log_id: int, segment_id: int, *, sealed: bool = False, lac: int | None = None
    ) -> None:
        """The segment is sealed (``sealed``, at ``lac``) or abandoned: deliver what is
        queued and the final LAC (saying whether it is sealed there) to its live nodes, then
        close its links."""
        replicator = self._replicators.pop((log_id, segment_id), None)
        if replicator is not None:
            finish = replicator.finish(self.config.quorum.node_timeout, sealed=sealed, lac=lac)
            self._track(self._run(finish))

    def _track(self, future: concurrent.futures.Future[Any]) -> None:
        self._finishing.add(future)
        future.add_done_callback(self._finishing.discard)

    def close(self) -> None:
        """Let finishing segments finish (bounded), close every link, stop the thread."""
        concurrent.futures.wait(list(self._finishing), timeout=CLOSE_TIMEOUT)

        async def close_all() -> None:
            replicators = list(self._replicators.values())
            self._replicators.clear()
            await asyncio.gather(*(r.close() for r in replicators), return_exceptions=True)

        try:
            self._run(close_all()).result(CLOSE_TIMEOUT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CLOSE_TIMEOUT)
