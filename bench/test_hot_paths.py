"""Hot paths of the write pipeline, one operation each: what a regression would slow first.

- shm batch build: what ``ProducerLink`` does to seal a batch: allocate in the ring,
  write the Arrow batch message into the memfd arena, free it when acked;
- descriptor round trip: a BATCH descriptor to the logstore and its ACK back, over a
  Unix socket, framed and parsed as the pipeline does (no payload crosses it);
- commit txn: one fenced etcd transaction committing a block and the LAC (real etcd);
- producer append path: ``write_async`` / ``write_batch`` through a real ``ProducerLink``
  (arena, batching, descriptors, acks, futures) against a stub logstore that ACKs every
  batch at once: the producer's own work per entry, without storage or etcd.

``extra_info`` carries the rates derived from the mean time.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from shm import Arena, FrameReader, RingAllocator, recv_msg, send_msg
from woodpecker import wire
from woodpecker.config import Config
from woodpecker.deployment import Deployment
from woodpecker.format import batch_message_size, write_batch_message
from woodpecker.meta import BlockRecord, MetaStore
from woodpecker.producer import ProducerLink
from woodpecker.writer import LogWriter

BATCH_BYTES = 4 * 1024 * 1024


def rate(benchmark: BenchmarkFixture, **per_call: float) -> None:
    """Record ``<name>_per_s`` for each count per call (absent when benchmarks are disabled)."""
    if benchmark.stats:
        mean = benchmark.stats.stats.mean
        for name, count in per_call.items():
            benchmark.extra_info[f"{name}_per_s"] = round(count / mean, 1)


@pytest.mark.parametrize("entry_size", [100, 1024, 64 * 1024])
def test_shm_batch_build(benchmark: BenchmarkFixture, entry_size: int) -> None:
    payloads = [os.urandom(entry_size)] * (BATCH_BYTES // entry_size)
    arena = Arena.create(64 * 1024 * 1024)
    ring = RingAllocator(arena.size)

    def seal() -> int:
        size = batch_message_size(payloads)
        offset = ring.alloc(size)
        assert offset is not None
        view = arena.writable_view(offset, size)
        try:
            written = write_batch_message(payloads, view)
        finally:
            view.release()
        ring.free(offset)
        return written

    try:
        # one lap of the ring first: the arena's first touch (page faults) is a one-off
        lap = arena.size // batch_message_size(payloads) + 1
        written = benchmark.pedantic(seal, rounds=200, warmup_rounds=lap)
        assert written == batch_message_size(payloads)
    finally:
        arena.close()
    rate(benchmark, entries=len(payloads), MB=BATCH_BYTES / 1e6)


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def test_descriptor_round_trip(
    benchmark: BenchmarkFixture, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    producer, logstore = socket_pair
    at_logstore, at_producer = FrameReader(), FrameReader()
    state = {"seq": 0}

    def round_trip() -> int:
        state["seq"] += 1
        seq = state["seq"]
        send_msg(producer, wire.BATCH_FMT.pack(wire.BATCH, 7, seq, 4096, 65536, 64))
        frames = []
        while not frames:
            frames = at_logstore.feed_from(logstore)
        _, _, got, _, _, count = wire.BATCH_FMT.unpack(frames[0][0])
        send_msg(logstore, wire.ACK_FMT.pack(wire.ACK, got, 3, count * seq))
        acks = []
        while not acks:
            acks = at_producer.feed_from(producer)
        return wire.ACK_FMT.unpack(acks[0][0])[1]

    assert benchmark(round_trip) == state["seq"]
    rate(benchmark, round_trips=1)


def test_commit_txn(benchmark: BenchmarkFixture, etcd_config: Config) -> None:
    with MetaStore(etcd_config) as meta:
        log = meta.create_log("bench-commit")
        session = meta.acquire_writer(log.log_id, "bench")
        try:
            session.create_segment(0)
            state = {"block": 0, "entry": 0, "size": 0}

            def commit() -> None:
                block = BlockRecord(
                    log_id=log.log_id,
                    segment_id=0,
                    block_id=state["block"],
                    first_entry_id=state["entry"],
                    entry_count=1000,
                    size=8 << 20,
                    key=f"{log.log_id}/0/{state['block']}.arrow",
                    offset=0,
                    length=8 << 20,
                    checksum=12345,
                )
                state["block"] += 1
                state["entry"] += 1000
                state["size"] += 8 << 20
                session.commit(0, [block], state["entry"] - 1, state["size"])

            benchmark.pedantic(commit, rounds=300, warmup_rounds=10)
            committed = meta.get_segment(log.log_id, 0)
            assert committed is not None and committed.lac == state["entry"] - 1
        finally:
            session.release()
    rate(benchmark, commits=1)


class StubLogstore:
    """Speaks the logstore's side of the wire with no storage: a WELCOME, an ok REPLY to
    every control request, and an ACK with consecutive entry ids for every BATCH as soon
    as it arrives. It runs on a thread of the benchmark's process (a fixed cost per batch)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(config.logstore_socket))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, name="stub-logstore", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn, contextlib.suppress(EOFError, OSError):
            _, fds = recv_msg(conn)
            for fd in fds:
                os.close(fd)
            deployment = Deployment.of(self.config)
            welcome = {"producer_id": 1, "protocol": wire.VERSION, "pid": os.getpid()}
            welcome |= {"deployment": deployment.fingerprint, "serves": str(deployment)}
            send_msg(conn, wire.encode(wire.WELCOME, welcome))
            reader, entry = FrameReader(), 0
            while True:
                for frame, _ in reader.feed_from(conn):
                    if frame[0] == wire.BATCH:
                        _, _, seq, _, _, count = wire.BATCH_FMT.unpack(frame)
                        send_msg(conn, wire.ACK_FMT.pack(wire.ACK, seq, 0, entry))
                        entry += count
                    else:
                        _, body = wire.decode(frame)
                        send_msg(conn, wire.encode(wire.REPLY, {"req": body["req"], "ok": True}))

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def stub_writer(tmp_path: Path) -> Iterator[LogWriter]:
    """A LogWriter on a real ProducerLink whose logstore is a ``StubLogstore``."""
    config = Config(env={}, storage_root=str(tmp_path), logstore_socket=str(tmp_path / "ls"))
    stub = StubLogstore(config)
    link = ProducerLink(config)
    try:
        yield LogWriter(link, "bench", 1)
    finally:
        link.close()
        stub.close()


APPENDS = 20_000


def test_write_async_path(benchmark: BenchmarkFixture, stub_writer: LogWriter) -> None:
    payload = os.urandom(1024)
    submit = stub_writer.write_async

    def appends() -> int:
        futures = [submit(payload) for _ in range(APPENDS)]
        stub_writer.flush(30)
        return futures[-1].result(30).entry_id - futures[0].result(30).entry_id + 1

    assert benchmark.pedantic(appends, rounds=20, warmup_rounds=2) == APPENDS
    rate(benchmark, entries=APPENDS)


def test_write_batch_path(benchmark: BenchmarkFixture, stub_writer: LogWriter) -> None:
    batch = [os.urandom(100)] * 10_000

    def write_batch() -> int:
        ids = stub_writer.write_batch(batch, timeout=30)
        return ids[-1].entry_id - ids[0].entry_id + 1

    assert benchmark.pedantic(write_batch, rounds=50, warmup_rounds=3) == len(batch)
    rate(benchmark, entries=len(batch))
