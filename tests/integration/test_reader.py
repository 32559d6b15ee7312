"""The read path on both backends, against real etcd and S3: tailing, positions, faults."""

from __future__ import annotations

import dataclasses
import queue
import statistics
import threading
import time
from collections.abc import Callable

import pyarrow as pa
import pytest

import woodpecker as wp
from woodpecker.meta import (
    MetaStore,
    TruncationPoint,
    live_reader_positions,
    live_readers,
)
from woodpecker.meta.connection import EtcdConnection
from woodpecker.reader import READ_SCHEMA
from woodpecker.storage import open_store

ROLLING = {"segment_max_bytes": "8KiB", "uploader_max_block_bytes": "2KiB"}


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def put(meta: MetaStore, key: str, value: bytes) -> None:
    meta.etcd.call("test", lambda c: c.put(key, value))


def drain(reader: wp.LogReader, timeout: float = 0.5) -> list[wp.LogMessage]:
    """Everything the reader returns until it has waited ``timeout`` for nothing."""
    out = []
    while (message := reader.read_next(timeout=timeout)) is not None:
        out.append(message)
    return out


class Tail:
    """A thread iterating a reader, as a tailing consumer does."""

    def __init__(self, reader: wp.LogReader) -> None:
        self.reader = reader
        self.received: queue.Queue[tuple[float, wp.LogMessage]] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for message in self.reader:
                self.received.put((time.perf_counter(), message))
        except BaseException as e:
            self.error = e

    def take(self, n: int, timeout: float = 10.0) -> list[wp.LogMessage]:
        try:
            return [self.received.get(timeout=timeout)[1] for _ in range(n)]
        except queue.Empty:
            raise AssertionError(
                f"no entry within {timeout}s (reader error: {self.error!r})"
            ) from None

    def stop(self) -> None:
        self.reader.close()
        self.thread.join(5)
        assert not self.thread.is_alive(), "close() did not end the iteration"
        assert self.error is None, self.error


def tail_latencies(log: wp.LogHandle, n: int) -> list[float]:
    """Milliseconds from each ack to the tailing reader's receipt of the entry, sorted."""
    with log.open_writer() as w:
        w.write(b"before")
        tail = Tail(log.open_reader(wp.LATEST))
        latencies = []
        for i in range(n):
            time.sleep(0.002)  # the reader is back to waiting
            acked = w.write(b"e%d" % i)
            acked_at = time.perf_counter()
            received_at, message = tail.received.get(timeout=10.0)
            assert message == wp.LogMessage(acked, b"e%d" % i)
            latencies.append(max(0.0, received_at - acked_at) * 1000)
        tail.stop()
    return sorted(latencies)


def test_tail_latency(make_config, backend, monkeypatch):
    """A waiting reader gets each entry right after its ack, pushed by the etcd watch: far
    sooner than when the watch cannot be armed and the reader falls back to re-reading
    metadata on a back-off (the control run)."""
    with wp.Client(make_config(backend)) as client:
        pushed = tail_latencies(client.create_log("tail"), 100)
        arm = EtcdConnection.call

        def no_watch(self, op, fn, **kwargs):  # type: ignore[no-untyped-def]
            if op == "watch_commits":
                raise wp.MetadataUnavailableError("watches disabled for the control run")
            return arm(self, op, fn, **kwargs)

        monkeypatch.setattr(EtcdConnection, "call", no_watch)
        polled = tail_latencies(client.create_log("tail-polled"), 10)
    print(
        f"\n[{backend}] tail latency ack -> reader: pushed p50 {statistics.median(pushed):.2f} "
        f"ms, p90 {pushed[89]:.2f} ms, max {pushed[-1]:.2f} ms; without the watch "
        f"p50 {statistics.median(polled):.0f} ms"
    )
    assert statistics.median(polled) >= 100, "the control run did not fall back to polling"
    assert pushed[89] < statistics.median(polled) / 4


def test_reader_follows_writer_rolling_segments(make_config, backend):
    """Tailing across segment rolls; the registration follows the reader and goes on close."""
    config = make_config(backend, **ROLLING)
    with wp.Client(config) as client, MetaStore(config) as meta:
        log = client.create_log("rolling")
        tail = Tail(log.open_reader(wp.EARLIEST, name="audit"))
        (registered,) = live_readers(meta, log.log_id)
        assert (registered.name, registered.segment_id, registered.entry_id) == ("audit", 0, 0)
        payloads = [bytes([i]) * 1000 for i in range(60)]
        with log.open_writer() as w:
            acked = [w.write(p) for p in payloads]
        messages = tail.take(60)
        last = acked[-1].segment_id
        eventually(lambda: live_reader_positions(meta, log.log_id)[0][0] == last)
        other = log.open_reader(acked[30])
        assert len(live_readers(meta, log.log_id)) == 2
        tail.stop()
        assert live_reader_positions(meta, log.log_id) == [tuple(acked[30])]
        with pytest.raises(wp.ReaderClosedError):
            tail.reader.read_next(timeout=0)
        other.close()
        other.close()  # idempotent
        assert live_readers(meta, log.log_id) == []
    assert len({i.segment_id for i in acked}) >= 3
    assert [m.id for m in messages] == acked
    assert [m.payload for m in messages] == payloads


def test_reader_across_fencing(make_config, backend, unique):
    first = make_config(backend)
    second = make_config(backend, logstore_socket=f"/tmp/wp-test-{unique}/other.sock")
    with wp.Client(first) as a, wp.Client(second) as b:
        log = a.create_log("fenced")
        tail = Tail(log.open_reader(wp.EARLIEST))
        w_a = log.open_writer()
        acked = [w_a.write(b"a%d" % i) for i in range(5)]
        assert tail.take(5) == [wp.LogMessage(i, b"a%d" % n) for n, i in enumerate(acked)]
        with b.open_log("fenced").open_writer() as w_b:  # fences a's session
            acked += [w_b.write(b"b%d" % i) for i in range(5)]
            with pytest.raises(wp.WriterFencedError):
                w_a.write(b"fenced")
            acked.append(w_b.write(b"b-last"))
        w_a.close()
        messages = tail.take(6)
        time.sleep(0.3)
        assert tail.received.empty(), "the reader returned an entry nobody acknowledged"
        tail.stop()
    assert [m.id for m in messages] == acked[5:]
    assert [m.payload for m in messages] == [b"b%d" % i for i in range(5)] + [b"b-last"]
    assert acked[5].segment_id > acked[4].segment_id


def test_read_batch_read_table_and_truncation(make_config, backend):
    config = make_config(backend, **ROLLING)
    with wp.Client(config) as client, MetaStore(config) as meta:
        log = client.create_log("arrow")
        payloads = [(b"p%03d-" % i) * (i % 7) * 10 for i in range(300)]  # some empty
        with log.open_writer() as w:
            ids = []
            for start in range(0, 300, 25):
                ids += w.write_batch(payloads[start : start + 25])
        assert len({i.segment_id for i in ids}) >= 2

        with log.open_reader(wp.EARLIEST) as reader:
            batches = []
            while (batch := reader.read_batch(64, timeout=0.5)) is not None:
                assert batch.schema == READ_SCHEMA
                assert 1 <= batch.num_rows <= 64
                batches.append(batch)
            assert reader.position > ids[-1]
        table = pa.Table.from_batches(batches)
        assert table.column("payload").to_pylist() == payloads
        assert (
            list(zip(table["segment_id"].to_pylist(), table["entry_id"].to_pylist(), strict=True))
            == ids
        )

        whole = log.read_table()
        assert whole.schema == READ_SCHEMA
        assert whole.column("payload").to_pylist() == payloads
        part = log.read_table(ids[100], ids[250])  # end exclusive, across segments
        assert part.column("payload").to_pylist() == payloads[100:250]
        assert (part["segment_id"][0].as_py(), part["entry_id"][0].as_py()) == ids[100]
        assert log.read_table(ids[299], wp.LogMessageId(10**6, 0)).num_rows == 1
        assert log.read_table(ids[10], ids[10]).num_rows == 0
        assert log.read_table(wp.LATEST).num_rows == 0  # committed data only, no waiting

        # truncation (the point is written directly: this tests the reader, not truncate())
        segments = sorted({i.segment_id for i in ids})
        assert len(segments) >= 3
        first, second = segments[0], segments[1]
        head, *_ = meta.list_blocks(log.log_id, second)
        point = wp.LogMessageId(second, head.last_entry_id)  # the end of segment 2's first block
        k = meta.keys
        put(meta, k.truncation(log.log_id), TruncationPoint(*point).to_bytes())
        after = ids[ids.index(point) + 1 :]
        with log.open_reader(wp.EARLIEST) as reader:
            assert reader.position == wp.LogMessageId(point.segment_id, point.entry_id + 1)
            assert [m.id for m in drain(reader, 0.2)] == after
        # truncated but not deleted yet: served
        assert log.read_table(ids[0]).num_rows == len(ids)
        # the truncated block of segment 2 deleted, its segment record kept
        meta.etcd.call("test", lambda c: c.delete(k.block(log.log_id, second, head.block_id)))
        with pytest.raises(wp.PositionTruncatedError):
            log.open_reader(wp.LogMessageId(second, 0))
        # segment 1 deleted entirely
        meta.etcd.call("test", lambda c: c.delete(k.segment(log.log_id, first)))
        meta.etcd.call("test", lambda c: c.delete_prefix(k.blocks_prefix(log.log_id, first)))
        with pytest.raises(wp.PositionTruncatedError):
            log.open_reader(ids[0])
        assert (
            log.read_table(wp.EARLIEST).column("payload").to_pylist()
            == payloads[len(ids) - len(after) :]
        )


def test_positions(make_config, backend):
    with wp.Client(make_config(backend)) as client:
        log = client.create_log("positions")
        with log.open_writer() as w:
            ids = [w.write(b"e%d" % i) for i in range(5)]
            with log.open_reader(wp.LATEST) as latest, log.open_reader(wp.EARLIEST) as earliest:
                assert latest.position == wp.LogMessageId(ids[-1].segment_id, 5)
                started = time.monotonic()
                assert latest.read_next(timeout=0.2) is None
                assert time.monotonic() - started < 1.5, "the wait is bounded by the timeout"
                ids.append(w.write(b"e5"))
                assert latest.read_next(timeout=2) == wp.LogMessage(ids[5], b"e5")
                assert [m.id for m in drain(earliest, 0.2)] == ids
            with log.open_reader(ids[3]) as explicit:
                assert [m.payload for m in drain(explicit, 0.2)] == [b"e3", b"e4", b"e5"]
            # a position past the end waits for it
            ahead = wp.LogMessageId(ids[0].segment_id, 7)
            with log.open_reader(ahead) as reader:
                assert reader.read_next(timeout=0.1) is None
                w.write_batch([b"e6", b"e7"])
                assert reader.read_next(timeout=2) == wp.LogMessage(ahead, b"e7")
        with pytest.raises(TypeError):
            log.open_reader("earliest")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            log.open_reader(wp.LogMessageId(-1, 0))
        # out of range: one clear position error, never an overflow from deep inside
        for bad in [(2**64, 0), (0, 2**63), (-1, 0), (True, 0), (1.0, 0)]:
            position = wp.LogMessageId(*bad)
            with pytest.raises(wp.InvalidPositionError, match="invalid position"):
                log.open_reader(position)
            with pytest.raises(wp.InvalidPositionError, match="invalid position"):
                log.truncate(position)
            with pytest.raises(wp.InvalidPositionError, match="invalid position"):
                log.read_table(wp.EARLIEST, position)


def test_faults_corrupted_missing_and_deleted(make_config, backend):
    config = make_config(backend)
    with wp.Client(config) as client, MetaStore(config) as meta, open_store(config) as store:
        log = client.create_log("faulty")
        # two segments: blocks of one segment may share an object (the local append file)
        with log.open_writer() as w:
            ids = list(w.write_batch([b"good-%d" % i for i in range(10)]))
        with log.open_writer() as w:
            ids += w.write_batch([b"lost-0", b"lost-1"])
        (block,) = meta.list_blocks(log.log_id, ids[0].segment_id)
        (lost,) = meta.list_blocks(log.log_id, ids[10].segment_id)
        original = store.get(block.key)
        where = f"'faulty' segment {block.segment_id} block {block.block_id}"
        for bad in (b"\x00garbage" * 20, original[: len(original) // 2]):  # corrupted, cut short
            store.put(block.key, bad)
            with log.open_reader(wp.EARLIEST) as reader:
                for _ in range(2):  # the error repeats; nothing bad is ever returned
                    with pytest.raises(wp.CorruptedDataError, match=where):
                        reader.read_next(timeout=5)
                assert reader.position == ids[0]
            with pytest.raises(wp.CorruptedDataError, match=where):
                log.read_table()
        store.put(block.key, original)

        store.delete_many([lost.key])  # referenced by metadata, yet gone: an error, not a hang
        reader = log.open_reader(wp.EARLIEST)
        good = [reader.read_next(timeout=5).payload for _ in range(10)]
        assert good == [b"good-%d" % i for i in range(10)]
        started = time.monotonic()
        with pytest.raises(
            wp.ObjectNotFoundError, match=f"segment {lost.segment_id} block {lost.block_id}"
        ):
            reader.read_next(timeout=10)
        assert time.monotonic() - started < 10
        assert ids[9] < reader.position <= ids[10]  # just past the good ones (0:10 or 1:0)

        buffered = log.open_reader(wp.EARLIEST)
        assert buffered.read_next(timeout=5).payload == b"good-0"  # 9 more in its block
        waiting = Tail(log.open_reader(wp.LATEST))
        time.sleep(0.1)  # the tail is blocked on the watch
        client.delete_log("faulty")
        time.sleep(0.1)  # the deletion reaches the readers' watches
        with pytest.raises(wp.LogNotFoundError):
            reader.read_next(timeout=2)
        with pytest.raises(wp.LogNotFoundError):
            buffered.read_next(timeout=2)
        waiting.thread.join(3)
        assert isinstance(waiting.error, wp.LogNotFoundError), waiting.error
        for r in (waiting.reader, reader, buffered):
            r.close()
        with pytest.raises(wp.LogNotFoundError):
            log.open_reader(wp.EARLIEST)
        with pytest.raises(wp.LogNotFoundError):
            log.read_table()


def test_reader_keeps_working_across_a_compaction_swap(make_config, backend):
    """Blocks moved into one object (records swapped, old objects deleted) mid-read."""
    config = make_config(backend, reader_read_ahead=1)
    with wp.Client(config) as client, MetaStore(config) as meta, open_store(config) as store:
        log = client.create_log("compacted")
        with log.open_writer() as w:
            ids = [
                i for n in range(4) for i in w.write_batch([b"b%d-%d" % (n, e) for e in range(3)])
            ]
        segment = ids[0].segment_id
        blocks = meta.list_blocks(log.log_id, segment)
        assert len(blocks) == 4
        with log.open_reader(wp.EARLIEST) as reader:
            assert reader.read_next(timeout=5).id == ids[0]  # holds the old block records
            data = [store.get(b.key, b.offset, b.length) for b in blocks]
            merged = f"{log.log_id}/{segment}/merged.arrow"
            store.put(merged, data)
            offsets = [sum(len(d) for d in data[:i]) for i in range(len(data))]
            for b, offset in zip(blocks, offsets, strict=True):
                moved = dataclasses.replace(b, key=merged, offset=offset)
                key = meta.keys.block(log.log_id, segment, b.block_id)
                put(meta, key, moved.to_bytes())
            store.delete_many([b.key for b in blocks])
            rest = drain(reader, 0.3)
        assert [m.id for m in rest] == ids[1:]
        assert [m.payload for m in rest] == [
            b"b%d-%d" % (n, e) for n in range(4) for e in range(3)
        ][1:]


def test_idle_tail_stays_registered_and_survives_broken_watch(make_config):
    """The lease is kept alive while the reader idles past its TTL (unlike upstream), and a
    watch stream that breaks is re-armed without missing what was committed meanwhile.

    Storage plays no part here, so one backend is enough."""
    config = make_config("local", etcd_lease_ttl=2)
    with wp.Client(config) as client, MetaStore(config) as meta:
        log = client.create_log("rewatch")
        with log.open_writer() as w:
            tail = Tail(log.open_reader(wp.LATEST))
            (registered,) = live_readers(meta, log.log_id)
            key = meta.keys.reader(log.log_id, registered.reader_id)
            lease = meta.etcd.get("test", key)[1].lease_id
            meta.etcd.call("test", lambda c: c.revoke_lease(lease))  # as if etcd expired it
            assert live_readers(meta, log.log_id) == []
            time.sleep(3.0)  # idle for longer than the lease TTL
            (again,) = live_readers(meta, log.log_id)  # registered again, and kept alive
            assert again.reader_id == registered.reader_id
            first = w.write(b"one")
            assert tail.take(1, timeout=2)[0].id == first
            time.sleep(0.2)  # the reader is blocked on the watch, not inside a request
            etcd = client.meta_store().etcd
            etcd._failed(etcd._current, reconnect=True)  # closes the channel under the watch
            second = w.write(b"two")
            assert tail.take(1, timeout=2)[0].id == second
            tail.stop()
        assert live_readers(meta, log.log_id) == []


def test_read_your_writes_within_one_client(make_config, backend):
    """An entry acked before read_next is called is returned by it, even with timeout=0."""
    config = make_config(backend)
    with wp.Client(config) as client:
        log = client.create_log("ryw")
        with log.open_writer() as w, log.open_reader(wp.LATEST) as reader:
            misses = []
            for i in range(30):
                mid = w.write(b"entry %d" % i)
                message = reader.read_next(timeout=0)
                if message is None or message.id != mid:
                    misses.append((i, message))
            ids = w.write_batch([b"b%d" % i for i in range(5)])
            got = [reader.read_next(timeout=0) for _ in ids]
        assert misses == []
        assert [m.id for m in got if m is not None] == ids


def test_delete_log_ends_buffered_reads_through_the_same_client(make_config, backend):
    config = make_config(backend)
    with wp.Client(config) as client:
        log = client.create_log("deleted-while-read")
        with log.open_writer() as w:
            w.write_batch([b"e%d" % i for i in range(100)])
        with log.open_reader(wp.EARLIEST) as reader:
            assert reader.read_next(timeout=5).payload == b"e0"  # the block is buffered now
            client.delete_log("deleted-while-read")
            with pytest.raises(wp.LogNotFoundError, match="deleted"):
                reader.read_next(timeout=0)
            with pytest.raises(wp.LogNotFoundError, match="deleted"):
                reader.read_batch(10, timeout=0)


def _read_told_ids(config, name, ready, told, answers) -> None:
    with wp.Client(config) as client, client.open_log(name).open_reader(wp.LATEST) as reader:
        ready.set()
        while told.get(timeout=60) is not None:
            message = reader.read_next(timeout=0)
            answers.put(None if message is None else tuple(message.id))


def test_read_your_writes_across_processes(make_config):
    """An ack that happened before read_next in real time (here: the writer told the reader
    over a pipe) is seen by a reader in another process, even with timeout=0."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    config = make_config("local")
    with wp.Client(config) as client:
        log = client.create_log("ryw-remote")
        ready, told, answers = ctx.Event(), ctx.Queue(), ctx.Queue()
        reader = ctx.Process(target=_read_told_ids, args=(config, log.name, ready, told, answers))
        reader.start()
        try:
            assert ready.wait(60)
            with log.open_writer() as w:
                for i in range(20):
                    mid = w.write(b"told %d" % i)
                    told.put(tuple(mid))
                    assert answers.get(timeout=30) == tuple(mid), f"write {i}"
        finally:
            told.put(None)
            reader.join(30)


def _eager(table: pa.Table) -> list[wp.LogMessage]:
    """The messages of a ``read_table`` result, built one by one the plain way."""
    columns = [table.column(c).to_pylist() for c in ("segment_id", "entry_id", "payload")]
    rows = zip(*columns, strict=True)
    return [wp.LogMessage(wp.LogMessageId(s, e), p) for s, e, p in rows]


def test_served_messages_are_exactly_the_plain_ones(make_config):
    """read_next and iteration serve each block's messages from an iterator built in C; what
    they return (types, values, equality, hash, repr) and the position after each one are
    those of messages built one by one, across blocks and segments, mixed with read_batch."""
    config = make_config("local", **ROLLING)
    with wp.Client(config) as client:
        log = client.create_log("served")
        with log.open_writer() as w:
            for first in range(0, 120, 10):  # a block each, a segment every few
                w.write_batch([bytes([i % 251]) * (200 + i) for i in range(first, first + 10)])
        expected = _eager(log.read_table())
        assert len({m.id.segment_id for m in expected}) >= 3
        with log.open_reader(wp.EARLIEST) as reader:
            got, positions = [], []
            for message in reader:  # iteration, then read_next and read_batch in turns
                got.append(message)
                positions.append(reader.position)
                if len(got) == 40:
                    break
            while len(got) < 80:
                got.append(reader.read_next(timeout=5))
                positions.append(reader.position)
            batch = reader.read_batch(7, timeout=5)
            got += _eager(pa.Table.from_batches([batch]))
            positions.append(reader.position)
            for message in reader:
                got.append(message)
                if message.id == expected[-1].id:
                    break
    assert got == expected
    for message, plain in zip(got, expected, strict=True):
        assert type(message) is wp.LogMessage and type(message.id) is wp.LogMessageId
        assert type(message.payload) is bytes
        assert (message.id, message.payload) == tuple(plain) and hash(message) == hash(plain)
        assert repr(message) == repr(plain)
    after = [wp.LogMessageId(m.id.segment_id, m.id.entry_id + 1) for m in got[:80]]
    assert positions[:80] == after
    assert positions[80] == wp.LogMessageId(got[86].id.segment_id, got[86].id.entry_id + 1)


def test_close_or_delete_stops_an_iteration_inside_a_block(make_config):
    """close() (or deleting the log through the Client) ends an iteration at the next entry,
    not at the end of the block it is serving."""
    config = make_config("local")
    with wp.Client(config) as client:
        log = client.create_log("stop-inside")
        with log.open_writer() as w:
            ids = w.write_batch([b"e%d" % i for i in range(100)])  # one block
        reader = log.open_reader(wp.EARLIEST)
        got = []
        for message in reader:
            got.append(message)
            if len(got) == 3:
                reader.close()
        assert [m.id for m in got] == ids[:3]
        assert reader.position == ids[3]
        with log.open_reader(wp.EARLIEST) as reader:
            got = []
            with pytest.raises(wp.LogNotFoundError, match="deleted"):
                for message in reader:
                    got.append(message)
                    if len(got) == 3:
                        client.delete_log("stop-inside")
            assert len(got) == 3


def test_reading_a_sealed_log_does_not_look_for_a_next_segment_after_every_block(
    make_config, monkeypatch
):
    """Planning the next segment ahead is one etcd round trip when there is none; it is not
    repeated for each of the last ``read_ahead`` blocks until the watch reports a change."""
    config = make_config("local", uploader_max_block_bytes="2KiB", reader_read_ahead=8)
    looked: list[int] = []
    lookup = MetaStore.next_segment_id

    def counted(self, log_id, after, **kwargs):  # type: ignore[no-untyped-def]
        looked.append(after)
        return lookup(self, log_id, after, **kwargs)

    with wp.Client(config) as client:
        log = client.create_log("one-segment")
        with log.open_writer() as w:
            for i in range(40):
                w.write(bytes(1000) + b"%d" % i)  # a block each
        assert sum(s.block_count for s in log.segments()) >= 30
        monkeypatch.setattr(MetaStore, "next_segment_id", counted)
        assert log.read_table().num_rows == 40
    assert len(looked) <= 2, f"{len(looked)} next-segment look-ups for one segment"


def test_a_tail_reader_fetches_a_new_block_on_its_own_thread(make_config, monkeypatch):
    """A waiting reader woken by one new commit fetches that block itself (no pool hand-off);
    a sealed log read from the start still fetches ahead on the pool."""
    threads: list[str] = []
    fetch = wp.LogReader._fetch

    def spied(self, records):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return fetch(self, records)

    monkeypatch.setattr(wp.LogReader, "_fetch", spied)
    with wp.Client(make_config("local", uploader_max_block_bytes="2KiB")) as client:
        log = client.create_log("inline")
        with log.open_writer() as w, log.open_reader(wp.LATEST) as reader:
            for i in range(3):
                acked = w.write(b"tail %d" % i)
                assert reader.read_next(timeout=5) == wp.LogMessage(acked, b"tail %d" % i)
            assert threads == [threading.current_thread().name] * 3
            for i in range(10):
                w.write(bytes(1500) + b"%d" % i)  # a block each
        threads.clear()
        assert log.read_table().num_rows == 13
        assert threads and all(name.startswith("wp-read-") for name in threads), threads
