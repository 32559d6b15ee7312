"""``LogWriter``: appends to one log through this host's logstore.

Every writer of a log in the processes attached to one logstore shares that
logstore's writer session; the logstore orders their batches and each writer's
own appends keep their order. An append is acknowledged only once its block is
durable in storage and committed in etcd under the session's fence.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from woodpecker.errors import (
    ClientClosedError,
    EntryTooLargeError,
    ForkedClientError,
    WriterClosedError,
)
from woodpecker.message import LogMessageId
from woodpecker.producer import AppendFuture, ProducerLink

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12


class LogWriter:
    """Appends entries; use as a context manager, or call ``close()``."""

    def __init__(self, link: ProducerLink, name: str, log_id: int) -> None:
        self._link = link
        self.name = name
        self.log_id = log_id
        link.open_log(name, log_id)
        self._queue = link.register(log_id)
        self._closed = False  # no more appends
        self._close_sent = False
        self._left = False  # the writer session was left: close() is done
        self._max = link.config.writer.max_entry_size

    def _payload(self, payload: Any) -> tuple[Any, int]:
        """Check one payload; returns it as a flat byte buffer with its size.

        Anything with the buffer protocol is taken (bytes, bytearray, memoryview,
        array.array, numpy arrays, ...) as long as its memory is C-contiguous.
        A writable buffer is copied now: the caller may reuse it as soon as the
        call returns, although the append is encoded into shared memory later.
        """
        if type(payload) is not bytes:
            try:
                view = memoryview(payload)
            except TypeError:
                raise TypeError(
                    f"payload must be bytes-like (support the buffer protocol), not "
                    f"{type(payload).__name__}"
                ) from None
            if not view.c_contiguous:
                raise TypeError(
                    f"a {type(payload).__name__} payload must be C-contiguous (copy it first)"
                )
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            payload = view if view.readonly else view.tobytes()
        size = len(payload)
        if size > self._max:
            raise EntryTooLargeError(
                f"entry of {size} bytes exceeds writer.max_entry_size={self._max}"
            )
        return payload, size

    def _check_open(self) -> None:
        if self._closed:
            raise WriterClosedError(f"the writer of log {self.name!r} is closed")
        broken = self._link.broken
        if isinstance(broken, ClientClosedError | ForkedClientError):
            raise type(broken)(str(broken))

    def write_async(self, payload: Buffer) -> AppendFuture[LogMessageId]:
        """Append one entry; the future resolves to its ``LogMessageId`` once durable."""
        if type(payload) is bytes and len(payload) <= self._max:  # the common case, inline
            size = len(payload)
        else:
            payload, size = self._payload(payload)
        if self._closed or self._link.broken is not None:
            self._check_open()
        return self._link.submit(self._queue, [payload], size, False)

    def write(self, payload: Buffer, timeout: float | None = None) -> LogMessageId:
        """Append one entry and wait until it is durable and committed."""
        return self.write_async(payload).result(timeout)

    def write_batch(
        self, payloads: Iterable[Buffer], timeout: float | None = None
    ) -> Sequence[LogMessageId]:
        """Append entries as consecutive ids; returns once all of them are durable.

        The ids come back as a read-only sequence that builds each ``LogMessageId``
        only when it is read (it compares equal to the list of the same ids).

        The batch is one Arrow batch message, uploaded in one block and committed
        by one etcd transaction: its ids are consecutive in one segment (a segment
        roll happens before or after it, never inside), no other append lands
        between them, and either every entry becomes readable or none does. It
        must fit in ``writer.arena_size`` (``EntryTooLargeError`` otherwise).
        """
        future = self.submit_batch(payloads)
        return [] if future is None else future.result(timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything written so far is acknowledged (or failed)."""
        self._check_open()
        self._link.flush(self._queue, timeout)

    def close(self, timeout: float | None = 60.0) -> None:
        """Flush, then leave the log's writer session; idempotent.

        Waits up to ``timeout`` seconds for what was written to be acknowledged
        or failed (``TimeoutError`` otherwise; call ``close`` again to go on
        waiting). Interrupted (``KeyboardInterrupt``), a later ``close`` resumes.
        """
        self._closed = True
        if self._left:
            return
        link = self._link
        if link.alive:
            deadline = None if timeout is None else time.monotonic() + timeout
            link.flush(self._queue, timeout)
            if not self._close_sent and link.alive:
                self._close_sent = True
                left = 60.0 if deadline is None else max(0.0, deadline - time.monotonic())
                link.close_log(self.log_id, timeout=left)
        link.unregister(self._queue)
        self._left = True

    # ---- package seams: woodpecker.aio drives a writer from an event loop with these ----

    def submit_batch(
        self, payloads: Iterable[Buffer]
    ) -> AppendFuture[Sequence[LogMessageId]] | None:
        """Check every payload, then queue them as one batch without waiting (None if empty)."""
        items = list(payloads)
        if set(map(type, items)) <= {bytes}:  # the common case, checked at C speed
            sizes = list(map(len, items))
            if sizes and max(sizes) > self._max:
                self._payload(items[sizes.index(max(sizes))])  # raises EntryTooLargeError
        else:
            checked = [self._payload(p) for p in items]  # all checked before anything is queued
            items = [p for p, _ in checked]
            sizes = [n for _, n in checked]
        self._check_open()
        total_size = sum(sizes)
        if total_size > self._link.arena.size:
            raise EntryTooLargeError(
                f"a write_batch of {total_size} bytes does not fit the shared-memory arena "
                f"(writer.arena_size={self._link.arena.size}); nothing of it was written"
            )
        if not items:
            return None
        # one batch message, hence one block, one commit: consecutive ids, all or nothing
        return self._link.submit(self._queue, items, total_size, many=True)

    def would_block(self, size: int) -> bool:
        """Whether appending ``size`` bytes now would wait for room (backpressure)."""
        return self._link.would_block(self._queue, size)

    def settled(self) -> bool:
        """Nothing written through this writer is unsealed or awaiting its ack."""
        return self._link.settled(self._queue)

    @property
    def append_timeout(self) -> float:
        """How long an append waits for room before ``BackpressureTimeout``."""
        return self._link.config.writer.append_timeout

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
