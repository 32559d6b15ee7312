"""The coordinator: orders batches, forms blocks, commits them in order, acks producers.

It is a single-threaded state machine driven by the logstore's event loop. Every
etcd call (opening a log: session acquire, recovery and the next segment id;
commits; seals; lease release) runs on a small thread pool and its result comes
back through one results queue, so while it serves the loop never waits on etcd
(only ``close`` at shutdown releases sessions inline): a log that is slow to open
holds back only its own batches, never another log's acks.
Per log it keeps a *timeline*: the ordered list of what must reach etcd —
segment creations, blocks (uploading → done) and seals. The head of the timeline
is committed first and at most one metadata operation per log is in flight, so

- commits and acks follow entry-id order, and the LAC only covers a contiguous
  prefix (invariant 2): a done block waits for every block before it;
- consecutive done blocks of a segment are committed together, in one txn that
  checks the writer's fence (group commit, invariant 1 and 4);
- a failed block fails every later block of its segment and rolls the segment.

A QuorumBuffer log (docs/quorum.md) keeps the same timeline, with blocks replicated
to the segment's ensemble of quorum nodes instead of uploaded (``workers/quorum_writer.py``):
a segment's create chooses its ensemble and records it by CAS, its batches go out once
that create is applied, each is acked as soon as ``quorum.ack`` nodes hold it and every
batch before it, and etcd sees only the create and the seal (at the LAC).

See docs/write-pipeline.md for the protocol and its failure cases.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from woodpecker.config import Config
from woodpecker.deployment import Deployment
from woodpecker.errors import (
    CommitNotAttemptedError,
    CommitOutcomeUnknownError,
    MetadataUnavailableError,
    NotDurableError,
    OutcomeUnknownError,
    QuorumUnavailableError,
    WoodpeckerError,
    WriterClosedError,
    WriterFencedError,
    not_written,
    outcome_unknown,
)
from woodpecker.meta import (
    MAX_BLOCKS_PER_COMMIT,
    BlockRecord,
    MetaStore,
    SegmentRecord,
    WriterSession,
)
from woodpecker.meta.nodes import registered_nodes
from woodpecker.meta.records import EnsembleMember
from woodpecker.quorum.ensemble import NodeKey, choose_ensemble, node_key, spare_exists
from workers import metrics
from workers.quorum_writer import QuorumWriter

log = logging.getLogger("woodpecker.coordinator")

SEAL_RETRY_INTERVAL = 1.0  # seconds between attempts to seal while etcd is unreachable
MAX_HELD_BATCHES = 4096  # batches of one log held while it opens; more are refused
SUSPECT_FOR = 60.0  # seconds a node that failed a segment is not chosen for a new one
ROLL_CHECK_INTERVAL = 2.0  # seconds between looks for a spare while a segment runs degraded

OpenReply = Callable[[WoodpeckerError | None], None]


@dataclass
class Batch:
    """One producer's sealed Arrow batch: a byte range of its arena and an entry count."""

    producer: int
    seq: int
    offset: int
    length: int
    count: int
    arrived: float  # when it reached the logstore (monotonic clock), for ack latency
    first_entry: int = 0  # assigned when the batch joins its log's open block


class BlockState(enum.Enum):
    WAITING = "waiting"  # quorum: its segment's ensemble is not open yet
    UPLOADING = "uploading"
    UPLOADED = "uploaded"  # durable in storage, waiting for its turn to commit
    COMMITTING = "committing"  # in the commit txn in flight: if that fails, its fate is unknown
    # (quorum: sent to the nodes, and its failure has an unknown outcome: recovery may keep it)


@dataclass
class Block:
    """Consecutive batches of one segment, uploaded as one object."""

    segment_id: int
    block_id: int
    first_entry: int
    batches: list[Batch]
    key: str  # the object it is uploaded to (from the uploader's reply: maybe a shared file)
    job: int
    offset: int = 0  # where the block starts in that object
    state: BlockState = BlockState.UPLOADING
    uploaded_at: float | None = None  # monotonic clock
    size: int = 0
    checksum: int = 0
    acked: int = 0  # quorum: how many of its batches (a prefix) are acked already

    @property
    def entries(self) -> int:
        return sum(b.count for b in self.batches)


@dataclass
class SegmentCursor:
    """The segment currently taking batches, as the coordinator assigns ids in it."""

    segment_id: int
    created: float = field(default_factory=time.monotonic)
    next_entry: int = 0
    next_block: int = 0
    bytes: int = 0


class MetaKind(enum.Enum):
    CREATE = "create"
    SEAL = "seal"


@dataclass
class MetaOp:
    """A metadata step of the timeline other than a block: create or seal a segment."""

    kind: MetaKind
    segment_id: int


@dataclass
class LogState:
    log_id: int
    name: str
    session: WriterSession
    next_segment: int
    writers: dict[int, int] = field(default_factory=dict)  # producer -> open writer count
    segment: SegmentCursor | None = None
    open_batches: list[Batch] = field(default_factory=list)
    open_bytes: int = 0
    open_since: float | None = None  # when the oldest open batch arrived (monotonic clock)
    timeline: deque[Block | MetaOp] = field(default_factory=deque)
    busy: bool = False  # the metadata step at the head of the timeline is in flight
    committed_size: dict[int, int] = field(default_factory=dict)  # segment -> bytes committed
    fenced_by: WriterFencedError | None = None  # another session took the log
    retry_at: float | None = None  # a failed seal is retried from then on (monotonic clock)
    quorum: bool = False  # a QuorumBuffer log: blocks go to quorum nodes
    open_segments: set[int] = field(default_factory=set)  # quorum: ensembles connected
    degraded: dict[int, float] = field(default_factory=dict)  # quorum: segment -> next look
    acked_end: dict[int, int] = field(default_factory=dict)  # quorum: segment -> last acked


@dataclass
class Opening:
    """A log whose writer session is being acquired and recovered on the pool.

    Producers that asked to open it wait for the result; batches sent for it meanwhile
    are held, in arrival order, and replayed once it is open (or failed with its error).
    """

    name: str
    waiters: list[tuple[int, OpenReply]] = field(default_factory=list)
    held: list[Batch] = field(default_factory=list)


class Outbox:
    """What the coordinator asks of the logstore (sockets and uploaders live there)."""

    def __init__(
        self,
        *,
        dispatch: Callable[[int, str, list[list[int]]], None],
        ack: Callable[[int, int, int, int], None],
        nack: Callable[[int, int, WoodpeckerError], None],
        wake: Callable[[], None],
        read_batch: Callable[[int, int, int], bytes],
    ) -> None:
        self.dispatch = dispatch
        self.read_batch = read_batch  # a copy of a batch's bytes in its producer's arena
        self.ack = ack
        self.nack = nack
        self.wake = wake


class Coordinator:
    """Owns this logstore's writer sessions and orders everything written through them."""

    def __init__(self, config: Config, meta: MetaStore, owner: str, outbox: Outbox) -> None:
        self.config = config
        self.meta = meta
        self.owner = owner
        self.out = outbox
        self._quorum: QuorumWriter | None = None
        self._quorum_lock = threading.Lock()
        self._suspects: dict[NodeKey, float] = {}  # a node run that failed a segment -> until
        self.logs: dict[int, LogState] = {}
        self.opening: dict[int, Opening] = {}
        self.jobs: dict[int, tuple[LogState, Block]] = {}
        self.inflight = 0
        self._next_job = 1
        self._pool = ThreadPoolExecutor(4, "commit")
        self._results: deque[Callable[[], None]] = deque()
        # batches a producer still has in the pipeline (its arena must stay mapped)
        self.producer_batches: dict[int, int] = {}

    # ---- producers -------------------------------------------------------------------

    def open_log(self, producer: int, name: str, log_id: int, reply: OpenReply) -> None:
        """Join (or start) this logstore's writer session for the log; fences other owners.

        ``reply`` is called once the producer may write: at once if the session is live,
        otherwise when acquiring and recovering it on the pool finished (with its error
        if that failed)."""
        opening = self.opening.get(log_id)
        if opening is not None:
            opening.waiters.append((producer, reply))
            return
        state = self.logs.get(log_id)
        if state is not None and state.fenced_by is None:
            state.writers[producer] = state.writers.get(producer, 0) + 1
            reply(None)
            return
        # a fenced session was already released by _fence
        self.opening[log_id] = Opening(name, [(producer, reply)])
        self._background(self._open_session, (log_id,), lambda f: self._on_opened(log_id, f))

    def _open_session(self, log_id: int) -> tuple[WriterSession, int, bool]:
        """On the pool: take the log (fencing any other owner) and recover it.

        A quorum segment left ACTIVE is recovered through its nodes (fence with this
        session's epoch, the maximum rule) before it is sealed."""
        session = self.meta.acquire_writer(log_id, self.owner, preempt=True)
        try:
            quorum = self.meta.get_log(session.name).buffer_mode == "quorum"
            sealed = session.recover(
                lambda record: self.quorum_writer.recover(record, session.epoch)
            )
            for record in sealed:
                if record.quorum:
                    self.quorum_writer.announce_seal(record, session.epoch)
            return session, session.next_segment_id(), quorum
        except BaseException:
            session.release()
            raise

    @property
    def quorum_writer(self) -> QuorumWriter:
        """Started with the first quorum segment this logstore writes or recovers."""
        with self._quorum_lock:
            if self._quorum is None:
                self._quorum = QuorumWriter(self.config, Deployment.of(self.config))
            return self._quorum

    def _on_opened(self, log_id: int, future: Future) -> None:
        opening = self.opening.pop(log_id)
        error = future.exception()
        if error is not None:
            failure = (
                error
                if isinstance(error, WoodpeckerError)
                else WoodpeckerError(f"opening log {opening.name!r} failed: {error}")
            )
            log.warning("opening log %r failed: %s", opening.name, failure)
            for _, reply in opening.waiters:
                reply(failure)
            self._fail_batches(opening.held, not_written(failure))
            return
        session, next_segment, quorum = future.result()
        state = LogState(log_id, opening.name, session, next_segment, quorum=quorum)
        self.logs[log_id] = state
        for producer, reply in opening.waiters:
            state.writers[producer] = state.writers.get(producer, 0) + 1
            reply(None)
        self._release_batches(opening.held)  # _take counts them again
        for batch in opening.held:
            self._take(log_id, batch)

    def close_log(self, producer: int, log_id: int) -> None:
        """A writer closed; the last one seals the active segment (the session stays)."""
        state = self.logs.get(log_id)
        if state is None or producer not in state.writers:
            return
        state.writers[producer] -= 1
        if state.writers[producer] <= 0:
            del state.writers[producer]
        if not state.writers and state.fenced_by is None:
            self._roll(state)
            self._pump(state)

    def producer_gone(self, producer: int) -> None:
        for opening in self.opening.values():
            opening.waiters = [w for w in opening.waiters if w[0] != producer]
        for state in list(self.logs.values()):
            if producer in state.writers:
                state.writers[producer] = 1
                self.close_log(producer, state.log_id)

    def on_batch(
        self, producer: int, log_id: int, seq: int, offset: int, length: int, count: int
    ) -> None:
        batch = Batch(producer, seq, offset, length, count, time.monotonic())
        opening = self.opening.get(log_id)
        if opening is None:
            self._take(log_id, batch)
        elif len(opening.held) >= MAX_HELD_BATCHES:
            self.out.nack(
                producer,
                seq,
                CommitNotAttemptedError(
                    f"log {opening.name!r} is still opening (etcd is slow) and already "
                    f"holds {MAX_HELD_BATCHES} batches"
                ),
            )
        else:
            opening.held.append(batch)
            self._count(batch)  # the producer's arena must stay mapped while it is held

    def _take(self, log_id: int, batch: Batch) -> None:
        """Give the batch its entry ids in the log's open block (or refuse it)."""
        state = self.logs.get(log_id)
        if state is None or batch.producer not in state.writers:
            self.out.nack(
                batch.producer,
                batch.seq,
                WriterClosedError(f"log id {log_id} is not open for writing by this producer"),
            )
            return
        if state.fenced_by is not None:
            self.out.nack(batch.producer, batch.seq, state.fenced_by)
            return
        cursor = self._cursor(state)
        batch.first_entry = cursor.next_entry
        cursor.next_entry += batch.count
        cursor.bytes += batch.length
        if state.open_since is None:
            state.open_since = time.monotonic()
        state.open_batches.append(batch)
        state.open_bytes += batch.length
        self._count(batch)
        if self._ready(state, time.monotonic()):
            self._dispatch_open(state)

    def _count(self, batch: Batch) -> None:
        self.producer_batches[batch.producer] = self.producer_batches.get(batch.producer, 0) + 1
        metrics.arena_used.inc(batch.length)

    def _ready(self, state: LogState, now: float) -> bool:
        """Whether the open block goes out now: it is full, or an upload slot is free and
        it has lingered long enough (``uploader.linger_ms``: fewer, larger PUTs)."""
        limits = self.config.uploader
        if state.open_since is None:
            return False
        if state.quorum:
            return True  # nodes ack each batch on its own; they form the large objects
        return state.open_bytes >= limits.max_block_bytes or (
            self.inflight < limits.max_inflight
            and now - state.open_since >= limits.linger_ms / 1000
        )

    def _cursor(self, state: LogState) -> SegmentCursor:
        """The segment for the next batch, rolling first when a limit is reached."""
        cursor = state.segment
        policy = self.config.segment
        if cursor is not None and (
            cursor.bytes >= policy.max_bytes
            or cursor.next_block >= policy.max_blocks
            or time.monotonic() - cursor.created >= policy.max_age
        ):
            self._roll(state)
            cursor = None
        if cursor is None:
            cursor = SegmentCursor(state.next_segment)
            state.next_segment += 1
            state.segment = cursor
            state.timeline.append(MetaOp(MetaKind.CREATE, cursor.segment_id))
        return cursor

    def _roll(self, state: LogState) -> None:
        """Close the current segment: its open batches go out, then it is sealed."""
        if state.segment is None:
            return
        self._dispatch_open(state)
        state.timeline.append(MetaOp(MetaKind.SEAL, state.segment.segment_id))
        state.segment = None

    # ---- uploads ---------------------------------------------------------------------

    @staticmethod
    def _take_open(state: LogState) -> list[Batch]:
        """Empty the open block, returning its batches."""
        batches = state.open_batches
        state.open_batches, state.open_bytes, state.open_since = [], 0, None
        return batches

    def _dispatch_open(self, state: LogState) -> None:
        if not state.open_batches or state.segment is None:
            return
        cursor = state.segment
        batches = self._take_open(state)
        job = self._next_job
        self._next_job += 1
        if state.quorum:
            # no block record: block ids do not count towards segment.max_blocks
            block = Block(
                cursor.segment_id,
                0,
                batches[0].first_entry,
                batches,
                "",
                job,
                state=BlockState.WAITING,
            )
            state.timeline.append(block)
            self.jobs[job] = (state, block)
            if cursor.segment_id in state.open_segments:
                self._replicate(state, block)
            else:
                self._pump(state)  # its create may be the next metadata step
            return
        block = Block(
            cursor.segment_id,
            cursor.next_block,
            batches[0].first_entry,
            batches,
            # the epoch makes keys unique per writer session: a fenced session that still
            # uploads can never overwrite an object the session that took over committed
            f"{state.log_id}/{cursor.segment_id}/{cursor.next_block}-e{state.session.epoch}.arrow",
            job,
        )
        cursor.next_block += 1
        state.timeline.append(block)
        self.jobs[job] = (state, block)
        self.inflight += 1
        self.out.dispatch(
            job, block.key, [[b.producer, b.offset, b.length, b.count] for b in batches]
        )

    def dispatch_waiting(self) -> None:
        """Upload room freed (or lingering ended): send the open blocks that waited."""
        now = time.monotonic()
        for state in self.logs.values():
            if self.inflight >= self.config.uploader.max_inflight:
                return
            if self._ready(state, now):
                self._dispatch_open(state)

    def next_deadline(self) -> float | None:
        """When the next lingering open block is due (monotonic), None if none lingers.

        A block already due that waits for an upload slot is not counted: the upload
        that frees the slot wakes the loop."""
        now, linger = time.monotonic(), self.config.uploader.linger_ms / 1000
        due = [s.open_since + linger for s in self.logs.values() if s.open_since is not None]
        return min((t for t in due if t > now), default=None)

    def on_upload_done(self, job: int, key: str, offset: int, size: int, checksum: int) -> None:
        """The block is durable as ``size`` bytes at ``offset`` of object ``key`` (its own
        key, or the uploader's append file of the segment)."""
        self.inflight -= 1
        entry = self.jobs.pop(job, None)
        if entry is not None:
            state, block = entry
            block.state, block.size, block.checksum = BlockState.UPLOADED, size, checksum
            block.key, block.offset = key, offset
            block.uploaded_at = time.monotonic()
            self._pump(state)
        self.dispatch_waiting()

    def on_upload_failed(self, job: int, error: WoodpeckerError) -> None:
        self.inflight -= 1
        entry = self.jobs.pop(job, None)
        if entry is not None:
            state, block = entry
            log.warning("block upload failed, rolling segment: %s", error)
            self._fail_segment(state, block.segment_id, not_written(error))
            self._pump(state)
        self.dispatch_waiting()

    # ---- failures --------------------------------------------------------------------

    def _fail_batches(self, batches: list[Batch], error: WoodpeckerError) -> None:
        """NACK the batches and let go of them."""
        for b in batches:
            self.out.nack(b.producer, b.seq, error)
        self._release_batches(batches)

    def _release_batches(self, batches: list[Batch]) -> None:
        for b in batches:
            self.producer_batches[b.producer] -= 1
        metrics.arena_used.dec(sum(b.length for b in batches))

    def _fail_pending(
        self,
        state: LogState,
        error: WoodpeckerError,
        *,
        sent: WoodpeckerError | None = None,
        segment_id: int | None = None,
    ) -> None:
        """The one path that fails what a log has pending, in ``segment_id`` or in all
        its segments: the open batches and every block not sent to etcd are NACKed with
        ``error``. The blocks of the commit that was sent get ``sent``, the outcome of
        that commit; with None they stay, and that commit's result decides their fate.
        Metadata steps stay on the timeline."""
        kept: deque[Block | MetaOp] = deque()
        for item in state.timeline:
            committing = isinstance(item, Block) and item.state is BlockState.COMMITTING
            if (
                isinstance(item, MetaOp)
                or segment_id not in (None, item.segment_id)
                or (committing and sent is None)
            ):
                kept.append(item)
                continue
            # if still uploading, its result is ignored and the object stays an orphan
            self.jobs.pop(item.job, None)
            self._fail_batches(
                item.batches[item.acked :], sent if committing and sent is not None else error
            )
        state.timeline = kept
        if segment_id is None or (state.segment and state.segment.segment_id == segment_id):
            self._fail_batches(self._take_open(state), error)

    def _fail_segment(
        self,
        state: LogState,
        segment_id: int,
        error: WoodpeckerError,
        sent: WoodpeckerError | None = None,
    ) -> None:
        """Fail every block of the segment not committed yet (the LAC stops before them)
        and roll."""
        self._fail_pending(state, error, sent=sent, segment_id=segment_id)
        if state.segment is not None and state.segment.segment_id == segment_id:
            self._roll(state)

    def _fence(self, state: LogState, error: WriterFencedError) -> None:
        """Another session took the log: fail everything pending, accept nothing more.

        A commit is conditional on the fence: the one it failed was not applied either."""
        state.fenced_by = error
        metrics.fenced.inc()
        sent: WoodpeckerError = error
        if state.quorum:
            # what reached the nodes may be kept by the new writer's recovery
            sent = OutcomeUnknownError(f"{error}; this append had reached quorum nodes")
            for segment_id in state.open_segments:
                self.quorum_writer.finish(state.log_id, segment_id)
            state.open_segments.clear()
        self._fail_pending(state, error, sent=sent)
        state.timeline.clear()
        state.segment = None
        self._background(state.session.release, (), _log_release_failure)

    # ---- commits ---------------------------------------------------------------------

    def _pump(self, state: LogState) -> None:
        """Start the next metadata step at the head of the timeline, if it is ready."""
        if (
            state.busy
            or not state.timeline
            or state.fenced_by is not None
            or state.retry_at is not None
        ):
            return
        if state.quorum:
            self._pump_quorum(state)
            return
        head = state.timeline[0]
        if isinstance(head, MetaOp):
            fn = (
                state.session.create_segment
                if head.kind is MetaKind.CREATE
                else state.session.seal_segment
            )
            self._submit(state, 1, head.kind.value, fn, head.segment_id)
            return
        group: list[Block] = []
        for item in state.timeline:
            if (
                not isinstance(item, Block)
                or item.state is not BlockState.UPLOADED
                or item.segment_id != head.segment_id
            ):
                break
            group.append(item)
            if len(group) == MAX_BLOCKS_PER_COMMIT:
                break
        if not group:
            return
        oldest = time.monotonic() - min(b.uploaded_at for b in group if b.uploaded_at is not None)
        if oldest > self.config.retention.orphan_grace / 2:
            # the orphan sweep may already have taken an object this old: never commit it
            self._fail_segment(
                state,
                head.segment_id,
                NotDurableError(
                    f"log {state.name}: block uploaded {oldest:.0f}s ago could not be "
                    "committed within half of retention.orphan_grace; segment rolled"
                ),
            )
            self._pump(state)
            return
        committed = state.committed_size.get(head.segment_id, 0) + sum(b.size for b in group)
        records = [
            BlockRecord(
                log_id=state.log_id,
                segment_id=b.segment_id,
                block_id=b.block_id,
                first_entry_id=b.first_entry,
                entry_count=b.entries,
                size=b.size,
                key=b.key,
                offset=b.offset,
                length=b.size,
                checksum=b.checksum,
            )
            for b in group
        ]
        for b in group:
            b.state = BlockState.COMMITTING
        lac = group[-1].first_entry + group[-1].entries - 1
        self._submit(
            state,
            len(group),
            "commit",
            state.session.commit,
            head.segment_id,
            records,
            lac,
            committed,
        )

    def _submit(
        self, state: LogState, n_items: int, op: str, fn: Callable[..., Any], *args: Any
    ) -> None:
        state.busy = True

        def timed() -> Any:
            with metrics.etcd_txn.labels(op).time():
                return fn(*args)

        self._background(timed, (), lambda f: self._on_meta_done(state, n_items, f))

    def _background(
        self, fn: Callable[..., Any], args: tuple, then: Callable[[Future], None]
    ) -> None:
        """Run ``fn`` on the pool; ``then(future)`` runs on the loop once it finished."""

        def finished(f: Future) -> None:
            self._results.append(lambda: then(f))
            self.out.wake()

        self._pool.submit(fn, *args).add_done_callback(finished)

    def tick(self) -> None:
        """Called by the loop: send blocks done lingering, retry metadata steps whose
        back-off has passed."""
        self.dispatch_waiting()
        now = time.monotonic()
        for state in self.logs.values():
            if state.retry_at is not None and now >= state.retry_at:
                state.retry_at = None
                self._pump(state)
            if state.degraded:
                self._look_for_spares(state, now)

    def run_results(self) -> None:
        """Apply finished metadata steps (called by the loop after a wake-up)."""
        while self._results:
            self._results.popleft()()

    def _on_meta_done(self, state: LogState, n_items: int, future: Future) -> None:
        state.busy = False
        if state.fenced_by is not None:
            return
        error = future.exception()
        if error is None:
            self._applied(state, [state.timeline.popleft() for _ in range(n_items)])
        elif isinstance(error, WriterFencedError):
            self._fence(state, error)
            return
        else:
            self._step_failed(state, error)
        self._pump(state)

    def _applied(self, state: LogState, items: list[Block | MetaOp]) -> None:
        """The step at the head of the timeline is in etcd: ack a commit's batches."""
        head = items[0]
        if isinstance(head, MetaOp):
            if head.kind is MetaKind.SEAL:
                state.committed_size.pop(head.segment_id, None)
                if state.quorum:
                    self._quorum_sealed(state, head.segment_id)
            elif state.quorum:
                self._quorum_opened(state, head.segment_id)
            return
        blocks = [b for b in items if isinstance(b, Block)]
        state.committed_size[head.segment_id] = state.committed_size.get(head.segment_id, 0) + sum(
            b.size for b in blocks
        )
        now = time.monotonic()
        for block in blocks:
            for b in block.batches:
                self.out.ack(b.producer, b.seq, block.segment_id, b.first_entry)
                metrics.ack_latency.observe(now - b.arrived)
            metrics.appends.inc(block.entries)
            metrics.append_bytes.inc(block.size)
            self._release_batches(block.batches)

    def _step_failed(self, state: LogState, error: BaseException) -> None:
        """A metadata step failed past its retries (a fence excepted)."""
        head = state.timeline[0]
        message = f"log {state.name}: metadata step failed: {error}"
        log.warning("%s", message)
        cause = (
            type(error)(message) if isinstance(error, WoodpeckerError) else WoodpeckerError(message)
        )
        if isinstance(head, Block):
            # the commit was sent: its blocks may be in etcd; the later ones are not
            self._fail_segment(state, head.segment_id, not_written(cause), outcome_unknown(cause))
        elif head.kind is MetaKind.CREATE:
            state.timeline.popleft()  # the segment was never created
            # a quorum segment without enough nodes: its batches may have been sent in an
            # earlier segment (moved from it), so their error stays QuorumUnavailableError
            failure = cause if isinstance(cause, QuorumUnavailableError) else not_written(cause)
            self._fail_segment(state, head.segment_id, failure)
        elif isinstance(error, MetadataUnavailableError):
            # readers stop at an ACTIVE segment: nothing after it may be committed
            # (and acked) before it is sealed, so the seal stays first and is retried
            state.retry_at = time.monotonic() + SEAL_RETRY_INTERVAL
        else:
            state.timeline.popleft()  # not ours to seal, or gone: nothing to do

    # ---- quorum segments (docs/quorum.md) ---------------------------------------------

    def _pump_quorum(self, state: LogState) -> None:
        """Drop the acked blocks at the head; start a create or seal that reached it."""
        while (
            state.timeline
            and isinstance(state.timeline[0], Block)
            and state.timeline[0].state is BlockState.UPLOADED
        ):
            state.timeline.popleft()
        if state.timeline and isinstance(head := state.timeline[0], MetaOp):
            if head.kind is MetaKind.CREATE:
                self._submit(
                    state, 1, "create", self._create_quorum_segment, state, head.segment_id
                )
            else:
                self._submit(state, 1, "seal", self._seal_quorum_segment, state, head.segment_id)

    def _create_quorum_segment(self, state: LogState, segment_id: int) -> SegmentRecord:
        """On the pool: choose the ensemble, create the segment with it (CAS), connect.

        With fewer than ``quorum.ack`` healthy nodes it retries until ``retry.deadline``,
        then QuorumUnavailableError fails the segment's batches."""
        policy, deadline = self.config.quorum, time.monotonic() + self.config.retry.deadline
        while True:
            now = time.monotonic()
            suspected = {k for k, until in list(self._suspects.items()) if until > now}
            try:
                nodes = registered_nodes(self.meta)
                ranked = choose_ensemble(nodes, len(nodes), policy.ack, suspected)
                # only nodes that answer now: a dead node's registration outlives it
                answer = {
                    m.node_id
                    for m in self.quorum_writer.reachable(
                        [EnsembleMember(n.node_id, n.address, n.incarnation) for n in ranked]
                    )
                }
                chosen = [n for n in ranked if n.node_id in answer][: policy.replicas]
                if len(chosen) < policy.ack:
                    raise QuorumUnavailableError(
                        f"{len(chosen)} of {len(ranked)} serving quorum node(s) answer, "
                        f"{policy.ack} needed (quorum.ack)"
                    )
                break
            except QuorumUnavailableError:
                if now >= deadline or state.fenced_by is not None:
                    raise
                time.sleep(min(0.2, policy.node_timeout))
        record = state.session.create_segment(
            segment_id,
            [EnsembleMember(n.node_id, n.address, n.incarnation) for n in chosen],
            policy.ack,
        )
        runs = {n.node_id: node_key(n) for n in chosen}
        self.quorum_writer.open_segment(
            record,
            state.session.epoch,
            lambda node_id, stuck: self._from_quorum_thread(
                functools.partial(self._node_left, state, segment_id, runs.get(node_id), stuck)
            ),
        )
        return record

    def _seal_quorum_segment(self, state: LogState, segment_id: int) -> SegmentRecord:
        """On the pool: seal at the last entry acked to a producer; every batch of the
        segment is acked, failed or moved to a later segment by now."""
        return state.session.seal_segment(
            segment_id, last_entry=state.acked_end.get(segment_id, -1)
        )

    def _quorum_opened(self, state: LogState, segment_id: int) -> None:
        state.open_segments.add(segment_id)
        for item in state.timeline:
            if (
                isinstance(item, Block)
                and item.segment_id == segment_id
                and item.state is BlockState.WAITING
            ):
                self._replicate(state, item)

    def _quorum_sealed(self, state: LogState, segment_id: int) -> None:
        state.open_segments.discard(segment_id)
        state.degraded.pop(segment_id, None)
        lac = state.acked_end.pop(segment_id, -1)
        self.quorum_writer.finish(state.log_id, segment_id, sealed=True, lac=lac)

    def _replicate(self, state: LogState, block: Block) -> None:
        """Send the block's batches to the ensemble (a copy: the arena is reused once a
        batch is acked, and a slow node may still be sent it after that)."""
        block.state = BlockState.COMMITTING
        for batch in block.batches:
            self.quorum_writer.append(
                state.log_id,
                block.segment_id,
                batch.first_entry,
                self.out.read_batch(batch.producer, batch.offset, batch.length),
                batch.count,
                self.config.retry.deadline,
                lambda error, fenced: self._from_quorum_thread(
                    functools.partial(self._replicated, state, block, error, fenced)
                ),
            )

    def _from_quorum_thread(self, then: Callable[[], None]) -> None:
        self._results.append(then)
        self.out.wake()

    def _replicated(
        self, state: LogState, block: Block, error: BaseException | None, fenced: bool
    ) -> None:
        """The outcome of the block's next batch, in entry order."""
        entry = self.jobs.get(block.job)
        if entry is None or entry[1] is not block:
            return  # the block was failed already
        if error is None:
            batch = block.batches[block.acked]
            block.acked += 1
            self.out.ack(batch.producer, batch.seq, block.segment_id, batch.first_entry)
            state.acked_end[block.segment_id] = batch.first_entry + batch.count - 1
            metrics.ack_latency.observe(time.monotonic() - batch.arrived)
            metrics.appends.inc(batch.count)
            metrics.append_bytes.inc(batch.length)
            self._release_batches([batch])
            if block.acked == len(block.batches):
                block.state = BlockState.UPLOADED
                del self.jobs[block.job]
                self._pump(state)
            return
        cause = (
            outcome_unknown(error)
            if isinstance(error, WoodpeckerError)
            else OutcomeUnknownError(f"log {state.name}: replicating failed: {error!r}")
        )
        log.warning("log %s segment %d: %s", state.name, block.segment_id, cause)
        if fenced:
            self._fence(state, WriterFencedError(f"log {state.name}: {cause}"))
            return
        self._fail_segment(state, block.segment_id, not_written(cause), sent=cause)
        self._pump(state)

    def _node_left(
        self, state: LogState, segment_id: int, run: NodeKey | None, stuck: bool
    ) -> None:
        """A node left the segment's live set: it is suspected for a while, and the segment
        rolls to a full ensemble as soon as a spare is registered; at once if fewer than
        ``ack`` of its nodes are left (``stuck``), its unacked batches moving along."""
        now = time.monotonic()
        if run is not None:
            self._suspects[run] = now + SUSPECT_FOR
        state.degraded[segment_id] = now  # looked at only while it is the current segment
        if stuck:
            self._move_pending(state, segment_id)

    def _move_pending(self, state: LogState, segment_id: int) -> None:
        """The segment can ack nothing more: seal it at what was acked and send every
        batch not acked yet, of it and of the later segments (in order, so each producer's
        order holds), again in a new segment under new ids. The sealed segment's copies of
        them are never read (readers stop at its last entry); late acks of them from its
        nodes are ignored (their blocks are gone from ``jobs``)."""
        if state.fenced_by is not None or segment_id not in state.open_segments:
            return
        moved: list[Batch] = []
        kept: deque[Block | MetaOp] = deque()
        for item in state.timeline:
            if (
                isinstance(item, Block)
                and item.segment_id >= segment_id
                and item.state is not BlockState.UPLOADED
            ):
                self.jobs.pop(item.job, None)
                moved += item.batches[item.acked :]
            else:
                kept.append(item)
        state.timeline = kept
        state.open_segments.discard(segment_id)
        self._roll(state)
        log.warning(
            "log %s segment %d: fewer than quorum.ack nodes left; %d batches move to a new segment",
            state.name,
            segment_id,
            len(moved),
        )
        self._release_batches(moved)  # _take counts them again
        for batch in moved:
            self._take(state.log_id, batch)
        self._pump(state)

    def _look_for_spares(self, state: LogState, now: float) -> None:
        """Roll a degraded current segment once a full healthy ensemble can be chosen."""
        current = state.segment.segment_id if state.segment is not None else None
        for segment_id, when in list(state.degraded.items()):
            if segment_id != current:
                del state.degraded[segment_id]
            elif now >= when:
                state.degraded[segment_id] = now + ROLL_CHECK_INTERVAL
                excluded = {k for k, until in self._suspects.items() if until > now}
                self._background(
                    self._spare_exists,
                    (excluded,),
                    functools.partial(self._spare_found, state, segment_id),
                )

    def _spare_exists(self, excluded: set[NodeKey]) -> bool:
        return spare_exists(registered_nodes(self.meta), self.config.quorum.replicas, excluded)

    def _spare_found(self, state: LogState, segment_id: int, future: Future) -> None:
        if future.exception() is not None or not future.result():
            return
        if state.segment is not None and state.segment.segment_id == segment_id:
            log.info("log %s: rolling segment %d to a full ensemble", state.name, segment_id)
            self._roll(state)
            self._pump(state)

    # ---- shutdown --------------------------------------------------------------------

    def seal_all(self) -> None:
        """Close every active segment (on shutdown, after the pipeline drained)."""
        for state in self.logs.values():
            if state.fenced_by is None:
                self._roll(state)
                self._pump(state)

    def idle(self) -> bool:
        return not self.opening and all(not s.timeline and not s.busy for s in self.logs.values())

    def fail_all(self, reason: str) -> None:
        """Fail everything still pending (shutdown past its deadline): what was never sent
        to etcd was not written; a commit still in flight has an unknown outcome."""
        error = NotDurableError(f"{reason} before this append was durable")
        in_doubt = CommitOutcomeUnknownError(f"{reason} while this append's commit was in flight")
        for opening in self.opening.values():
            self._fail_batches(opening.held, error)
            opening.held = []
        for state in self.logs.values():
            self._fail_pending(state, error, sent=in_doubt)
            state.timeline.clear()

    def close(self) -> None:
        """Release the sessions; one still being opened is released by ``MetaStore.close``."""
        self._pool.shutdown(wait=True)
        if self._quorum is not None:
            self._quorum.close()
        for state in self.logs.values():
            state.session.release()


def _log_release_failure(future: Future) -> None:
    # release is best effort (an unrevoked lease expires by itself); say if it raised
    if future.exception() is not None:
        log.warning("releasing a fenced session failed: %s", future.exception())
