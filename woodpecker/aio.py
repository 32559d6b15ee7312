"""The asyncio API: ``AsyncClient``, ``AsyncLogHandle``, ``AsyncLogWriter``, ``AsyncLogReader``.

The same semantics as the synchronous API (ack means durable, ids in order,
the same errors), over the same producer link, without a thread per call:

- an append is submitted from the event loop straight into the shared-memory
  batch, as ``LogWriter.write_async`` does; its acknowledgement arrives on the
  link's one ack thread, and an ``AckRelay`` per event loop carries every ack
  resolved in one pass of that thread to the loop in ONE
  ``loop.call_soon_threadsafe`` (one wakeup per batch, not per append);
- backpressure is awaited, never blocked on: ``write`` and ``write_batch``
  await acks while the writer's unsealed appends fill half the arena;
- each reader has one thread of its own for its blocking reads (fetches and
  waiting for commits), reused by every call; control calls (open a log or a
  writer, metadata) go to the loop's default executor.

Cancellation never loses or duplicates an append: cancelling ``await
w.write(x)`` stops the wait, not the append. Once ``write``/``write_async``/
``write_batch`` was called the entries are submitted and become durable (or
fail) exactly as if awaited; they are not retried, and ``flush()`` and closing
the writer still wait for them. A call cancelled while it waited for arena
space (backpressure) submitted nothing. A cancelled read consumes nothing: the
entries that read was fetching are returned by the next read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import pyarrow as pa

from woodpecker.ack_relay import relay_for_running_loop
from woodpecker.client import Client
from woodpecker.config import Config
from woodpecker.errors import BackpressureTimeout, ReaderClosedError
from woodpecker.log import LogHandle
from woodpecker.message import EARLIEST, LogMessage, LogMessageId, Position
from woodpecker.meta import SegmentRecord
from woodpecker.producer import AppendFuture
from woodpecker.reader import LogReader
from woodpecker.writer import LogWriter

T = TypeVar("T")
Opened = TypeVar("Opened", "AsyncLogWriter", "AsyncLogReader")

READ_CHUNK = 1000  # entries a reader fetches per trip to its thread when iterating


class Opening(Generic[Opened]):
    """What ``open_writer``/``open_reader`` return: ``await`` it or ``async with`` it."""

    def __init__(self, open_: Callable[[], Coroutine[Any, Any, Opened]]) -> None:
        self._open = open_
        self._opened: Opened | None = None

    def __await__(self) -> Generator[Any, None, Opened]:
        return self._open().__await__()

    async def __aenter__(self) -> Opened:
        self._opened = await self._open()
        return self._opened

    async def __aexit__(self, *exc: object) -> None:
        if self._opened is not None:
            await self._opened.close()


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    """A blocking control call (etcd, a logstore round trip) on the default executor."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class AsyncClient:
    """``Client`` for asyncio: ``async with AsyncClient() as client: ...``."""

    def __init__(self, config: Config | None = None, **overrides: Any) -> None:
        self._client = Client(config, **overrides)
        self.config = self._client.config

    async def create_log(self, name: str) -> AsyncLogHandle:
        return AsyncLogHandle(await _off_loop(self._client.create_log, name))

    async def open_log(self, name: str, *, create: bool = False) -> AsyncLogHandle:
        handle = await _off_loop(lambda: self._client.open_log(name, create=create))
        return AsyncLogHandle(handle)

    async def list_logs(self, prefix: str = "") -> list[str]:
        return await _off_loop(self._client.list_logs, prefix)

    async def delete_log(self, name: str) -> None:
        await _off_loop(self._client.delete_log, name)

    async def close(self) -> None:
        await _off_loop(self._client.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncLogHandle:
    """One log; opens its async writers and readers."""

    def __init__(self, handle: LogHandle) -> None:
        self._handle = handle
        self.name = handle.name
        self.log_id = handle.log_id

    def open_writer(self) -> Opening[AsyncLogWriter]:
        """``async with log.open_writer() as w`` (or ``w = await log.open_writer()``)."""

        async def open_() -> AsyncLogWriter:
            return AsyncLogWriter(await _off_loop(self._handle.open_writer))

        return Opening(open_)

    def open_reader(
        self, start: Position = EARLIEST, name: str | None = None
    ) -> Opening[AsyncLogReader]:
        """``async with log.open_reader(wp.EARLIEST) as r`` (or ``await``); see ``LogHandle``."""

        async def open_() -> AsyncLogReader:
            return AsyncLogReader(await _off_loop(self._handle.open_reader, start, name))

        return Opening(open_)

    async def read_table(
        self, start: Position = EARLIEST, end: LogMessageId | None = None
    ) -> pa.Table:
        return await _off_loop(self._handle.read_table, start, end)

    async def segments(self) -> list[SegmentRecord]:
        return await _off_loop(self._handle.segments)

    async def truncate(self, mid: LogMessageId) -> LogMessageId:
        return await _off_loop(self._handle.truncate, mid)

    async def truncation_point(self) -> LogMessageId | None:
        return await _off_loop(self._handle.truncation_point)

    def __repr__(self) -> str:
        return f"AsyncLogHandle(name={self.name!r}, log_id={self.log_id})"


class AsyncLogWriter:
    """Appends from a coroutine; ack means durable, exactly as ``LogWriter``.

    ``write_async`` returns the same ``AppendFuture`` as the synchronous API:
    submitting costs what it costs there, and the loop pays for an asyncio
    future only for the appends it awaits.
    """

    def __init__(self, writer: LogWriter) -> None:
        self._writer = writer
        self._relay = relay_for_running_loop()
        self._timeout = writer.append_timeout
        self._last: AppendFuture[LogMessageId] | None = None  # acks of one writer resolve in order
        self.name = writer.name
        self.log_id = writer.log_id

    def write_async(self, payload: bytes | bytearray | memoryview) -> AppendFuture[LogMessageId]:
        """Submit one entry now; ``await`` the returned future for its ``LogMessageId``.

        It never waits, except as ``LogWriter.write_async`` does when this
        writer's unsealed appends fill half the arena (backpressure, up to
        ``writer.append_timeout``); ``write`` and ``write_batch`` await room
        first, so a coroutine using them, or awaiting a future now and then,
        never blocks its loop.
        """
        self._last = future = self._writer.write_async(payload)
        return future

    async def write(self, payload: bytes | bytearray | memoryview) -> LogMessageId:
        """Append one entry; returns its id once it is durable and committed."""
        await self._room(payload.nbytes if isinstance(payload, memoryview) else len(payload))
        return await self.write_async(payload)

    async def write_batch(
        self, payloads: Iterable[bytes | bytearray | memoryview]
    ) -> Sequence[LogMessageId]:
        """Append entries as consecutive ids; returns once all of them are durable."""
        items = list(payloads)
        await self._room(sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in items))
        future = self._writer.submit_batch(items)
        if future is None:
            return []
        self._last = future
        return await future

    def _signal(self, append: AppendFuture) -> asyncio.Future[Any]:
        """A future to wait on for ``append`` whose outcome is not ours to report: the
        append's own future carries its error, so this one's is marked as seen."""
        future = self._relay.watch(append)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return future

    async def _room(self, size: int) -> None:
        """Await acks (never block the loop) while ``size`` more unsealed bytes would pass
        half the arena: the bound at which ``LogWriter.write_async`` blocks."""
        deadline = time.monotonic() + self._timeout
        while self._last and self._writer.would_block(size):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackpressureTimeout(
                    f"the shared-memory arena stayed full for {self._timeout}s "
                    "(writer.append_timeout); the backend is slower than the producers"
                )
            await asyncio.wait([self._signal(self._last)], timeout=min(left, 0.05))

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything written so far is acknowledged (or failed)."""
        last = self._last
        if last is not None and not last.done():
            _, pending = await asyncio.wait([self._signal(last)], timeout=timeout)
            if pending:
                raise TimeoutError(
                    f"flush: appends of {self.name!r} not acknowledged in {timeout}s"
                )
        if not self._writer.settled():  # a failure resolved out of order: wait off the loop
            await _off_loop(self._writer.flush, timeout)

    async def close(self) -> None:
        """Flush, then leave the log's writer session; idempotent."""
        await self.flush()
        await _off_loop(self._writer.close)

    async def __aenter__(self) -> AsyncLogWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncLogReader:
    """Reads committed entries in order from a coroutine; ``async for msg in reader``.

    Its blocking work (fetching blocks, waiting for commits) runs on one thread
    of its own. A read that is cancelled or times out leaves its fetch running:
    the next read takes its entries, so nothing is skipped.
    """

    def __init__(self, reader: LogReader) -> None:
        self._reader = reader
        self._thread = ThreadPoolExecutor(1, f"woodpecker-reader-{reader.name}")
        self._fetch: asyncio.Future[pa.RecordBatch | None] | None = None
        self._buffer: pa.RecordBatch | None = None
        self._row = 0
        self._closed = False
        self.name = reader.name

    @property
    def position(self) -> LogMessageId:
        """The id of the next entry this reader returns."""
        if self._buffer is not None and self._row < self._buffer.num_rows:
            seg, entry = self._buffer.column(0), self._buffer.column(1)
            return LogMessageId(seg[self._row].as_py(), entry[self._row].as_py())
        return self._reader.position

    async def _fill(self, max_entries: int, timeout: float | None) -> bool:
        """Make sure entries are buffered; False if none came within ``timeout``."""
        if self._buffer is not None and self._row < self._buffer.num_rows:
            return True
        if self._closed:
            raise ReaderClosedError(f"the reader of log {self.name!r} is closed")
        if self._fetch is None:
            loop = asyncio.get_running_loop()
            self._fetch = loop.run_in_executor(
                self._thread, self._reader.read_batch, max_entries, None
            )
        done, _ = await asyncio.wait([self._fetch], timeout=timeout)
        if not done:
            return False
        fetch, self._fetch = self._fetch, None
        self._buffer, self._row = fetch.result(), 0
        return self._buffer is not None

    async def read_next(self, timeout: float | None = None) -> LogMessage | None:
        """The next entry, or None if none is committed within ``timeout`` seconds."""
        if not await self._fill(READ_CHUNK, timeout):
            return None
        assert self._buffer is not None
        row, self._row = self._row, self._row + 1
        b = self._buffer
        return LogMessage(
            LogMessageId(b.column(0)[row].as_py(), b.column(1)[row].as_py()),
            b.column(2)[row].as_py(),
        )

    async def read_batch(
        self, max_entries: int = 1000, timeout: float | None = None
    ) -> pa.RecordBatch | None:
        """Up to ``max_entries`` consecutive entries (``READ_SCHEMA`` columns), or None."""
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, not {max_entries!r}")
        if not await self._fill(max_entries, timeout):
            return None
        assert self._buffer is not None
        batch = self._buffer.slice(self._row, max_entries)
        self._row += batch.num_rows
        return batch

    def __aiter__(self) -> AsyncIterator[LogMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[LogMessage]:
        """Every entry from the position on, waiting for new ones until ``close()``."""
        while True:
            try:
                batch = await self.read_batch(READ_CHUNK)
            except ReaderClosedError:
                return
            if batch is None:
                continue
            ids = zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)
            for (seg, entry), payload in zip(ids, batch.column(2).to_pylist(), strict=True):
                yield LogMessage(LogMessageId(seg, entry), payload)

    async def close(self) -> None:
        """Stop reading: a waiting read ends, the registration is released (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await _off_loop(self._reader.close)
        self._thread.shutdown(wait=False)
        if self._fetch is not None:
            await asyncio.wait([self._fetch])
            self._fetch.exception()  # ReaderClosedError: nobody waits for it any more

    async def __aenter__(self) -> AsyncLogReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
