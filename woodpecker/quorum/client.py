"""The writer's side of the quorum: one pipelined connection per node, acks by quorum.

``NodeLink`` is one connection to one node: a handshake, then requests written without
waiting for earlier replies (up to a bounded window) and replies matched in order, every
call bounded by a deadline. ``SegmentReplicator`` sends each batch of one segment to
every live node of its ensemble, each through its own link and queue so that a slow node
never holds the others back, and acknowledges batches in entry order once ``quorum.ack``
nodes hold them (``AckQuorum``). It runs on an asyncio loop; the protocol it follows is
docs/quorum.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import xxhash

from woodpecker.deployment import Deployment
from woodpecker.errors import (
    OutcomeUnknownError,
    QuorumUnavailableError,
    WoodpeckerError,
    from_wire,
)
from woodpecker.meta.records import EnsembleMember
from woodpecker.quorum import wire
from woodpecker.quorum.wire import Batch, Reply, Status

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 256 * 1024 * 1024
"""A reply frame larger than this is a broken node, not an answer."""

WINDOW = 64
"""Requests in flight to one node; a node that lets it fill stops being sent more."""


class NodeFailed(Exception):
    """A node did not answer in time, closed the connection, or answered nonsense."""


@dataclass(frozen=True, slots=True)
class QuorumSegment:
    """A segment as its writer of ``epoch`` sees it, with the quorum rules it writes by."""

    log_id: int
    segment_id: int
    epoch: int
    ack: int
    node_timeout: float  # seconds a node may take to answer before it counts as failed

    def __str__(self) -> str:
        return f"segment {self.log_id}/{self.segment_id}"


class NodeLink:
    """One connection to one node; up to ``window`` requests in flight, answered in order.

    Every request must be answered within ``timeout`` of being written (one timer, on the
    oldest unanswered request, since replies come in order); otherwise the link fails
    and every waiting request with it (NodeFailed).
    """

    def __init__(
        self,
        member: EnsembleMember,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        window: int,
        timeout: float,
    ) -> None:
        self.member = member
        self.timeout = timeout
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(window)
        self._waiting: deque[tuple[int, asyncio.Future[Reply], float]] = deque()
        self._watchdog: asyncio.Handle | None = None
        self._next_id = 0
        self._failure: NodeFailed | None = None
        self._replies = asyncio.create_task(self._read_replies())

    @classmethod
    async def connect(
        cls, member: EnsembleMember, deployment: Deployment, *, timeout: float, window: int
    ) -> NodeLink:
        """Connect and shake hands within ``timeout``; NodeFailed, or the node's refusal."""
        host, _, port = member.address.rpartition(":")
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host.strip("[]"), int(port), limit=MAX_REPLY_BYTES
                )
                writer.writelines(wire.frame(wire.hello(deployment)))
                kind, body = wire.decode_control(await wire.read_frame(reader, 1 << 16))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, wire.MalformedFrame) as e:
            raise NodeFailed(f"node {member.node_id} at {member.address}: {e!r}") from None
        if kind == wire.REFUSED:
            writer.close()
            raise from_wire(body)
        if kind != wire.WELCOME:
            writer.close()
            raise NodeFailed(f"node {member.node_id}: a handshake answer of type {kind}")
        if body.get("incarnation") != member.incarnation:
            writer.close()
            raise NodeFailed(
                f"node {member.node_id} at {member.address} is incarnation "
                f"{body.get('incarnation')}, the ensemble lists {member.incarnation}: it restarted"
            )
        return cls(member, reader, writer, window=window, timeout=timeout)

    async def send(
        self, parts: Callable[[int], Sequence[bytes | memoryview]]
    ) -> asyncio.Future[Reply]:
        """Write the request ``parts(request_id)`` once a window slot is free; its reply's future.

        Requests are written in the order of the calls. A full window opens within the
        timeout, or the oldest request's deadline fails the link (NodeFailed) and every
        waiter with it.
        """
        if self._failure is not None:
            raise self._failure
        await self._slots.acquire()  # a full window opens, or the watchdog fails the link
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        if self._writer.is_closing():  # the node closed it; its reader says why soon
            self._slots.release()
            self._fail("connection closed")
            raise self._failure  # type: ignore[misc]
        self._next_id += 1
        future: asyncio.Future[Reply] = self._loop.create_future()
        future.add_done_callback(lambda _: self._slots.release())
        self._waiting.append((self._next_id, future, self._loop.time() + self.timeout))
        if self._watchdog is None:
            self._arm_watchdog()
        self._writer.writelines(parts(self._next_id))
        return future

    async def call(self, parts: Callable[[int], Sequence[bytes | memoryview]]) -> Reply:
        """One request and its reply, or NodeFailed; every wait bounded by the timeout."""
        return await (await self.send(parts))

    def _arm_watchdog(self) -> None:
        self._watchdog = None
        if self._waiting:
            self._watchdog = self._loop.call_at(self._waiting[0][2], self._check_oldest)

    def _check_oldest(self) -> None:
        """The oldest request's deadline passed, unless it was answered meanwhile. A loop
        that ran late may have read its reply in this very pass, the reading task not yet
        resumed (it runs after the timers that fell due): judge once it has."""
        self._watchdog = None
        if self._waiting and self._loop.time() >= self._waiting[0][2]:
            self._watchdog = self._loop.call_soon(self._fail_if_unanswered, self._waiting[0][0])
        else:
            self._arm_watchdog()

    def _fail_if_unanswered(self, request_id: int) -> None:
        self._watchdog = None
        if self._waiting and self._waiting[0][0] == request_id:
            self._fail(f"no answer within {self.timeout:g}s")
        else:
            self._arm_watchdog()

    async def _read_replies(self) -> None:
        try:
            while True:
                reply = wire.decode_reply(await wire.read_frame(self._reader, MAX_REPLY_BYTES))
                if not self._waiting or self._waiting[0][0] != reply.request_id:
                    raise wire.MalformedFrame(f"an answer to request {reply.request_id}, unasked")
                _, future, _ = self._waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except (OSError, asyncio.IncompleteReadError, wire.MalformedFrame) as e:
            self._fail(f"connection lost ({e!r})")

    def _fail(self, why: str) -> None:
        if self._failure is None:
            self._failure = NodeFailed(
                f"node {self.member.node_id} at {self.member.address}: {why}"
            )
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiting:
            _, future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(self._failure)
                future.exception()  # a reply nobody waits for any more is no error to log
        self._writer.close()

    async def close(self) -> None:
        self._fail("link closed")
        self._replies.cancel()
        with contextlib.suppress(BaseException):
            await self._replies


async def connect_ensemble(
    ensemble: Sequence[EnsembleMember], deployment: Deployment, timeout: float
) -> tuple[list[NodeLink], list[str]]:
    """Connect to every member at once: the links, and why the others could not be reached.

    A refusal (another deployment or protocol version) is raised as the node's error,
    the other links closed: it is a configuration to fix, not a node to count as failed.
    """
    results = await asyncio.gather(
        *(NodeLink.connect(m, deployment, timeout=timeout, window=WINDOW) for m in ensemble),
        return_exceptions=True,
    )
    links = [r for r in results if isinstance(r, NodeLink)]
    refusal = next((r for r in results if isinstance(r, WoodpeckerError)), None)
    if refusal is not None:
        await asyncio.gather(*(link.close() for link in links))
        raise refusal
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, NodeFailed):
            raise result
    return links, [str(r) for r in results if isinstance(r, NodeFailed)]


class AckQuorum:
    """Which batches are acknowledged: the longest prefix held by ``ack`` nodes each.

    Pure bookkeeping: ``held`` records a node's last entry, ``advance`` says how many
    pending batches are now acknowledged, in entry order, never one whose predecessor
    is not.
    """

    def __init__(self, ack: int) -> None:
        self.ack = ack
        self.lac = -1
        self._last: dict[str, int] = {}

    def held(self, node_id: str, last: int) -> None:
        self._last[node_id] = max(self._last.get(node_id, -1), last)

    def forget(self, node_id: str) -> None:
        """A failed node: what it held no longer counts for batches not yet acked."""
        self._last.pop(node_id, None)

    def holders(self, entry: int) -> int:
        return sum(1 for last in self._last.values() if last >= entry)

    def advance(self, ends: Sequence[int]) -> int:
        """How many of the pending batches (their last entries, in order) are now acked."""
        n = 0
        for end in ends:
            if self.holders(end) < self.ack:
                break
            self.lac = end
            n += 1
        return n


@dataclass
class _Pending:
    batch: Batch
    checksum: int
    deadline: float
    future: asyncio.Future[int]

    @property
    def end(self) -> int:
        return self.batch.first + self.batch.count - 1


class SegmentReplicator:
    """Replicates one segment's batches to its ensemble and acks them by quorum.

    ``append`` returns a future resolved with the segment's LAC once ``ack`` nodes hold
    the batch and every earlier one, or failed with ``QuorumUnavailableError`` at the
    batch's deadline (and every later batch with it: the LAC never skips one). A node
    that does not answer within its link's timeout, or answers anything but OK from the
    incarnation the ensemble lists, leaves the live set for the rest of the segment.
    """

    def __init__(
        self,
        links: Sequence[NodeLink],
        segment: QuorumSegment,
    ) -> None:
        self.segment = segment
        self.log_id, self.segment_id, self.epoch = segment.log_id, segment.segment_id, segment.epoch
        self.quorum = AckQuorum(segment.ack)
        self.live: dict[str, NodeLink] = {link.member.node_id: link for link in links}
        self._queues: dict[str, asyncio.Queue[_Pending]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._pending: deque[_Pending] = deque()
        self._deadline: asyncio.TimerHandle | None = None
        self._next_entry = 0
        self._failure: WoodpeckerError | None = None
        self._lac_push: asyncio.Handle | None = None
        self.fenced_by: int | None = None  # the epoch a node said fenced this writer
        self.on_drop: Callable[[str], None] | None = None  # told each node that leaves
        for node_id, link in self.live.items():
            queue: asyncio.Queue[_Pending] = asyncio.Queue()
            self._queues[node_id] = queue
            self._senders[node_id] = asyncio.create_task(self._send_loop(link, queue))

    @classmethod
    async def open(
        cls,
        ensemble: Sequence[EnsembleMember],
        deployment: Deployment,
        segment: QuorumSegment,
    ) -> SegmentReplicator:
        """Connect to every member at once; QuorumUnavailableError if fewer than ``ack`` answer."""
        links, failures = await connect_ensemble(ensemble, deployment, segment.node_timeout)
        if len(links) < segment.ack:
            await asyncio.gather(*(link.close() for link in links))
            raise QuorumUnavailableError(
                f"{segment}: {len(links)} of {len(ensemble)} nodes answer, "
                f"{segment.ack} needed ({'; '.join(failures)})"
            )
        for failure in failures:
            log.warning("%s: %s", segment, failure)
        return cls(links, segment)

    @property
    def lac(self) -> int:
        return self.quorum.lac

    def append(
        self,
        payload_message: bytes | memoryview,
        count: int,
        timeout: float,
        first: int | None = None,
    ) -> asyncio.Future[int]:
        """Send one Arrow batch message of ``count`` entries; its entry ids follow the last
        (``first``, if given, must be that id: the caller's numbering and ours agree)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self._failure is not None:
            future.set_exception(self._failure)
            return future
        if first is not None and first != self._next_entry:
            raise ValueError(f"{self.segment}: batch at entry {first}, expected {self._next_entry}")
        batch = Batch(self._next_entry, count, payload_message)
        self._next_entry += count
        deadline = asyncio.get_running_loop().time() + timeout
        item = _Pending(batch, xxhash.xxh3_64_intdigest(payload_message), deadline, future)
        self._pending.append(item)
        if len(self._pending) == 1:
            self._arm_deadline()
        for node_id in self.live:
            self._queues[node_id].put_nowait(item)
        return future

    async def _send_loop(self, link: NodeLink, queue: asyncio.Queue[_Pending]) -> None:
        """Feed one node in entry order, its window bounding what is in flight."""
        while True:
            item = await queue.get()

            def parts(request_id: int, item: _Pending = item) -> Sequence[bytes | memoryview]:
                return wire.append(
                    request_id,
                    self.log_id,
                    self.segment_id,
                    self.epoch,
                    item.batch,
                    self.quorum.lac,
                    item.checksum,
                )

            try:
                future = await link.send(parts)
            except NodeFailed as e:
                self._drop(link, str(e))
                return
            finally:
                queue.task_done()
            future.add_done_callback(functools.partial(self._on_reply, link))

    def _on_reply(self, link: NodeLink, future: asyncio.Future[Reply]) -> None:
        node_id = link.member.node_id
        if node_id not in self.live:
            return
        error = future.exception()
        if error is not None:
            self._drop(link, str(error))
            return
        reply = future.result()
        if reply.status == Status.OK and reply.incarnation == link.member.incarnation:
            self.quorum.held(node_id, reply.last)
            self._settle()
        elif reply.status == Status.FENCED:
            self.fenced_by = reply.fence_epoch
            self._fail_all(
                OutcomeUnknownError(
                    f"segment {self.log_id}/{self.segment_id}: epoch {self.epoch} was fenced by "
                    f"epoch {reply.fence_epoch} (node {node_id}); recovery may keep these entries"
                )
            )
        else:
            self._drop(link, f"answered {wire.status_name(reply.status)}")

    def _drop(self, link: NodeLink, why: str) -> None:
        node_id = link.member.node_id
        if self.live.pop(node_id, None) is None:
            return
        log.warning(
            "segment %d/%d: node %s leaves the ensemble (%s); %d live of %d needed",
            self.log_id,
            self.segment_id,
            node_id,
            why,
            len(self.live),
            self.quorum.ack,
        )
        self.quorum.forget(node_id)
        self._senders.pop(node_id).cancel()
        self._closing.add(asyncio.get_running_loop().create_task(link.close()))
        if self.on_drop is not None:
            self.on_drop(node_id)

    def _settle(self) -> None:
        n = self.quorum.advance([p.end for p in self._pending])
        for _ in range(n):
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_result(self.quorum.lac)
        if n:
            self._arm_deadline()
            if not self._pending and self._lac_push is None:
                self._lac_push = asyncio.get_running_loop().call_soon(self._push_lac)

    def _push_lac(self) -> None:
        """Nothing is in flight: tell the nodes the LAC, which no append will carry now
        (readers tailing a node and its flushes wait for it)."""
        self._lac_push = None
        if not self._pending:
            for link in list(self.live.values()):
                self._closing.add(asyncio.get_running_loop().create_task(self._tell_lac(link)))

    async def _tell_lac(
        self, link: NodeLink, *, sealed: bool = False, lac: int | None = None
    ) -> None:
        lac = self.quorum.lac if lac is None else lac
        try:
            reply = await link.call(
                lambda rid: wire.frame(
                    wire.request(wire.LAC, rid, self.log_id, self.segment_id, self.epoch)
                    + wire.lac_body(lac, sealed=sealed)
                )
            )
        except NodeFailed as e:
            self._drop(link, str(e))
            return
        if reply.status == Status.FENCED:
            self.fenced_by = reply.fence_epoch

    async def finish(self, timeout: float, *, sealed: bool = False, lac: int | None = None) -> None:
        """The segment is over: let every live node receive what was queued for it and the
        final LAC (``lac``, else ours), within ``timeout``; then close. ``sealed``: the
        segment is sealed at that LAC, and the nodes are told so (they flush all of it at
        once, then forget it)."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(
                    *(self._queues[n].join() for n in list(self.live)), return_exceptions=True
                )
                await asyncio.gather(
                    *(
                        self._tell_lac(link, sealed=sealed, lac=lac)
                        for link in list(self.live.values())
                    ),
                    return_exceptions=True,
                )
        except TimeoutError:
            log.warning("%s: sealed before every node received its entries", self.segment)
        await self.close()

    def _arm_deadline(self) -> None:
        """One timer, at the deadline of the oldest pending batch."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._pending:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_at(self._pending[0].deadline, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if not self._pending:
            return
        head = self._pending[0]
        if asyncio.get_running_loop().time() < head.deadline:
            self._arm_deadline()
            return
        self._fail_all(
            QuorumUnavailableError(
                f"segment {self.log_id}/{self.segment_id}: entries {head.batch.first}..{head.end} "
                f"are held by {self.quorum.holders(head.end)} node(s) of {self.quorum.ack} needed "
                f"after the append deadline; {len(self.live)} node(s) of the ensemble answer"
            )
        )

    def _fail_all(self, error: WoodpeckerError) -> None:
        """Fail every pending batch, and every later append: the segment takes no more."""
        self._failure = error
        for queue in self._queues.values():
            while not queue.empty():
                queue.get_nowait()
                queue.task_done()
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(error)

    async def close(self) -> None:
        """Stop sending and close every link; pending batches are left as they are."""
        if self._deadline is not None:
            self._deadline.cancel()
        if self._lac_push is not None:
            self._lac_push.cancel()
        tasks = list(self._senders.values())
        for task in tasks:
            task.cancel()
        links = list(self.live.values())
        self.live.clear()  # replies failed by the closing links are no node failures
        await asyncio.gather(*tasks, *self._closing, return_exceptions=True)
        await asyncio.gather(*(link.close() for link in links))
