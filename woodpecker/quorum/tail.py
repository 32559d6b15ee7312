"""A reader's side of the quorum: the unflushed tail of quorum segments, read from their nodes.

A quorum segment's entries below its flush cursor are block records in etcd, read from
object storage like any block; the entries from the cursor up to the LAC live only in the
memory (or files) of the segment's ensemble. ``TailReads`` serves those to one
``LogReader``:

- ``read`` asks the members in turn (``READ`` at epoch 0, which never reads above a node's
  LAC) and returns the whole batches of the first that holds the entry, cut at that node's
  LAC and at a sealed segment's last entry. ``UNKNOWN``, a failure, another incarnation,
  a corrupt reply or nothing acked there yet sends it to the next member; ``FLUSHED`` sends
  the reader back to etcd (the range is in object storage now), and so does ``UNKNOWN``
  from ``replicas - ack + 1`` members of a sealed segment (one of them held the entry, and
  a node forgets a sealed segment only once it is flushed whole). No member answering at
  all is ``QuorumUnavailableError``.
- ``long_poll`` asks one node, on a connection of its own, to answer once its LAC reaches
  the entry (``READ`` with a wait) and calls ``wake`` when it answers, so a tailing reader
  is woken by the LAC moving, not by a timer. Its answer is kept for the next ``read``.

The links (``NodeLink``, one per member read from, one more for the long-poll) run on an
event loop of their own, on a thread started at the first quorum segment the reader meets;
the reader's thread calls in and waits. Every call is bounded by ``quorum.node_timeout``
per member. The protocol: docs/quorum.md ("Reads").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyarrow as pa

from woodpecker.config import Config
from woodpecker.deployment import Deployment
from woodpecker.errors import CorruptedDataError, QuorumUnavailableError
from woodpecker.format import decode_messages
from woodpecker.meta.flush import flush_cursor
from woodpecker.meta.records import EnsembleMember, SegmentRecord, SegmentState
from woodpecker.meta.store import MetaStore
from woodpecker.quorum import wire
from woodpecker.quorum.client import NodeFailed, NodeLink
from woodpecker.quorum.wire import Batch, Reply, Status

log = logging.getLogger(__name__)

READ_BUDGET = 8 * 1024 * 1024
"""Bytes of batches one read asks a node for (it answers at least one batch)."""

MAX_WAIT = 30.0
"""Longest long-poll asked for; a node caps it there too."""

DOWN_FOR = 5.0
"""Seconds a member that failed is asked only when no other member answers."""

READER_EPOCH = 0
"""The epoch of a reader's requests: below every writer's, so a node never answers it
above its LAC (only the epoch that fenced the log reads there, for recovery)."""

_ASK_LAC_FROM = 1 << 62  # a READ from here returns no batch, only the node's LAC


@dataclass(frozen=True, slots=True)
class TailEntries:
    """Entries ``start``..``last`` of a segment read from a node; ``payloads`` from ``first``."""

    segment_id: int
    first: int
    start: int
    last: int
    payloads: pa.ChunkedArray


class TailRead(NamedTuple):
    """What the ensemble gave for a segment from an entry on."""

    entries: TailEntries | None  # None: nothing acked from there on that a node serves
    flushed: bool = False  # a node forgot the entry: it is in object storage now


class _Poll(NamedTuple):
    key: tuple[int, int]  # segment id, first entry wanted
    task: asyncio.Task[None]


class TailReads:
    """The node side of one reader; ``read``, ``lac`` and ``long_poll`` from the reader's
    thread, ``close`` from any thread."""

    def __init__(self, config: Config, log_id: int, name: str) -> None:
        self.log_id = log_id
        self.name = name
        self._deployment = Deployment.of(config)
        self._timeout = config.quorum.node_timeout
        self._lock = threading.Lock()  # guards starting and closing the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        # on the loop only:
        self._links: dict[str, NodeLink] = {}
        self._down: dict[str, float] = {}  # node id -> until when it is asked last
        self._preferred: str | None = None  # the member that served the last read
        self._poll: _Poll | None = None
        self._poll_link: NodeLink | None = None
        self._polled: tuple[tuple[int, int], EnsembleMember, Reply] | None = None
        self.polls = 0  # long-polls sent (tests and stats)

    # ---- the reader's thread -----------------------------------------------------------

    def read(self, seg: SegmentRecord, start: int) -> TailRead:
        """The entries from ``start`` that the first member holding them serves."""
        return self._run(self._read(seg, start))

    def lac(self, seg: SegmentRecord) -> int:
        """The highest LAC the members of an ACTIVE segment's ensemble report."""
        return self._run(self._highest_lac(seg))

    def committed_lac(self, meta: MetaStore, seg: SegmentRecord) -> int:
        """The last committed entry of an ACTIVE quorum segment (its etcd ``lac`` is -1): the
        highest LAC its members report, at least the last entry flushed.

        ``QuorumUnavailableError`` if no member answers."""
        flushed = flush_cursor(meta, self.log_id, seg.segment_id).cursor.next_entry
        return max(self.lac(seg), flushed - 1)

    def long_poll(
        self, seg: SegmentRecord, start: int, wait: float | None, wake: Callable[[], None]
    ) -> None:
        """Have a node answer once its LAC reaches ``start`` (or after ``wait`` s), then call
        ``wake``. A poll for the same entry already out is kept; one for another is dropped."""
        wait = MAX_WAIT if wait is None else min(wait, MAX_WAIT)
        self._submit(self._arm_poll(seg, start, wait, wake))

    def close(self) -> None:
        """Close every link and stop the loop; a call waiting on it is cancelled."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(self._timeout + 1)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()

    def __enter__(self) -> TailReads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Hand ``coro`` to the loop (started at the first call); its future.

        Under the lock that ``close`` takes first, so a coroutine handed over is a task
        before the shutdown cancels every task: its future never stays pending.
        ``concurrent.futures.CancelledError`` once closed."""
        with self._lock:
            if self._closed:
                coro.close()
                raise concurrent.futures.CancelledError()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_run_loop, args=(loop,), daemon=True, name=f"wp-tail-{self.log_id}"
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop and wait for it (it bounds its own waits)."""
        return self._submit(coro).result()

    # ---- the loop ----------------------------------------------------------------------

    async def _read(self, seg: SegmentRecord, start: int) -> TailRead:
        key = (seg.segment_id, start)
        polled, self._polled = self._polled, None
        if polled is not None and polled[0] == key:
            entries = self._entries(seg, start, polled[1], polled[2])
            if entries is not None:
                return TailRead(entries)
        failures: list[str] = []
        answered = False
        unknown = 0
        for member in self._members(seg):
            if answered and self._is_down(member):
                continue  # a member that failed lately is asked only when no other answers
            reply = await self._ask(member, seg, start, READ_BUDGET, failures)
            if reply is None:
                continue
            answered = True
            if reply.status == Status.FLUSHED:
                return TailRead(None, flushed=True)
            if reply.status != Status.OK:
                unknown += 1  # UNKNOWN: it never got this segment, or forgot it flushed
                continue
            try:
                entries = self._entries(seg, start, member, reply)
            except CorruptedDataError as e:
                self._mark_down(member, f"node {member.node_id}: a corrupt reply ({e})", failures)
                continue
            if entries is not None:
                self._preferred = member.node_id
                return TailRead(entries)
        if not answered:
            raise self._unavailable(seg, start, failures)
        assert seg.ensemble is not None and seg.ack is not None
        if seg.state is not SegmentState.ACTIVE and unknown >= len(seg.ensemble) - seg.ack + 1:
            return TailRead(None, flushed=True)  # forgotten by the nodes: wholly in etcd now
        return TailRead(None)

    async def _highest_lac(self, seg: SegmentRecord) -> int:
        failures: list[str] = []
        lacs = []
        for member in self._members(seg):
            reply = await self._ask(member, seg, _ASK_LAC_FROM, 0, failures)
            if reply is not None:
                lacs.append(reply.lac if reply.status in (Status.OK, Status.FLUSHED) else -1)
        if not lacs:
            raise self._unavailable(seg, None, failures)
        return max(lacs)

    def _members(self, seg: SegmentRecord) -> list[EnsembleMember]:
        """The ensemble, the member that served last first, those that failed lately last."""
        assert seg.ensemble is not None
        members = sorted(seg.ensemble, key=lambda m: m.node_id != self._preferred)
        return sorted(members, key=self._is_down)

    def _is_down(self, member: EnsembleMember) -> bool:
        return self._down.get(member.node_id, 0.0) > time.monotonic()

    def _mark_down(self, member: EnsembleMember, why: str, failures: list[str]) -> None:
        """``member`` failed (``why`` names it): asked last for a while, its link closed."""
        failures.append(why)
        self._down[member.node_id] = time.monotonic() + DOWN_FOR
        link = self._links.pop(member.node_id, None)
        if link is not None:
            _close_soon(link)

    async def _link(self, member: EnsembleMember) -> NodeLink:
        link = self._links.get(member.node_id)
        if link is not None and link.member == member:
            return link
        link = await NodeLink.connect(member, self._deployment, timeout=self._timeout, window=1)
        self._links[member.node_id] = link
        return link

    async def _ask(
        self,
        member: EnsembleMember,
        seg: SegmentRecord,
        start: int,
        budget: int,
        failures: list[str],
    ) -> Reply | None:
        """One READ (no wait) to ``member``; None, with the failure noted, if it fails."""
        try:
            async with asyncio.timeout(2 * self._timeout):  # connect, then the request
                link = await self._link(member)
                reply = await link.call(self._request(seg, start, budget, 0))
        except (NodeFailed, TimeoutError) as e:
            self._mark_down(member, _failure(member, e), failures)
            return None
        if reply.incarnation != member.incarnation:
            why = (
                f"node {member.node_id} at {member.address} is incarnation {reply.incarnation}, "
                f"the ensemble lists {member.incarnation}: it restarted"
            )
            self._mark_down(member, why, failures)
            return None
        self._down.pop(member.node_id, None)
        return reply

    def _request(
        self, seg: SegmentRecord, start: int, budget: int, wait_ms: int
    ) -> Callable[[int], list[bytes | memoryview]]:
        def parts(request_id: int) -> list[bytes | memoryview]:
            head = wire.request(wire.READ, request_id, self.log_id, seg.segment_id, READER_EPOCH)
            return wire.frame(head + wire.READ_BODY.pack(start, budget, wait_ms))

        return parts

    def _entries(
        self, seg: SegmentRecord, start: int, member: EnsembleMember, reply: Reply
    ) -> TailEntries | None:
        """The readable entries of a READ reply: from the batch holding ``start``, contiguous,
        at most the node's LAC and a sealed segment's last entry; None if there are none.

        A node answers whole batches, so the last may go past its LAC: cut it there.
        """
        if reply.status != Status.OK or not reply.batches:
            return None
        limit = reply.lac
        if seg.state is not SegmentState.ACTIVE:
            limit = min(limit, seg.lac)
        batches: list[Batch] = []
        for batch in reply.batches:
            if batch.first > limit:
                break
            expected = batches[-1].first + batches[-1].count if batches else None
            if batch.count < 1 or (expected is not None and batch.first != expected):
                raise CorruptedDataError(f"batches at {expected} and {batch.first} not contiguous")
            batches.append(batch)
        if not batches or not batches[0].first <= start < batches[0].first + batches[0].count:
            return None
        last = min(limit, batches[-1].first + batches[-1].count - 1)
        if last < start:
            return None
        where = f"log {self.name!r} segment {seg.segment_id} from node {member.node_id}"
        chunks = [
            chunk
            for batch in batches
            for chunk in decode_messages(
                batch.data, expected_entries=batch.count, where=f"{where} entry {batch.first}"
            )
            .column(0)
            .chunks
        ]
        return TailEntries(
            seg.segment_id, batches[0].first, start, last, pa.chunked_array(chunks, pa.binary())
        )

    def _unavailable(
        self, seg: SegmentRecord, start: int | None, failures: Sequence[str]
    ) -> QuorumUnavailableError:
        wanted = "its LAC" if start is None else f"entry {start}"
        return QuorumUnavailableError(
            f"log {self.name!r} segment {seg.segment_id}: no node of its ensemble answers "
            f"for {wanted}, which is not in object storage yet ({'; '.join(failures)})"
        )

    async def _arm_poll(
        self, seg: SegmentRecord, start: int, wait: float, wake: Callable[[], None]
    ) -> None:
        key = (seg.segment_id, start)
        poll = self._poll
        if poll is not None and poll.key == key and not poll.task.done():
            return  # still out: it answers when the LAC gets there
        if poll is not None and not poll.task.done():
            poll.task.cancel()  # for an entry the reader has moved past
            self._close_poll_link()
        task = asyncio.get_running_loop().create_task(self._long_poll(seg, start, wait))

        def answered(task: asyncio.Task[None]) -> None:
            if not task.cancelled():  # cancelled: the reader moved on, nothing to wake
                wake()

        task.add_done_callback(answered)
        self._poll = _Poll(key, task)

    async def _long_poll(self, seg: SegmentRecord, start: int, wait: float) -> None:
        """One READ with a wait to the first member that takes it; its answer is kept."""
        failures: list[str] = []
        for member in self._members(seg):
            try:
                link = self._poll_link
                if link is None or link.member != member:
                    self._close_poll_link()
                    async with asyncio.timeout(self._timeout):
                        link = await NodeLink.connect(
                            member, self._deployment, timeout=self._timeout, window=1
                        )
                    link.timeout = wait + self._timeout  # the node answers at the wait
                    self._poll_link = link
                self.polls += 1
                reply = await link.call(self._request(seg, start, READ_BUDGET, int(wait * 1000)))
            except (NodeFailed, TimeoutError) as e:
                self._close_poll_link()
                self._mark_down(member, _failure(member, e), failures)
                continue
            if reply.incarnation == member.incarnation:
                self._polled = ((seg.segment_id, start), member, reply)
            return
        log.debug("log %r: no node takes a long-poll: %s", self.name, "; ".join(failures))

    def _close_poll_link(self) -> None:
        link, self._poll_link = self._poll_link, None
        if link is not None:
            _close_soon(link)

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        links = [*self._links.values(), *([self._poll_link] if self._poll_link else [])]
        self._links.clear()
        self._poll_link = None
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


def _failure(member: EnsembleMember, error: Exception) -> str:
    """What a failed call to ``member`` says (a NodeFailed names the node already)."""
    if isinstance(error, NodeFailed):
        return str(error)
    return f"node {member.node_id} at {member.address}: no answer in time"


def _close_soon(link: NodeLink) -> None:
    """Close a link from the loop without waiting for it (its reader task ends on its own)."""
    asyncio.get_running_loop().create_task(link.close())


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()
