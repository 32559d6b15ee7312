"""LogReader on quorum segments, against real ``woodpecker node`` processes, etcd and storage:
the unflushed tail from the nodes, flushed ranges from object storage, a long-poll wake-up."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pyarrow as pa
import pytest
from chaos.nodes import Connection, NodePool, NodeProcess
from chaos.processes import wait_until

import woodpecker as wp
from tests.conftest import ConfigFactory
from woodpecker.config import Config
from woodpecker.deployment import Deployment
from woodpecker.errors import QuorumUnavailableError
from woodpecker.format import encode_batch_message
from woodpecker.meta import MetaStore, SegmentState
from woodpecker.meta.flush import flush_cursor
from woodpecker.meta.lifecycle import Lifecycle
from woodpecker.quorum import wire
from woodpecker.quorum.client import EnsembleMember, QuorumSegment, SegmentReplicator
from woodpecker.quorum.tail import TailReads
from woodpecker.quorum.wire import Status
from woodpecker.reader import LogReader
from woodpecker.storage import ObjectStore, open_store

NO_FLUSH = {"quorum_flush_interval": 600.0}  # nodes keep everything (flush_bytes is 8 MiB)


def entry(i: int, size: int = 8) -> bytes:
    return b"%d:" % i + bytes(size)


class QuorumWriter:
    """Writes quorum segments as the logstore's coordinator does: the segment record with
    its ensemble (create CAS), each batch to every node, acked by 2 of 3; the replicator
    tells the nodes the LAC when nothing is in flight."""

    def __init__(
        self, config: Config, meta: MetaStore, log_id: int, members: list[EnsembleMember]
    ) -> None:
        self.meta, self.log_id, self.members = meta, log_id, members
        self.deployment = Deployment.of(config)
        self.session = meta.acquire_writer(log_id, "test-writer", preempt=True)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._open_segment()

    def _open_segment(self) -> None:
        self.segment_id = self.session.next_segment_id()
        self.session.create_segment(self.segment_id, ensemble=self.members, ack=2)
        self.next_entry = 0
        segment = QuorumSegment(self.log_id, self.segment_id, self.session.epoch, 2, 2.0)
        self.replicator: SegmentReplicator = self._run(
            SegmentReplicator.open(self.members, self.deployment, segment)
        )

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def append(self, count: int) -> int:
        """One batch of ``count`` entries; the LAC once it is acked."""
        payloads = [entry(i) for i in range(self.next_entry, self.next_entry + count)]
        self.next_entry += count

        async def send() -> int:
            return await self.replicator.append(encode_batch_message(payloads), count, 10.0)

        return self._run(send())

    def roll(self) -> None:
        """Seal the segment at its LAC and go on in a new one, as a writer rolls."""
        self.session.seal_segment(self.segment_id, last_entry=self.replicator.lac)
        self._run(self.replicator.finish(5.0))
        self._open_segment()

    def close(self) -> None:
        self._run(self.replicator.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self.session.release()


class RawWriter:
    """Writes segment 0 of log 1 straight to every node, the LAC it tells them chosen by
    the test (a node's LAC may lag what is acked, or fall inside a batch)."""

    def __init__(self, meta: MetaStore, members: list[EnsembleMember], nodes: list[NodeProcess]):
        self.session = meta.acquire_writer(1, "test-writer")
        self.session.create_segment(0, ensemble=members, ack=2)
        self.conns = [Connection(node.port, node.config) for node in nodes]
        self.next_entry = 0

    def append(self, count: int, lac: int, size: int = 8) -> None:
        payloads = [entry(i, size) for i in range(self.next_entry, self.next_entry + count)]
        epoch = self.session.epoch
        for conn in self.conns:
            assert conn.append(0, epoch, self.next_entry, payloads, lac).status == Status.OK
        self.next_entry += count

    def tell_lac(self, lac: int) -> None:
        for conn in self.conns:
            conn.call(wire.LAC, 0, self.session.epoch, wire.lac_body(lac))

    def close(self) -> None:
        self.session.release()


class Quorum:
    """Three real nodes, a quorum log on them, its writer, and what a reader needs."""

    def __init__(
        self, config: Config, nodes: list[NodeProcess], name: str, *, raw: bool = False
    ) -> None:
        self.nodes = nodes
        self.members = []
        for node in nodes:
            record = node.wait_registered()
            self.members.append(EnsembleMember(record.node_id, record.address, record.incarnation))
        self.config = config
        self.name = name
        self.meta = MetaStore(config)
        self.store: ObjectStore = open_store(config)
        self.log_id = self.meta.create_log(name, buffer_mode="quorum").log_id
        self.writer: QuorumWriter | RawWriter
        if raw:
            assert self.log_id == 1  # a fresh deployment's first log, what RawWriter writes
            self.writer = RawWriter(self.meta, self.members, nodes)
        else:
            self.writer = QuorumWriter(config, self.meta, self.log_id, self.members)

    def reader(self, start: wp.Position = wp.EARLIEST) -> LogReader:
        return LogReader(self.meta, self.store, self.name, self.log_id, start)

    def read_table(self, end: wp.LogMessageId | None = None) -> pa.Table:
        with self.reader() as reader:
            return reader.read_until(end)

    def flushed(self, segment_id: int = 0) -> int:
        return flush_cursor(self.meta, self.log_id, segment_id).cursor.next_entry

    def close(self) -> None:
        self.writer.close()
        self.store.close()
        self.meta.close()


@pytest.fixture
def quorum(
    start_node: Callable[..., NodeProcess], make_config: ConfigFactory
) -> Iterator[Callable[..., Quorum]]:
    """A quorum log on three nodes of its own (``settings``: theirs and the reader's)."""
    made: list[Quorum] = []

    def build(backend: str = "local", raw: bool = False, **settings: object) -> Quorum:
        nodes = [start_node(f"q{i}", backend=backend, **settings) for i in range(3)]
        made.append(Quorum(make_config(backend, **settings), nodes, "orders", raw=raw))
        return made[-1]

    yield build
    for q in made:
        q.close()


@pytest.fixture
def pooled(quorum_pool: NodePool, unique: str) -> Iterator[Quorum]:
    """A quorum log on the shared pool of nodes (default settings)."""
    q = Quorum(quorum_pool.config(), quorum_pool.nodes, f"orders-{unique}")
    yield q
    q.close()


def ids(messages: list[wp.LogMessage]) -> list[tuple[int, int]]:
    return [(m.id.segment_id, m.id.entry_id) for m in messages]


def drain(reader: LogReader, timeout: float = 0.3) -> list[wp.LogMessage]:
    out = []
    while (message := reader.read_next(timeout=timeout)) is not None:
        out.append(message)
    return out


def test_a_quorum_segment_is_read_from_its_nodes_then_across_the_flush_boundary(
    quorum: Callable[..., Quorum], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = quorum(backend, raw=True, quorum_flush_bytes="1KiB", quorum_flush_interval=600.0)
    w = q.writer
    assert isinstance(w, RawWriter)
    # small batches (far below quorum.flush_bytes: nothing is flushed); the nodes' LAC is
    # 9, inside the batch of entries 8-11 that a node answers whole: never past it
    w.append(4, lac=-1)
    w.append(4, lac=3)
    w.append(4, lac=9)
    early = q.reader()
    assert ids(drain(early)) == [(0, i) for i in range(10)]
    assert q.flushed() == 0 and q.meta.list_blocks(q.log_id, 0) == []  # all from the nodes
    middle = q.reader(wp.LogMessageId(0, 5))  # inside the batch of entries 4-7
    assert ids(drain(middle)) == [(0, i) for i in range(5, 10)]
    middle.close()
    w.tell_lac(11)
    assert [m.payload for m in drain(early)] == [entry(10), entry(11)]

    # large batches: the nodes flush what is at or below the LAC and forget it
    w.append(2, lac=11, size=600)
    w.append(2, lac=13, size=600)
    w.tell_lac(15)
    wait_until(lambda: q.flushed() == 16, 30.0, "the flush of entries 0-15")
    w.append(3, lac=15)
    w.tell_lac(18)
    # the early reader crosses into entries it read from nodes before: no repeat, no gap
    assert [m.payload for m in drain(early)] == (
        [entry(i, 600) for i in range(12, 16)] + [entry(i) for i in range(16, 19)]
    )
    # a new reader: 0-15 from object storage (block records), 16-18 from the nodes
    gets = []
    fetch = q.store.get
    q.store.get = lambda *a, **k: gets.append(a[0]) or fetch(*a, **k)  # type: ignore[method-assign]
    fresh = q.reader()
    table = fresh.read_until()
    assert table.column("entry_id").to_pylist() == list(range(19))
    assert table.column("payload").to_pylist() == (
        [entry(i) for i in range(12)]
        + [entry(i, 600) for i in range(12, 16)]
        + [entry(i) for i in range(16, 19)]
    )
    blocks = q.meta.list_blocks(q.log_id, 0)
    assert blocks and blocks[-1].last_entry_id == 15 and set(gets) == {b.key for b in blocks}

    # sealed at its last entry: a reader stops there although nodes hold more, even
    # inside the batch they answer with
    w.append(2, lac=18)  # one batch, entries 19-20, acked; the nodes know the LAC is 18
    sealed = w.session.seal_segment(0, last_entry=19)
    assert (sealed.state, sealed.lac) == (SegmentState.SEALED, 19)
    # entry 19 is committed, yet no node may serve it until told the LAC: not "nothing"
    sealed_error = pytest.raises(QuorumUnavailableError, match=r"entries 19\.\.19 are sealed")
    with q.reader(wp.LogMessageId(0, 19)) as stuck, sealed_error:
        stuck.read_until()
    threading.Timer(0.5, w.tell_lac, (20,)).start()  # the nodes' LAC is 20 then
    for reader in (early, fresh):  # waiting readers long-poll the sealed segment's nodes
        message = reader.read_next(timeout=5.0)
        assert message is not None and message.id == wp.LogMessageId(0, 19)
        assert drain(reader) == []
        assert reader.position == wp.LogMessageId(0, 20)
    whole = q.read_table()
    assert whole.column("entry_id").to_pylist() == list(range(20))
    for reader in (early, fresh):
        reader.close()

    # a reader whose snapshot predates the flush commit asks the nodes for entries they
    # forgot: FLUSHED sends it back to etcd, whose block records hold them now (the other
    # nodes are killed, so the flusher, which forgot them at once, answers)
    claim = q.meta.etcd.get("test", q.meta.keys.flusher(q.log_id, 0))
    assert claim is not None
    for member, node in zip(q.members, q.nodes, strict=True):
        if member.node_id != claim[0].decode():
            node.stop()
    snapshot = LogReader._snapshot
    stale = [True]

    def before_the_flush(self: LogReader, *args: Any) -> Any:
        snap = snapshot(self, *args)
        return dataclasses.replace(snap, blocks=[]) if stale and stale.pop() else snap

    monkeypatch.setattr(LogReader, "_snapshot", before_the_flush)
    answers = []
    read = TailReads.read
    monkeypatch.setattr(TailReads, "read", lambda *a: answers.append(read(*a)) or answers[-1])
    table = q.read_table(wp.LogMessageId(0, 20))
    assert table.column("payload").to_pylist() == whole.column("payload").to_pylist()
    assert answers[0].flushed and not stale

    # truncated inside the entries only a node holds now: EARLIEST is the entry after it
    Lifecycle(q.meta).truncate(q.log_id, q.name, 0, 17)
    after = q.reader()
    assert ids(drain(after)) == [(0, 18), (0, 19)]
    after.close()


@pytest.mark.parametrize("backend", ["local"])
def test_a_waiting_reader_is_woken_by_a_long_poll_when_the_lac_moves(
    pooled: Quorum, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = pooled
    w = q.writer
    assert isinstance(w, QuorumWriter)
    reads = []
    read = TailReads.read
    monkeypatch.setattr(TailReads, "read", lambda self, *a: reads.append(a) or read(self, *a))

    def acked_later(count: int) -> threading.Timer:
        timer = threading.Timer(0.5, w.append, (count,))
        timer.start()
        return timer

    # waits at entry 0 of a segment no node has an entry of yet, then at entry 2; the
    # reader's only timer is the 5 s re-read of etcd (RECHECK_INTERVAL)
    reader = q.reader(wp.LATEST)
    for first in (0, 2):
        acked_later(2)
        started = time.monotonic()
        message = reader.read_next(timeout=10)
        waited = time.monotonic() - started
        assert message is not None and message.id == wp.LogMessageId(0, first)
        assert waited < 3.0, f"woken after {waited:.2f}s"
        assert reader.read_next(timeout=0) is not None
    assert reader._tail.polls >= 2  # the wake-ups were answers to READs with a wait

    # LATEST on an ACTIVE quorum segment: after the LAC the nodes report
    with q.reader(wp.LATEST) as latest:
        assert latest.position == wp.LogMessageId(0, 4)

    # the writer rolls: the reader waiting at entry 4 of segment 0, sealed at 3, is woken
    # by etcd (no LAC moves there), moves on, and its long-poll in segment 1 wakes it
    def roll() -> None:
        w.roll()
        w.append(1)

    threading.Timer(0.5, roll).start()
    started = time.monotonic()
    message = reader.read_next(timeout=10)
    waited = time.monotonic() - started
    assert message is not None and message.id == wp.LogMessageId(1, 0)
    assert waited < 3.0, f"woken after {waited:.2f}s"

    # control: without the long-poll nothing wakes the waiting reader; the entry acked
    # 0.5 s into the wait is found by the last look at the timeout, and no interval polls
    # the nodes meanwhile (one READ before the wait, one at its end)
    monkeypatch.setattr(TailReads, "long_poll", lambda *a, **k: None)
    reads.clear()
    acked_later(1)
    started = time.monotonic()
    message = reader.read_next(timeout=2.0)
    assert message is not None and message.id == wp.LogMessageId(1, 1)
    assert time.monotonic() - started >= 2.0
    assert len(reads) == 2
    reader.close()

    # close() from another thread ends an iteration waiting on a long-poll at once
    monkeypatch.undo()
    idle = q.reader(wp.LATEST)
    iterating = threading.Thread(target=lambda: list(idle))
    iterating.start()
    wait_until(lambda: idle._tail.polls == 1, 5.0, "the long-poll")
    started = time.monotonic()
    idle.close()
    iterating.join(timeout=5.0)
    assert not iterating.is_alive() and time.monotonic() - started < 2.0


def test_a_reader_skips_failed_nodes_and_fails_clearly_when_none_answers(
    quorum: Callable[..., Quorum], start_node: Callable[..., NodeProcess]
) -> None:
    q = quorum(**NO_FLUSH)
    w = q.writer
    assert isinstance(w, QuorumWriter)
    w.append(3)
    reader = q.reader()
    assert ids(drain(reader)) == [(0, i) for i in range(3)]
    by_id = {m.node_id: node for m, node in zip(q.members, q.nodes, strict=True)}
    served = reader._tail._preferred
    assert served in by_id
    killed = by_id.pop(served)
    killed.stop()
    w.append(2)
    assert [m.payload for m in drain(reader)] == [entry(3), entry(4)]  # from another node
    assert reader._tail._preferred in by_id

    # the killed node comes back empty on its address, with a new incarnation: never asked
    # (it would answer as if it never had the segment); then the other two are killed
    back = start_node("back", port=killed.port, **NO_FLUSH)
    wait_until(lambda: "back" in {n.node_id for n in back.registered()}, 30.0, "the restarted node")
    for node in by_id.values():
        node.stop()
    started = time.monotonic()
    with pytest.raises(QuorumUnavailableError, match="no node of its ensemble answers"):
        reader.read_next(timeout=1.0)  # a waiting read: asks again until its timeout
    assert 1.0 <= time.monotonic() - started < 5.0
    assert reader.position == wp.LogMessageId(0, 5)
    with q.reader() as other, pytest.raises(QuorumUnavailableError):
        other.read_until(wp.LogMessageId(0, 10))  # a read that does not wait: at once
    with pytest.raises(QuorumUnavailableError):
        q.reader(wp.LATEST)  # the LAC is only known to the nodes
    with pytest.raises(QuorumUnavailableError, match=f"{served} .*it restarted"):
        reader.read_next(timeout=0)
    reader.close()


def test_a_log_written_through_the_client_is_tailed_from_its_nodes_and_read_after_close(
    quorum_pool: NodePool, unique: str
) -> None:
    config = quorum_pool.config()
    payloads = [b"t%04d:" % i + bytes(64) for i in range(300)]
    meta = MetaStore(config)
    with wp.Client(config) as client:
        log = client.open_log(f"tail-{unique}", create=True)
        with log.open_reader(wp.EARLIEST) as tail:  # before anything is written
            with log.open_writer() as writer:
                writer.write(payloads[0])
                got = [tail.read_next(timeout=10)]
                for future in [writer.write_async(p) for p in payloads[1:]]:
                    future.result()
                while len(got) < len(payloads) and got[-1] is not None:
                    got.append(tail.read_next(timeout=10))
                # all of it read while the segment is ACTIVE (its LAC only on the nodes)
                (segment,) = meta.list_segments(log.log_id)
                assert segment.quorum and segment.state is SegmentState.ACTIVE
                assert tail._tail._preferred is not None  # a node served the tail
            assert [m.id for m in got if m is not None] == [
                wp.LogMessageId(0, i) for i in range(len(payloads))
            ]
            assert [m.payload for m in got if m is not None] == payloads
            assert tail.read_next(timeout=0.2) is None  # sealed at its last entry
        wait_until(
            lambda: meta.list_segments(log.log_id)[0].state is SegmentState.SEALED,
            30.0,
            "the seal of the closed writer's segment",
        )
        assert log.read_table().column("payload").to_pylist() == payloads
    meta.close()
