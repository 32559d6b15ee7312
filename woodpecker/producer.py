"""The producer side of the write pipeline: one link from this process to its logstore.

A ``ProducerLink`` owns a shared-memory arena (a memfd handed to the logstore
once), encodes pending appends as Arrow batch messages straight into it, sends
descriptors, and resolves futures when acks come back. Batching is adaptive
(group commit): a writer's pending appends are sealed into one batch when the
pipeline has room (fewer than ``writer.max_inflight_batches`` in flight), when
they reach ``writer.max_batch_bytes``, or when the oldest has waited
``writer.linger_ms`` — so a lone synchronous writer is never delayed and a busy
one gets large batches.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import functools
import itertools
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from shm import Arena, FrameReader, RingAllocator, send_msg
from woodpecker import errors, forking, wire
from woodpecker.ack_relay import ack_pass, ack_pass_ended, relay_for_running_loop
from woodpecker.config import Config
from woodpecker.deployment import Deployment
from woodpecker.errors import (
    ConfigError,
    ForkedClientError,
    LogstoreUnavailableError,
    WoodpeckerError,
    from_wire,
    outcome_unknown,
    to_wire,
)
from woodpecker.format import batch_message_size, write_batch_message
from woodpecker.message import LogMessageId, LogMessageIds
from woodpecker.private_files import make_private_dirs, private_opener

CONNECT_TIMEOUT = 30.0


_PENDING, _FINISHED = "PENDING", "FINISHED"  # the states concurrent.futures.wait reads

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")


class PendingBatch:
    """Appends of one writer sealed together into one batch message, and their one outcome.

    A writer's appends join its open batch until that would pass
    ``writer.max_batch_bytes``; the batch is sealed (encoded into the arena and
    sent) as one, and the logstore answers for it as one. So the ack thread
    resolves every append of a batch with one store under the link's lock
    (``done``), and each ``AppendFuture`` reads its id(s) from here when asked.
    """

    __slots__ = (
        "done",
        "error",
        "first",
        "link",
        "offset",
        "payloads",
        "queue",
        "segment_id",
        "size",
        "watchers",
    )

    def __init__(self, link: ProducerLink, queue: WriterQueue, payloads: list[Any], size: int):
        self.link = link
        self.queue = queue
        self.payloads: list[Any] | None = payloads  # dropped once encoded into the arena
        self.size = size
        self.offset = -1
        self.done = False
        self.error: WoodpeckerError | None = None
        self.segment_id = self.first = -1
        self.watchers: list[AppendFuture[Any]] | None = None  # futures with callbacks or waiters


class AppendFuture(concurrent.futures.Future[T]):
    """The pending id(s) of an append; the future ``write_async`` returns.

    ``AppendFuture[LogMessageId]`` for one entry (``write_async``),
    ``AppendFuture[LogMessageIds]`` for a batch; it resolves once the entries
    are durable and committed, or with the append's error.

    Which thread resolves it: the link's ack thread (``woodpecker-acks``) for
    every outcome the logstore reports, success or error; a failure found
    elsewhere (the link lost, the Client closed) is set by the thread that finds
    it. Callbacks added with ``add_done_callback`` run on that thread, so they
    must be short and must not wait for other appends.

    Much cheaper than a plain ``concurrent.futures.Future`` (which builds a lock
    and a condition per instance): it holds no outcome of its own, only where
    its entries are in their ``PendingBatch``, whose one outcome all the futures
    of the batch share; the id is built when read. Waiters block on the link's
    one condition, notified after every pass of acks. It is still a
    ``concurrent.futures.Future`` (``wait``, ``as_completed``,
    ``asyncio.wrap_future`` accept it) and it can be awaited in asyncio: the
    acks of a batch reach an event loop in one wakeup (``woodpecker.aio``). An
    append cannot be cancelled once submitted: ``cancel()`` returns False.
    """

    __slots__ = ("_at", "_batch", "_count")
    # set on the few futures that need them (in the instance dict Future's lack of
    # __slots__ gives every instance), read from these class defaults by all the others
    _raised: BaseException | None = None
    _callbacks: list[Callable[[AppendFuture[Any]], None]] | None = None
    _listeners: list[Any] | None = None

    def __init__(self, batch: PendingBatch, at: int, count: int) -> None:  # no lock per future
        self._batch = batch
        self._at = at  # the first entry's position in the batch
        self._count = count  # entries of a write_batch; -1 for one entry (a LogMessageId)

    def done(self) -> bool:
        return self._batch.done

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return not self._batch.done

    @property
    def _state(self) -> str:  # what concurrent.futures.wait reads
        return _FINISHED if self._batch.done else _PENDING

    @property
    def _condition(self) -> threading.Condition:  # what concurrent.futures.wait locks
        return self._batch.link.lock

    @property
    def _waiters(self) -> list[Any]:  # concurrent.futures.wait registers its waiters here
        if self._listeners is None:
            self._watch()
            self._listeners = []
        return self._listeners

    def _watch(self) -> None:
        """Have the batch tell this future when it resolves (lock held)."""
        if self._callbacks is None and self._listeners is None:
            batch = self._batch
            if batch.watchers is None:
                batch.watchers = []
            batch.watchers.append(self)

    def __await__(self) -> Generator[Any, None, T]:
        """``await future`` in a coroutine: the ack thread wakes the loop once per batch."""
        if not self._batch.done:
            yield from relay_for_running_loop().watch(self).__await__()
        return self.result()

    def result(self, timeout: float | None = None) -> T:
        """The LogMessageId (or LogMessageIds); raises the append's error, or TimeoutError."""
        batch = self._batch
        if not batch.done:
            link = batch.link
            deadline = None if timeout is None else time.monotonic() + timeout
            with link.mutex:
                while not batch.done:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"append not acknowledged within {timeout}s")
                    link.lock.wait(left)
        if batch.error is not None:
            raise self._own_error(batch.error)
        entry = batch.first + self._at
        if self._count < 0:
            return LogMessageId(batch.segment_id, entry)  # type: ignore[return-value]
        return LogMessageIds(batch.segment_id, range(entry, entry + self._count))  # type: ignore[return-value]

    def _own_error(self, error: WoodpeckerError) -> BaseException:
        """This append's instance of its batch's error (a caller may add to its traceback)."""
        with self._batch.link.mutex:
            if self._raised is None:
                self._raised = type(error)(str(error))
            return self._raised

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            self.result(timeout)
        except TimeoutError:
            raise
        except BaseException as e:
            return e
        return None

    def add_done_callback(self, fn: Callable[[AppendFuture[T]], None]) -> None:
        """Call ``fn(self)`` when resolved (at once if it already is)."""
        with self._batch.link.mutex:
            if not self._batch.done:
                self._watch()
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)

    def set_result(self, result: Any) -> None:
        raise RuntimeError("an append's outcome is set by its producer link only")

    set_exception = set_result


@dataclass
class WriterQueue:
    """A writer's appends not yet sealed (in batches of at most the cap), and its failure state."""

    log_id: int
    pending: list[PendingBatch] = field(default_factory=list)
    pending_bytes: int = 0
    oldest: float = 0.0
    failed: WoodpeckerError | None = None


def _settle(batch: PendingBatch, error: WoodpeckerError | None) -> list[Callable[[], None]]:
    """Resolve every append of ``batch`` (lock held); returns the callbacks to run."""
    if batch.done:
        return []
    batch.error = error
    batch.done = True
    batch.payloads = None
    calls: list[Callable[[], None]] = []
    for future in batch.watchers or ():
        for waiter in future._listeners or ():
            waiter.add_exception(future) if error else waiter.add_result(future)
        for fn in future._callbacks or ():
            calls.append(functools.partial(_call_back, fn, future))
        future._callbacks = None
    return calls


def _call_back(fn: Callable[[AppendFuture[Any]], None], future: AppendFuture[Any]) -> None:
    try:
        fn(future)
    except Exception:  # as concurrent.futures does: a caller's bug must not stop the acks
        LOGGER.exception("exception calling callback for %r", future)


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def logstore_running(config: Config) -> bool:
    """Is a logstore holding the lock of this deployment's socket? (A killed one releases it.)"""
    path = config.logstore_lock
    if not path.exists():
        return False
    with open(path, "a+", opener=private_opener) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def launch_logstore(config: Config) -> None:
    """Start the embedded logstore in the background (it outlives this process)."""
    make_private_dirs(config.logstore_socket.parent)
    log_file = open(config.logstore_log, "ab", opener=private_opener)  # noqa: SIM115 - handed to the child
    with log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.logstore", "--embedded"],
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    assert proc.stdin is not None
    proc.stdin.write(orjson.dumps(config.overrides()))
    proc.stdin.close()


def connect_logstore(config: Config) -> socket.socket:
    """Attach to this root's logstore, launching it when none is alive."""
    path = str(config.logstore_socket)
    with contextlib.suppress(OSError):
        return _connect(path)
    make_private_dirs(config.logstore_socket.parent)
    launch_lock = config.logstore_socket.with_name(config.logstore_socket.name + ".launch")
    with open(launch_lock, "a+", opener=private_opener) as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one launcher at a time per socket
        try:
            with contextlib.suppress(OSError):
                return _connect(path)
            launched = False
            deadline = time.monotonic() + CONNECT_TIMEOUT
            while True:
                # a logstore killed an instant ago may still hold its lock: look again
                # while waiting, and launch once it is free
                if not launched and not logstore_running(config):
                    launch_logstore(config)
                    launched = True
                try:
                    return _connect(path)
                except OSError as e:
                    if time.monotonic() > deadline:
                        raise LogstoreUnavailableError(
                            f"no logstore answers at {path} after {CONNECT_TIMEOUT:.0f}s ({e}); "
                            f"see {config.logstore_log}"
                        ) from None
                    time.sleep(0.05)
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


class ProducerLink:
    """This process's attachment to the logstore: arena, batching, acks."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.arena = Arena.create(config.writer.arena_size)
        self.alloc = RingAllocator(self.arena.size)
        # ``with self.mutex`` (a C lock), never ``with self.lock``: Condition.__exit__ is
        # Python code, and a KeyboardInterrupt delivered on entering it would leave the
        # lock held for good; ``self.lock`` is only for wait / notify
        self.mutex = threading.RLock()
        self.lock = threading.Condition(self.mutex)
        self.inflight: dict[int, PendingBatch] = {}
        self.queues: list[WriterQueue] = []
        self.replies: dict[int, Future] = {}
        self._seq = itertools.count(1)
        self._req = itertools.count(1)
        self._send_lock = threading.Lock()
        self.broken: WoodpeckerError | None = None
        self._cap = config.writer.max_batch_bytes
        self._max_inflight = config.writer.max_inflight_batches
        self._unsealed_bound = self.arena.size // 2
        try:
            self.sock, welcome = self._attach()
        except BaseException:
            self.arena.close()
            raise
        self.producer_id: int = welcome["producer_id"]
        self._thread = threading.Thread(target=self._receive, name="woodpecker-acks", daemon=True)
        self._thread.start()
        self.forked = False
        forking.track(self)

    def _forked(self, error: ForkedClientError) -> None:
        """In a forked child: refuse use, never touch the socket the parent still reads."""
        self.forked = True
        self.broken = error
        self.mutex = threading.RLock()  # a parent thread may have held the old one
        self.lock = threading.Condition(self.mutex)
        self._send_lock = threading.Lock()
        batches = [*self.inflight.values(), *(b for q in self.queues for b in q.pending)]
        for batch in batches:  # the child runs one thread now: no lock, no callbacks
            batch.error, batch.done, batch.payloads = type(error)(str(error)), True, None
        self.inflight.clear()
        for queue in self.queues:
            queue.pending.clear()
            queue.pending_bytes = 0
        self.replies.clear()

    def _attach(self) -> tuple[socket.socket, dict]:
        """Connect and hand over the arena; retried, since a logstore may be exiting idle.

        Both sides check the handshake: the logstore refuses a producer of another
        protocol version or deployment, and the producer refuses a logstore whose
        WELCOME does not name its own (an older logstore does not check).
        """
        deployment = Deployment.of(self.config)
        hello = wire.hello(os.getpid(), self.arena.size, deployment)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            sock = connect_logstore(self.config)
            self._reader = FrameReader()
            try:
                send_msg(sock, hello, [self.arena.fd])
                sock.settimeout(CONNECT_TIMEOUT)
                while True:
                    for frame, _ in self._reader.feed_from(sock):
                        kind, body = wire.decode(frame)
                        if kind == wire.REFUSED:
                            raise from_wire(body)
                        if kind == wire.WELCOME:
                            self._check_welcome(body, deployment)
                            sock.settimeout(None)
                            return sock, body
            except (OSError, EOFError, ConnectionError) as e:
                sock.close()
                if time.monotonic() > deadline:
                    raise LogstoreUnavailableError(f"logstore handshake failed: {e}") from None
                time.sleep(0.05)
            except BaseException:
                sock.close()
                raise

    def _check_welcome(self, welcome: dict, deployment: Deployment) -> None:
        where = f"the logstore at {self.config.logstore_socket}"
        if welcome.get("protocol", 1) != wire.VERSION:
            raise LogstoreUnavailableError(
                f"{where} (pid {welcome.get('pid', 'unknown')}) speaks protocol "
                f"{welcome.get('protocol', 1)}, this client speaks {wire.VERSION}: run the "
                "same Woodpecker version on both sides (stop the logstore to upgrade it)"
            )
        if welcome.get("deployment") != deployment.fingerprint:
            raise ConfigError(
                f"{where} serves {welcome.get('serves')}, but this client is configured for "
                f"{deployment}: set logstore.socket to the logstore of this client's "
                "deployment, or leave it empty to use the embedded one"
            )

    @property
    def alive(self) -> bool:
        return self.broken is None

    # ---- control requests ------------------------------------------------------------

    def open_log(self, name: str, log_id: int) -> None:
        """Ask the logstore to open ``log_id`` for writing (its writer session: the epoch fence)."""
        self._request(wire.OPEN_LOG, {"name": name, "log_id": log_id})

    def close_log(self, log_id: int, timeout: float = 60.0) -> None:
        """Tell the logstore this process stops writing ``log_id``; returns once it has let go."""
        self._request(wire.CLOSE_LOG, {"log_id": log_id}, timeout)

    def _request(self, kind: int, body: dict[str, Any], timeout: float = 60.0) -> None:
        """A control round trip; raises the logstore's typed error."""
        req = next(self._req)
        future: Future = Future()
        with self.mutex:
            self._check()
            self.replies[req] = future
        self._send(wire.encode(kind, {**body, "req": req}))
        reply = future.result(timeout)
        if not reply["ok"]:
            raise from_wire(reply)

    def _send(self, frame: bytes) -> None:
        try:
            with self._send_lock:
                send_msg(self.sock, frame)
        except OSError as e:
            self._break(LogstoreUnavailableError(f"lost the logstore connection: {e}"))
            raise self.broken from None  # type: ignore[misc]

    def _check(self) -> None:
        if self.broken is not None:
            raise type(self.broken)(str(self.broken))

    # ---- appends ---------------------------------------------------------------------

    def register(self, log_id: int) -> WriterQueue:
        queue = WriterQueue(log_id)
        with self.mutex:
            self.queues.append(queue)
        return queue

    def unregister(self, queue: WriterQueue) -> None:
        with self.mutex:
            if queue in self.queues:
                self.queues.remove(queue)

    def submit(
        self, queue: WriterQueue, payloads: list[Any], size: int, many: bool
    ) -> AppendFuture[Any]:
        """Queue an append in the writer's open batch; seal a batch now if the pipeline has
        room or the cap is reached."""
        with self.mutex:
            if queue.pending_bytes and queue.pending_bytes + size > self._unsealed_bound:
                self._wait_for_room(queue, size)  # as would_block, inline: once per append
            if self.broken is not None or queue.failed is not None:
                self._check_queue(queue)
            pending = queue.pending
            batch = pending[-1] if pending else None
            if batch is None or batch.size + size > self._cap:
                if batch is None:
                    queue.oldest = time.monotonic()
                    queue.pending_bytes = 0  # repairs a count an interrupt left behind
                at = 0
                batch = PendingBatch(self, queue, payloads[:], size)
                pending.append(batch)
            else:
                # an interrupt between these statements only skews the batching policy
                at = len(batch.payloads)  # type: ignore[arg-type]
                batch.payloads += payloads  # type: ignore[operator]
                batch.size += size
            queue.pending_bytes += size
            if len(self.inflight) < self._max_inflight or queue.pending_bytes >= self._cap:
                self._seal(queue)
        return AppendFuture(batch, at, len(payloads) if many else -1)

    def _wait_for_room(self, queue: WriterQueue, size: int) -> None:
        """Backpressure (lock held): wait until ``size`` more unsealed bytes fit."""
        timeout = self.config.writer.append_timeout
        deadline = time.monotonic() + timeout
        while self.would_block(queue, size):
            self._check_queue(queue)
            self._seal_ready()
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.BackpressureTimeout(
                    f"the shared-memory arena stayed full for {timeout}s "
                    f"(writer.arena_size={self.arena.size}); the backend is slower than "
                    "the producers"
                )
            self.lock.wait(min(left, 0.05))

    def _check_queue(self, queue: WriterQueue) -> None:
        self._check()
        if queue.failed is not None:
            raise type(queue.failed)(str(queue.failed))

    def _seal(self, queue: WriterQueue) -> bool:
        """Encode the oldest pending batch into the arena and send its descriptor (lock held).

        Interrupt-safe (``KeyboardInterrupt`` may land between any two statements
        of the main thread): until the batch moves from ``pending`` to
        ``inflight``, an exception undoes the arena allocation and leaves it
        pending; the move is one statement; an exception while the frame is
        being sent breaks the link, since whether the logstore got it is unknown,
        and every append of the link then fails with a clear error.
        """
        if not queue.pending:
            return False
        batch = queue.pending[0]
        payloads = batch.payloads
        assert payloads is not None  # a pending batch is not encoded yet
        size = batch_message_size(payloads)
        if size > self.arena.size:
            del queue.pending[0]
            queue.pending_bytes -= batch.size
            self._fail(
                batch,
                errors.EntryTooLargeError(
                    f"a batch of {size} bytes does not fit the arena (writer.arena_size="
                    f"{self.arena.size})"
                ),
            )
            return True
        allocations = self.alloc.allocations
        try:
            offset = self.alloc.alloc(size)
            if offset is None:
                return False  # retried when an ack frees space
            view = self.arena.writable_view(offset, size)
            try:
                written = write_batch_message(payloads, view)
            finally:
                view.release()
            seq = next(self._seq)
            batch.offset = offset
            frame = wire.BATCH_FMT.pack(
                wire.BATCH, queue.log_id, seq, offset, written, len(payloads)
            )
        except BaseException:
            self.alloc.undo(allocations)
            raise
        queue.oldest = time.monotonic()
        try:
            # the move: one statement, with no call between its stores
            queue.pending[:1], queue.pending_bytes, self.inflight[seq] = (
                [],
                queue.pending_bytes - batch.size,
                batch,
            )
            batch.payloads = None  # in the arena now: the futures need not keep them alive
            with self._send_lock:
                send_msg(self.sock, frame)
        except OSError as e:
            self._break_locked(LogstoreUnavailableError(f"lost the logstore connection: {e}"))
        except BaseException:
            if seq not in self.inflight:  # not moved yet: the batch stays pending
                self.alloc.undo(allocations)
            else:
                self._break_locked(
                    LogstoreUnavailableError(
                        "interrupted while sending a batch to the logstore: its appends may "
                        "or may not be durable; reopen the writer"
                    )
                )
            raise
        return True

    def _seal_ready(self) -> None:
        """Seal what the policy allows now (lock held): room in the pipeline, cap, linger."""
        linger = self.config.writer.linger_ms / 1000.0
        cap = self._cap
        now = time.monotonic()
        for queue in self.queues:
            while queue.pending and (
                len(self.inflight) < self._max_inflight
                or queue.pending_bytes >= cap
                or now - queue.oldest >= linger
            ):
                if not self._seal(queue):
                    return

    def flush(self, queue: WriterQueue, timeout: float | None) -> None:
        """Seal everything pending and wait until all of it is resolved."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.mutex:
            while queue.pending or self._inflight_of(queue):
                if self.broken is not None or queue.failed is not None:
                    return
                while queue.pending and self._seal(queue):
                    pass
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(
                        f"flush: {len(queue.pending)} appends not sent and "
                        f"{self._inflight_of(queue)} batches not acknowledged in {timeout}s"
                    )
                self.lock.wait(0.05 if left is None else min(left, 0.05))

    def would_block(self, queue: WriterQueue, size: int) -> bool:
        """Whether ``size`` more bytes of ``queue`` would wait for room (backpressure):
        unsealed bytes are bounded by half the arena, as sealed ones are by the arena."""
        return bool(queue.pending_bytes) and queue.pending_bytes + size > self._unsealed_bound

    def settled(self, queue: WriterQueue) -> bool:
        """Nothing of ``queue`` is unsealed or awaiting its ack."""
        with self.mutex:  # held briefly by the ack thread only
            return not queue.pending and not self._inflight_of(queue)

    def _inflight_of(self, queue: WriterQueue) -> int:
        """Batches of ``queue`` sent and not yet answered (lock held)."""
        return sum(1 for b in self.inflight.values() if b.queue is queue)

    # ---- acks ------------------------------------------------------------------------

    def _receive(self) -> None:
        linger = max(self.config.writer.linger_ms / 1000.0, 0.001)
        while True:
            try:
                # select, not a socket timeout: writers send on this socket concurrently
                readable, _, _ = select.select([self.sock], [], [], linger)
                frames = self._reader.feed_from(self.sock) if readable else []
            except (EOFError, ConnectionError, OSError) as e:
                self._break(
                    LogstoreUnavailableError(
                        f"the logstore went away ({e or 'connection closed'}); appends not yet "
                        "acknowledged may not be durable: reopen the writer and check"
                    )
                )
                return
            done: list[Callable[[], None]] = []
            # one lock round trip per pass: every batch acked in it is resolved inside
            with self.mutex:
                for frame, _ in frames:
                    self._on_frame(frame, done)
                self._seal_ready()
                if frames:
                    self.lock.notify_all()
            with ack_pass():
                for call in done:
                    call()
            if done:
                ack_pass_ended()

    def _on_frame(self, frame: bytes, done: list[Callable[[], None]]) -> None:
        kind = frame[0]
        if kind == wire.ACK:
            _, seq, segment_id, first = wire.ACK_FMT.unpack(frame)
            batch = self._inflight_batch(seq)
            if batch is None:
                return
            self.alloc.free(batch.offset)
            batch.segment_id, batch.first = segment_id, first
            done += _settle(batch, None)  # callbacks run after the lock is released
        elif kind == wire.NACK:
            seq, error = wire.decode_nack(frame)
            batch = self._inflight_batch(seq)
            if batch is None:
                return
            self.alloc.free(batch.offset)
            if isinstance(error, errors.WriterFencedError):
                batch.queue.failed = error
                self._fail_queue(batch.queue, error)
            self._fail(batch, error)
        elif kind == wire.REPLY:
            _, body = wire.decode(frame)
            future = self.replies.pop(body["req"], None)
            if future is not None:
                done.append(lambda: future.set_result(body))

    def _inflight_batch(self, seq: int) -> PendingBatch | None:
        """The batch an ack or nack is for; a reply for an unknown batch breaks the link
        (with a clear error for every waiter) instead of killing the ack thread."""
        batch = self.inflight.pop(seq, None)
        if batch is None:
            self._break_locked(
                LogstoreUnavailableError(
                    f"the logstore answered for batch {seq}, which this process never sent "
                    "(was the connection used from a forked process?); reopen the writer"
                )
            )
        return batch

    def _fail_queue(self, queue: WriterQueue, error: WoodpeckerError) -> None:
        for batch in queue.pending:
            self._fail(batch, error)
        queue.pending.clear()
        queue.pending_bytes = 0

    @staticmethod
    def _fail(batch: PendingBatch, error: WoodpeckerError) -> None:
        """Fail every append of ``batch`` (lock held); its callbacks run now."""
        for call in _settle(batch, error):
            call()

    def _break(self, error: WoodpeckerError) -> None:
        with self.mutex:
            self._break_locked(error)
            self.lock.notify_all()

    def _break_locked(self, error: WoodpeckerError) -> None:
        if self.broken is not None:
            return
        self.broken = error
        sent = outcome_unknown(error)  # the logstore may still commit what it was sent
        for batch in self.inflight.values():
            self._fail(batch, sent)
        self.inflight.clear()
        for queue in self.queues:
            self._fail_queue(queue, error)
        for future in self.replies.values():
            future.set_result({"ok": False, **to_wire(error)})
        self.replies.clear()

    def close(self) -> None:
        """Detach from the logstore; the arena is freed once nobody maps it.

        Appends not sent yet fail with ``ClientClosedError``; those sent and not
        acknowledged yet with an ``OutcomeUnknownError``: the logstore may still
        commit them. In a forked child nothing is done: the socket and arena are
        still the parent's.
        """
        if self.forked:
            return
        self._break(
            errors.ClientClosedError(
                "the Client was closed (appends not acknowledged by then may or may not be "
                "durable); create a new Client"
            )
        )
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self.sock.close()
        self.arena.close()
