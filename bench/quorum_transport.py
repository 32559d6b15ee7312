"""The two candidate transports between a logstore and a quorum node, on loopback.

    python bench/quorum_transport.py [--size 1024] [--calls 3000] [--seconds 3] [--window 64]

A server process (standing in for ``woodpecker node``) answers each request with a
16-byte ack; this process is the client. For each transport, in the same run:

- **round trip**: one request of ``--size`` bytes at a time, ``--calls`` times; p50/p99;
- **pipelined**: one stream with up to ``--window`` requests in flight for ``--seconds``;
  acknowledged requests per second.

Transports: ``frames`` (asyncio streams, a 4-byte length then the bytes) and ``grpc``
(``grpc.aio`` with raw-bytes methods: ``unary`` one call per request, ``stream`` one
bidirectional stream carrying every request). Both sides create their sockets after the
fork, as gRPC requires. The choice this measurement made is in docs/quorum.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import struct
import time
from collections.abc import AsyncIterator

import grpc

LENGTH = struct.Struct("<I")
ACK = struct.Struct("<QQ")  # sequence, a last-entry id: the size of a real node's ack
METHOD_UNARY = "/bench.Node/Call"
METHOD_STREAM = "/bench.Node/Stream"
MAX_MESSAGE = 64 * 1024 * 1024
STREAM_LIMIT = 4 * 1024 * 1024  # StreamReader buffer: the 64 KiB default pauses reading per chunk


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- servers (run in a child process) ---------------------------------------------------


async def _serve_frames(port: int, ready: multiprocessing.synchronize.Event) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seq = 0
        try:
            while True:
                (n,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
                await reader.readexactly(n)
                seq += 1
                writer.write(LENGTH.pack(ACK.size) + ACK.pack(seq, seq))
                if writer.transport.get_write_buffer_size() > 1 << 20:
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=STREAM_LIMIT)
    ready.set()
    await server.serve_forever()


async def _serve_grpc(port: int, ready: multiprocessing.synchronize.Event) -> None:
    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return ACK.pack(len(request), 0)

    async def stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        seq = 0
        async for _ in requests:
            seq += 1
            yield ACK.pack(seq, seq)

    handlers = {
        "Call": grpc.unary_unary_rpc_method_handler(call),
        "Stream": grpc.stream_stream_rpc_method_handler(stream),
    }
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Node", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


def _server_main(kind: str, port: int, ready: multiprocessing.synchronize.Event) -> None:
    asyncio.run((_serve_frames if kind == "frames" else _serve_grpc)(port, ready))


# ---- clients ----------------------------------------------------------------------------


async def frames_round_trip(port: int, payload: bytes, calls: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=STREAM_LIMIT)
    head = LENGTH.pack(len(payload))
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        writer.writelines((head, payload))
        (n,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
        await reader.readexactly(n)
        times.append(time.perf_counter() - t)
    writer.close()
    return times


async def frames_pipelined(port: int, payload: bytes, seconds: float, window: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=STREAM_LIMIT)
    head = LENGTH.pack(len(payload))
    slots = asyncio.Semaphore(window)
    acked = 0
    stop = time.perf_counter() + seconds
    sent = 0

    async def acks() -> None:
        nonlocal acked
        while acked < sent or time.perf_counter() < stop:
            (n,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
            await reader.readexactly(n)
            acked += 1
            slots.release()

    collector = asyncio.create_task(acks())
    while time.perf_counter() < stop:
        await slots.acquire()
        writer.writelines((head, payload))
        if writer.transport.get_write_buffer_size() > STREAM_LIMIT:
            await writer.drain()
        sent += 1
    await collector
    writer.close()
    return acked


def _channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )


async def grpc_unary_round_trip(port: int, payload: bytes, calls: int) -> list[float]:
    async with _channel(port) as channel:
        call = channel.unary_unary(METHOD_UNARY)
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            await call(payload, timeout=5.0)
            times.append(time.perf_counter() - t)
        return times


async def grpc_stream_round_trip(port: int, payload: bytes, calls: int) -> list[float]:
    async with _channel(port) as channel:
        stream = channel.stream_stream(METHOD_STREAM)(timeout=600.0)
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            await stream.write(payload)
            await stream.read()
            times.append(time.perf_counter() - t)
        await stream.done_writing()
        return times


async def grpc_stream_pipelined(port: int, payload: bytes, seconds: float, window: int) -> int:
    async with _channel(port) as channel:
        stream = channel.stream_stream(METHOD_STREAM)(timeout=seconds + 60.0)
        slots = asyncio.Semaphore(window)
        acked = 0
        sent = 0
        stop = time.perf_counter() + seconds

        async def acks() -> None:
            nonlocal acked
            while acked < sent or time.perf_counter() < stop:
                await stream.read()
                acked += 1
                slots.release()

        collector = asyncio.create_task(acks())
        while time.perf_counter() < stop:
            await slots.acquire()
            await stream.write(payload)
            sent += 1
        await collector
        await stream.done_writing()
        return acked


def _ms(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if q < 100 else max(values) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    payload = os.urandom(args.size)
    ctx = multiprocessing.get_context("spawn")
    print(f"loadavg {os.getloadavg()[0]:.2f}; {args.size} B requests, 16 B acks, loopback")
    print(f"{'transport':<14} {'rtt p50 ms':>10} {'rtt p99 ms':>10} {'pipelined req/s':>16}")
    for kind in ("frames", "grpc"):
        port = _free_port()
        ready = ctx.Event()
        server = ctx.Process(target=_server_main, args=(kind, port, ready), daemon=True)
        server.start()
        try:
            if not ready.wait(30):
                raise SystemExit(f"{kind} server did not start")
            if kind == "frames":
                variants = [("frames", frames_round_trip, frames_pipelined)]
            else:
                variants = [
                    ("grpc unary", grpc_unary_round_trip, None),
                    ("grpc stream", grpc_stream_round_trip, grpc_stream_pipelined),
                ]
            for name, round_trip, pipelined in variants:
                asyncio.run(round_trip(port, payload, 200))  # warm up
                times = asyncio.run(round_trip(port, payload, args.calls))
                rate = "-"
                if pipelined is not None:
                    n = asyncio.run(pipelined(port, payload, args.seconds, args.window))
                    rate = f"{n / args.seconds:,.0f}"
                print(f"{name:<14} {_ms(times, 50):>10.3f} {_ms(times, 99):>10.3f} {rate:>16}")
        finally:
            server.kill()
            server.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
