"""The asyncio API against the real services: same semantics, batched wakeups, cancellation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import pytest
from chaos.faultproxy import FaultProxy

import woodpecker as wp
from woodpecker import wire
from woodpecker.ack_relay import AckRelay

pytestmark = pytest.mark.asyncio


async def read_all(log: wp.AsyncLogHandle, expected: int) -> list[wp.LogMessage]:
    out: list[wp.LogMessage] = []
    async with log.open_reader(wp.EARLIEST) as r:
        while len(out) < expected:
            msg = await r.read_next(timeout=30)
            assert msg is not None, f"only {len(out)} of {expected} entries"
            out.append(msg)
        assert await r.read_next(timeout=0.5) is None, "more entries than were written"
    return out


async def test_write_and_read_like_the_sync_api(make_config, backend):
    async with wp.AsyncClient(make_config(backend)) as client:
        log = await client.open_log("orders", create=True)
        assert await client.list_logs() == ["orders"]
        async with log.open_writer() as w:
            first = await w.write(b"x")
            fut = w.write_async(b"y")
            mids = await w.write_batch([b"a", b"", b"c" * 100_000])
            seg = first.segment_id
            assert first == wp.LogMessageId(seg, 0)
            assert await fut == wp.LogMessageId(seg, 1)
            assert mids == [wp.LogMessageId(seg, e) for e in (2, 3, 4)]
            with pytest.raises(TypeError):
                w.write_async("not bytes")  # type: ignore[arg-type]
        async with log.open_reader(wp.EARLIEST) as r:
            msg = await r.read_next(timeout=10)
            assert msg == wp.LogMessage(first, b"x")
            rest: list[bytes] = []
            while len(rest) < 4:  # a batch holds what is fetched: one block or more
                batch = await r.read_batch(1000, timeout=10)
                assert batch is not None
                rest += batch.column("payload").to_pylist()
            assert rest == [b"y", b"a", b"", b"c" * 100_000]
            assert await r.read_batch(10, timeout=0.2) is None
        async with log.open_reader(wp.EARLIEST) as r:
            seen = []
            async for m in r:
                seen.append(m.payload)
                if len(seen) == 5:
                    break
            assert seen == [b"x", b"y", b"a", b"", b"c" * 100_000]
        table = await log.read_table()
        assert table.num_rows == 5
        with pytest.raises(wp.LogNotFoundError):
            await client.open_log("missing")


async def test_acks_reach_the_loop_in_one_wakeup_per_batch(make_config, monkeypatch):
    loop = asyncio.get_running_loop()
    wakeups = {"relay": 0, "other": 0}
    real = loop.call_soon_threadsafe

    def counting(callback, *args, **kwargs):
        owner = getattr(callback, "__self__", None)
        wakeups["relay" if isinstance(owner, AckRelay) else "other"] += 1
        return real(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    async with wp.AsyncClient(make_config("local")) as client:
        log = await client.open_log("wakeups", create=True)
        async with log.open_writer() as w:
            link = w._writer._link
            acks = {"n": 0}
            on_frame = link._on_frame

            def count_acks(frame, done):
                acks["n"] += frame[0] == wire.ACK
                return on_frame(frame, done)

            link._on_frame = count_acks
            starts = []
            real_start = threading.Thread.start

            def spy_start(thread: threading.Thread) -> None:
                starts.append(thread.name)
                real_start(thread)

            monkeypatch.setattr(threading.Thread, "start", spy_start)
            ids = await asyncio.gather(*(w.write_async(b"p" * 1024) for _ in range(5000)))
            assert len(set(ids)) == 5000
            assert starts == []  # no thread per call
            batches = acks["n"]
            relay_wakeups = wakeups["relay"]
            assert 1 <= relay_wakeups <= batches < 5000
            # the control: asyncio.wrap_future on each AppendFuture wakes the loop per append
            wakeups["other"] = 0
            await asyncio.gather(
                *(asyncio.wrap_future(w._writer.write_async(b"q")) for _ in range(200))
            )
            assert wakeups["other"] == 200


async def test_append_future_is_awaitable_and_a_concurrent_future(make_config):
    async with wp.AsyncClient(make_config("local")) as client:
        log = await client.open_log("futures", create=True)
        async with log.open_writer() as aw:
            sync_writer = aw._writer
            first = await sync_writer.write_async(b"0")  # the sync API's AppendFuture
            wrapped = await asyncio.wrap_future(sync_writer.write_async(b"1"))
            gathered = await asyncio.gather(
                sync_writer.write_async(b"2"), asyncio.wrap_future(sync_writer.write_async(b"3"))
            )
            f = sync_writer.write_async(b"4")
            assert f.cancel() is False  # submitted appends cannot be withdrawn
            done, _ = await asyncio.get_running_loop().run_in_executor(
                None, concurrent.futures.wait, [f], 30
            )
            assert done == {f}
            entries = [first, wrapped, *gathered, f.result()]
            assert [e.entry_id for e in entries] == [0, 1, 2, 3, 4]


async def test_cancelling_an_await_neither_loses_nor_duplicates_appends(make_config):
    async with wp.AsyncClient(make_config("local")) as client:
        log = await client.open_log("cancel", create=True)
        async with log.open_writer() as w:
            started = [asyncio.create_task(w.write(f"s{i}".encode())) for i in range(100)]
            await asyncio.sleep(0)  # each task ran up to its await: its append is submitted
            for t in started[::2]:
                t.cancel()
            never = [asyncio.create_task(w.write(f"n{i}".encode())) for i in range(20)]
            for t in never:  # cancelled before they ran: nothing submitted
                t.cancel()
            results = await asyncio.gather(*started, *never, return_exceptions=True)
            assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 70
            await w.flush()
        payloads = [m.payload for m in await read_all(log, 100)]
        assert payloads == [f"s{i}".encode() for i in range(100)]


async def test_a_cancelled_read_skips_nothing(make_config):
    async with wp.AsyncClient(make_config("local")) as client:
        log = await client.open_log("tail", create=True)
        async with log.open_reader(wp.EARLIEST) as r:
            waiting = asyncio.create_task(r.read_next())  # tails an empty log
            await asyncio.sleep(0.3)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            async with log.open_writer() as w:
                await w.write_batch([b"first", b"second"])
            assert (await r.read_next(timeout=30)).payload == b"first"
            assert (await r.read_next(timeout=30)).payload == b"second"
            assert await r.read_next(timeout=0.3) is None


async def test_iteration_ends_when_the_reader_closes(make_config):
    async with wp.AsyncClient(make_config("local")) as client:
        log = await client.open_log("iter", create=True)
        async with log.open_writer() as w:
            await w.write(b"only")
        r = await log.open_reader(wp.EARLIEST)
        seen: list[bytes] = []

        async def consume() -> None:
            async for m in r:
                seen.append(m.payload)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.5)
        await r.close()
        await asyncio.wait_for(task, 30)
        assert seen == [b"only"]
        with pytest.raises(wp.ReaderClosedError):
            await r.read_next(timeout=0)


async def test_backpressure_is_awaited_not_blocked_on(make_config, services):
    host, port = services["WOODPECKER_S3_ENDPOINT"].split(":")
    with FaultProxy(host, int(port)) as proxy:
        config = make_config(
            "s3",
            s3_endpoint=proxy.endpoint,
            s3_timeout=3.0,
            retry_deadline=4.0,
            writer_arena_size="1MiB",
            writer_append_timeout=1.0,
        )
        async with wp.AsyncClient(config) as client:
            log = await client.create_log("backpressure")  # claims the deployment first
            async with log.open_writer() as w:
                proxy.set(blackhole=True)  # S3 accepts connections and never answers
                ticks = 0

                async def ticker() -> None:
                    nonlocal ticks
                    while True:
                        await asyncio.sleep(0.01)
                        ticks += 1

                beat = asyncio.create_task(ticker())
                start = time.monotonic()
                writes = [asyncio.ensure_future(w.write(b"b" * 100_000)) for _ in range(100)]
                done, _ = await asyncio.wait(
                    writes, timeout=20, return_when=asyncio.FIRST_EXCEPTION
                )
                elapsed = time.monotonic() - start
                beat.cancel()
                assert any(isinstance(t.exception(), wp.BackpressureTimeout) for t in done)
                assert 1.0 <= elapsed < 10
                # the loop kept running while writes waited for room (a blocked loop: ~0)
                assert ticks >= elapsed * 100 / 4
                for t in writes:  # nothing is acked that is not durable
                    with pytest.raises((wp.StorageUnavailableError, wp.BackpressureTimeout)):
                        await asyncio.wait_for(t, 30)
                proxy.set(blackhole=False)
