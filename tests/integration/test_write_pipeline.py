"""The write pipeline through the public API, on both backends, against real etcd and S3."""

from __future__ import annotations

import array
import contextlib
import multiprocessing
import os
import select
import signal
import threading
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
from chaos.faultproxy import FaultProxy

import woodpecker as wp
from woodpecker import producer
from woodpecker.config import S3_LINGER_MS, Config
from woodpecker.message import LogMessageIds
from woodpecker.meta import SegmentState


def read_all(log: wp.LogHandle, expected: int, timeout: float = 30.0) -> list[wp.LogMessage]:
    out: list[wp.LogMessage] = []
    deadline = time.monotonic() + timeout
    with log.open_reader(wp.EARLIEST) as reader:
        while len(out) < expected and time.monotonic() < deadline:
            msg = reader.read_next(timeout=0.5)
            if msg is not None:
                out.append(msg)
        assert reader.read_next(timeout=0.3) is None, "more entries than were acknowledged"
    return out


def logstore_pid(config: Config) -> int:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "workers.logstore" in cmd and proc.pid != os.getpid():
            try:
                env_sock = proc.open_files()
            except psutil.Error:
                continue
            if any(str(config.logstore_lock) == f.path for f in env_sock):
                return proc.pid
    raise AssertionError("no logstore process found for this config")


def test_write_read_round_trip(make_config, backend):
    with wp.Client(make_config(backend)) as client:
        log = client.create_log("orders")
        with pytest.raises(wp.LogExistsError):
            client.create_log("orders")
        with log.open_writer() as w:
            first = w.write(b"payload-0")
            assert isinstance(first, wp.LogMessageId)
            seg, entry = first
            assert entry == 0
            fut = w.write_async(b"payload-1")
            ids = w.write_batch([b"a", b"", b"c" * 100_000])
            assert fut.result(10) == wp.LogMessageId(seg, 1)
            assert ids == [wp.LogMessageId(seg, e) for e in (2, 3, 4)]
            w.flush()
        messages = read_all(log, 5)
        assert [m.payload for m in messages] == [
            b"payload-0",
            b"payload-1",
            b"a",
            b"",
            b"c" * 100_000,
        ]
        assert [m.id for m in messages] == sorted(m.id for m in messages)
        assert client.list_logs() == ["orders"]


def test_bad_input_writes_nothing(make_config):
    config = make_config("local", writer_max_entry_size=1024)
    with wp.Client(config) as client:
        log = client.open_log("bad-input", create=True)
        with log.open_writer() as w:
            with pytest.raises(TypeError):
                w.write("not bytes")  # type: ignore[arg-type]
            with pytest.raises(wp.EntryTooLargeError):
                w.write(b"x" * 1025)
            with pytest.raises(wp.EntryTooLargeError):
                w.write_batch([b"ok", b"x" * 2048])  # nothing of the batch is written
            w.write(b"only")
        w2 = log.open_writer()
        w2.close()
        with pytest.raises(wp.WriterClosedError):
            w2.write(b"late")
        assert [m.payload for m in read_all(log, 1)] == [b"only"]
        with pytest.raises(wp.InvalidLogNameError):
            client.open_log("../etc")
        with pytest.raises(wp.LogNotFoundError):
            client.open_log("missing")


def test_size_boundaries_and_payload_types(make_config):
    """An entry of exactly writer.max_entry_size, a batch larger than writer.max_batch_bytes,
    an empty batch, a bytearray and a C-contiguous memoryview of wider items are written and
    read back byte for byte; one byte more than the entry limit, a batch larger than the arena
    and a non-contiguous memoryview are refused with a typed error, writing nothing."""
    MiB = 1 << 20
    config = make_config(
        "local",
        writer_arena_size=MiB,
        writer_max_entry_size=256 * 1024,
        writer_max_batch_bytes=256 * 1024,
    )
    limit = config.writer.max_entry_size
    with wp.Client(config) as client:
        log = client.open_log("sizes", create=True)
        with log.open_writer() as w:
            exact = w.write(b"m" * limit)
            with pytest.raises(wp.EntryTooLargeError, match=f"max_entry_size={limit}"):
                w.write(b"m" * (limit + 1))
            assert w.write_batch([]) == []
            with pytest.raises(wp.EntryTooLargeError, match="does not fit the shared-memory arena"):
                w.write_batch([bytes([i]) * limit for i in range(5)])  # 1.25 MiB, arena 1 MiB
            big = [bytes([i]) * (200 * 1024) for i in range(3)]  # past max_batch_bytes
            ids = w.write_batch(big)
            wide = array.array("i", range(1000))
            typed = [w.write(bytearray(b"from a bytearray")), w.write(memoryview(wide))]
            with pytest.raises(TypeError, match="C-contiguous"):
                w.write(memoryview(b"abcdef")[::2])
        assert [(i.segment_id, i.entry_id) for i in ids] == [
            (ids[0].segment_id, ids[0].entry_id + k) for k in range(3)
        ]
        messages = read_all(log, 1 + len(big) + 2)
    assert [m.id for m in messages] == [exact, *ids, *typed]
    assert [m.payload for m in messages] == [
        b"m" * limit,
        *big,
        b"from a bytearray",
        wide.tobytes(),
    ]


def test_many_threads_one_log(make_config, backend):
    threads, per_thread = 4, 300
    with wp.Client(make_config(backend)) as client:
        log = client.create_log("threads")
        with log.open_writer() as w:

            def produce(t: int) -> None:
                futures = [w.write_async(f"{t}:{i}".encode()) for i in range(per_thread)]
                ids = [f.result(30) for f in futures]
                assert ids == sorted(ids), "a producer's own appends must keep their order"

            workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
        messages = read_all(log, threads * per_thread)
    assert len(messages) == threads * per_thread
    for t in range(threads):
        mine = [m.payload for m in messages if m.payload.startswith(f"{t}:".encode())]
        assert mine == [f"{t}:{i}".encode() for i in range(per_thread)]


def _producer_process(config: Config, name: str, tag: int, count: int) -> None:
    with wp.Client(config) as client:
        log = client.open_log(name)
        with log.open_writer() as w:
            for start in range(0, count, 50):
                w.write_batch([f"{tag}:{i}".encode() for i in range(start, start + 50)])


def test_many_processes_one_log(make_config, backend):
    config = make_config(backend)
    procs, per_proc = 3, 500
    with wp.Client(config) as client:
        log = client.create_log("procs")
        ctx = multiprocessing.get_context("spawn")
        children = [
            ctx.Process(target=_producer_process, args=(config, "procs", p, per_proc))
            for p in range(procs)
        ]
        for c in children:
            c.start()
        for c in children:
            c.join(120)
            assert c.exitcode == 0
        messages = read_all(log, procs * per_proc)
    for p in range(procs):
        mine = [m.payload for m in messages if m.payload.startswith(f"{p}:".encode())]
        assert mine == [f"{p}:{i}".encode() for i in range(per_proc)]


def test_segments_roll_on_size(make_config, backend):
    config = make_config(backend, segment_max_bytes="8KiB", uploader_max_block_bytes="2KiB")
    with wp.Client(config) as client:
        log = client.create_log("rolling")
        with log.open_writer() as w:
            ids = [w.write(os.urandom(1000)) for _ in range(40)]
        assert len({i.segment_id for i in ids}) >= 3
        deadline = time.monotonic() + 10  # the last writer's close seals asynchronously
        while time.monotonic() < deadline:
            segments = log.segments()
            if all(s.state == SegmentState.SEALED for s in segments):
                break
            time.sleep(0.05)
        assert len(segments) >= 3
        assert [s.state for s in segments] == [SegmentState.SEALED] * len(segments)
        messages = read_all(log, 40)
        assert [m.id for m in messages] == ids


def test_local_blocks_go_to_one_append_file_per_segment(make_config, backend):
    """On the local backend each block is appended (one fdatasync) to its uploader's file
    of the segment, at the offset its record names; on S3 each block is an object."""
    config = make_config(backend, uploader_processes=1)
    with wp.Client(config) as client:
        log = client.create_log("appended")
        with log.open_writer() as w:
            ids = [w.write(b"entry-%d" % i) for i in range(6)]
        blocks = client.meta_store().list_blocks(log.log_id, ids[0].segment_id)
        assert len(blocks) == 6  # one synchronous write, one block
        keys = {b.key for b in blocks}
        if backend == "local":
            assert len(keys) == 1 and blocks[0].key.endswith(".arrows")
            ends = [b.offset + b.length for b in blocks]
            assert [b.offset for b in blocks] == [0, *ends[:-1]]
            segment_dir = Path(config.storage.root) / "data" / str(log.log_id) / "0"
            assert [p.name for p in segment_dir.iterdir()] == [blocks[0].key.rsplit("/", 1)[1]]
        else:
            assert len(keys) == 6 and all(b.offset == 0 for b in blocks)
        assert [m.payload for m in read_all(log, 6)] == [b"entry-%d" % i for i in range(6)]


def test_linger_gathers_small_appends_into_few_blocks(make_config, backend, unique):
    """uploader.linger_ms trades ack latency for fewer, larger objects (billed PUTs)."""
    entries = [f"small entry {i}".encode() for i in range(50)]
    blocks, sync_ack = {}, {}
    for linger_ms in (0.0, 500.0):
        config = make_config(
            backend,
            writer_linger_ms=0.0,
            uploader_linger_ms=linger_ms,
            logstore_socket=f"/tmp/wp-test-{unique}/linger-{linger_ms:.0f}.sock",
        )
        with wp.Client(config) as client:
            log = client.create_log(f"linger-{linger_ms:.0f}")
            with log.open_writer() as w:
                ids = [w.write(entries[0])]  # launches the logstore
                start = time.monotonic()
                ids += [w.write(e) for e in entries[1:5]]  # one at a time
                sync_ack[linger_ms] = (time.monotonic() - start) / 4
                futures = [w.write_async(e) for e in entries[5:]]  # all at once
                ids += [f.result(30) for f in futures]
            assert [m.payload for m in read_all(log, 50)] == entries
            assert [m.id for m in read_all(log, 50)] == ids
            blocks[linger_ms] = sum(s.block_count for s in log.segments())
    print(f"blocks for 50 entries by uploader.linger_ms: {blocks}; sync write ack {sync_ack}")
    assert blocks[0.0] >= 6, blocks  # each sync write is a block of its own
    assert sync_ack[500.0] >= 0.45, "a lone block did not linger"
    assert blocks[500.0] <= 6, blocks


def test_s3_default_linger_gathers_paced_appends_into_few_blocks(make_config, unique):
    """On S3 the default uploader.linger_ms lets blocks fill (fewer billed PUTs); the local
    backend and an explicit 0 send each block as soon as an upload slot is free."""
    blocks = {}
    for setting in ("s3 default", "0"):
        built = make_config("s3", logstore_socket=f"/tmp/wp-test-{unique}/{setting[0]}.sock")
        overrides = built.overrides()
        if setting == "s3 default":
            del overrides["uploader_linger_ms"]  # the fixture's latency-first 0
        config = Config(env={}, **overrides)
        expected = S3_LINGER_MS if setting == "s3 default" else 0.0
        assert config.uploader.linger_ms == expected
        with wp.Client(config) as client:
            log = client.create_log(f"paced-{setting[0]}")
            with log.open_writer() as w:
                w.write(b"first")  # launches the logstore
                futures = []
                for i in range(30):  # 50 appends per second for 0.6 s
                    futures.append(w.write_async(f"entry {i}".encode()))
                    time.sleep(0.02)
                for f in futures:
                    f.result(30)
            blocks[setting] = sum(s.block_count for s in log.segments())
    print(f"blocks for 31 paced entries on S3: {blocks}")
    assert blocks["s3 default"] <= 5, blocks  # ~0.6 s / 0.25 s, the first write and the flush
    assert blocks["0"] >= 10, blocks  # about one block per append
    assert Config(env={}).uploader.linger_ms == 0.0  # local keeps its low-latency default


def test_new_logstore_fences_old_one(make_config, backend, tmp_path: Path, unique: str):
    first = make_config(backend)
    second = make_config(backend, logstore_socket=f"/tmp/wp-test-{unique}/other.sock")
    with wp.Client(first) as a, wp.Client(second) as b:
        log_a = a.create_log("fenced")
        w_a = log_a.open_writer()
        acked = w_a.write(b"before")
        w_b = b.open_log("fenced").open_writer()  # another logstore: fences the first
        after_b = w_b.write(b"from-b")
        with pytest.raises(wp.WriterFencedError):
            w_a.write(b"from-fenced-writer")
        with pytest.raises(wp.WriterFencedError):
            w_a.write(b"still-fenced")
        w_b.close()
        w_a.close()
        payloads = [m.payload for m in read_all(log_a, 2)]
        assert payloads == [b"before", b"from-b"]
        assert after_b.segment_id > acked.segment_id


def test_logstore_killed_then_recovered(make_config, backend):
    config = make_config(backend)
    with wp.Client(config) as client:
        log = client.create_log("crash")
        w = log.open_writer()
        acked = [w.write(f"e{i}".encode()) for i in range(20)]
        pid = logstore_pid(config)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(wp.LogstoreUnavailableError):
            for i in range(1000):  # fails promptly, never hangs
                w.write(f"late{i}".encode(), timeout=30)
        # a new writer relaunches the logstore, recovers and continues
        with log.open_writer() as w2:
            more = w2.write(b"after-crash")
        assert more.segment_id > acked[-1].segment_id
        payloads = [m.payload for m in read_all(log, 21, timeout=30)]
        # every acknowledged entry is there, in order; unacked ones may or may not be
        assert payloads[:20] == [f"e{i}".encode() for i in range(20)]
        assert payloads[-1] == b"after-crash"


def test_backend_down_fails_appends(make_config, services):
    host, port = services["WOODPECKER_S3_ENDPOINT"].split(":")
    with FaultProxy(host, int(port)) as proxy:
        config = make_config("s3", s3_endpoint=proxy.endpoint, retry_deadline=1.0, s3_timeout=0.5)
        with wp.Client(config) as client:
            log = client.create_log("no-backend")  # claims the deployment: S3 still answers
            with log.open_writer() as w, pytest.raises(wp.StorageUnavailableError):
                proxy.set(refuse=True)
                proxy.reset_all()
                w.write(b"never durable", timeout=30)
            with log.open_reader(wp.EARLIEST) as r:
                assert r.read_next(timeout=0.5) is None


def test_backend_down_fails_before_writing(make_config):
    """The deployment's claim lives in storage too: a writing client whose backend is
    down fails (typed, within the retry deadline) before it changes anything."""
    config = make_config("s3", s3_endpoint="127.0.0.1:1", retry_deadline=1.0, s3_timeout=0.5)
    with wp.Client(config) as client:
        with pytest.raises(wp.StorageUnavailableError):
            client.create_log("no-backend")
        assert client.list_logs() == []


def _arena_fds() -> list[str]:
    """memfd arenas held by this process and everything it started (logstores, uploaders)."""
    me = psutil.Process()
    held = []
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                    if target.startswith("/memfd:woodpecker"):
                        held.append(f"{proc.pid}:{target}")
    return held


def test_no_shared_memory_leak_after_kill(make_config):
    before = {p.name for p in Path("/dev/shm").iterdir()}
    test_logstore_killed_then_recovered(make_config, "local")
    # the client is closed: once the relaunched logstore idles out, no arena may remain
    deadline = time.monotonic() + 20
    while _arena_fds() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _arena_fds() == []
    after = {p.name for p in Path("/dev/shm").iterdir()}
    assert not [n for n in after - before if "woodpecker" in n]


def _uploader_pids(logstore: int) -> list[int]:
    return [
        c.pid
        for c in psutil.Process(logstore).children()
        if "workers.uploader" in " ".join(c.cmdline())
    ]


def test_uploader_killed_is_restarted(make_config, backend):
    config = make_config(backend)
    with wp.Client(config) as client:
        log = client.create_log("uploader-crash")
        with log.open_writer() as w:
            w.write(b"warm-up")
            store_pid = logstore_pid(config)
            futures = [w.write_async(f"e{i}".encode()) for i in range(2000)]
            for pid in _uploader_pids(store_pid):
                os.kill(pid, signal.SIGKILL)
            futures += [w.write_async(f"f{i}".encode()) for i in range(2000)]
            ids = [f.result(60) for f in futures]
        assert ids == sorted(ids)
        deadline = time.monotonic() + 10
        while len(_uploader_pids(store_pid)) < config.uploader.processes:
            assert time.monotonic() < deadline, "uploaders were not restarted"
            time.sleep(0.1)
        payloads = [m.payload for m in read_all(log, 4001)]
    expected = [b"warm-up"] + [f"e{i}".encode() for i in range(2000)]
    assert payloads == expected + [f"f{i}".encode() for i in range(2000)]


def test_sigterm_drains_and_exits(make_config):
    """SIGTERM while the logstore holds appends: those it had accepted are still uploaded,
    committed and acked (the drain), every other one fails (none hangs), and every segment
    ends SEALED. The uploaders are paused meanwhile, so the appends are surely in flight."""
    config = make_config("local")
    with wp.Client(config) as client:
        log = client.create_log("sigterm")
        w = log.open_writer()
        w.write(b"warm-up")
        pid = logstore_pid(config)
        uploaders = psutil.Process(pid).children()
        assert uploaders
        for up in uploaders:
            up.suspend()
        try:
            futures = [w.write_async(b"%06d" % i * 1000) for i in range(200)]
            time.sleep(0.3)  # the producer's in-flight batches reached the logstore
            assert not any(f.done() for f in futures)
            os.kill(pid, signal.SIGTERM)
            time.sleep(0.2)
        finally:
            for up in uploaders:
                up.resume()
        acked = []
        for f in futures:  # every pending append is acked or fails, none hangs
            with contextlib.suppress(wp.WoodpeckerError):
                acked.append(f.result(60))
        psutil.Process(pid).wait(30)
        assert not config.logstore_socket.exists()
        assert acked, "the logstore acked nothing of what it held at the SIGTERM"
        readable = {m.id for m in read_all(log, 1 + len(acked))}
        assert set(acked) <= readable
        states = [s.state for s in log.segments()]
        assert states and all(s is SegmentState.SEALED for s in states), states


def test_appends_in_flight_when_the_client_closes_are_an_unknown_outcome(make_config):
    """Closing a Client does not stop its logstore: what it was sent may still be committed.
    Such appends fail with an OutcomeUnknownError, never a NotWrittenError, and do become
    readable; only appends never sent fail with ClientClosedError (not written)."""
    config = make_config("local", writer_max_inflight_batches=1, writer_linger_ms=60_000)
    client = wp.Client(config)
    log = client.create_log("closed-in-flight")
    w = log.open_writer()
    w.write(b"warm-up")
    uploaders = psutil.Process(logstore_pid(config)).children()
    for up in uploaders:
        up.suspend()
    try:
        futures = [w.write_async(b"%06d" % i) for i in range(200)]
        time.sleep(0.3)  # the first batch reached the logstore; the rest wait to be sent
        client.close()
    finally:
        for up in uploaders:
            up.resume()
    outcomes = {b"%06d" % i: f.exception(10) for i, f in enumerate(futures)}
    unknown = {p for p, e in outcomes.items() if isinstance(e, wp.OutcomeUnknownError)}
    unsent = {p for p, e in outcomes.items() if isinstance(e, wp.ClientClosedError)}
    assert unknown and unsent and len(unknown) + len(unsent) == len(futures)
    with wp.Client(config) as fresh:
        readable = {
            m.payload for m in read_all(fresh.open_log("closed-in-flight"), 1 + len(unknown))
        }
    assert readable - {b"warm-up"} == unknown  # the logstore committed every one it was sent


def test_full_arena_applies_backpressure_then_times_out(make_config, services):
    host, port = services["WOODPECKER_S3_ENDPOINT"].split(":")
    with FaultProxy(host, int(port)) as proxy:
        config = make_config(
            "s3",
            s3_endpoint=proxy.endpoint,
            s3_timeout=3.0,
            retry_deadline=4.0,
            writer_arena_size="1MiB",
            writer_append_timeout=0.5,
        )
        with wp.Client(config) as client:
            log = client.create_log("backpressure")  # claims the deployment: S3 still answers
            with log.open_writer() as w:
                # S3 now accepts connections and never answers: uploads stall
                proxy.set(blackhole=True)
                futures = []
                start = time.monotonic()
                with pytest.raises(wp.BackpressureTimeout):
                    for _ in range(100):
                        futures.append(w.write_async(b"b" * 100_000))
                assert time.monotonic() - start < 10
                for f in futures:  # nothing is acked that is not durable
                    with pytest.raises(wp.StorageUnavailableError):
                        f.result(30)


def test_large_block_uses_parallel_multipart(make_config, backend):
    config = make_config(backend, uploader_multipart_threshold="5MiB", uploader_part_size="5MiB")
    big = os.urandom(12 * 1024 * 1024)  # one block of 12 MiB: three parts
    with wp.Client(config) as client:
        log = client.create_log("multipart")
        with log.open_writer() as w:
            mid = w.write(big)
            small = w.write(b"after")
        blocks = client.meta_store().list_blocks(log.log_id, mid.segment_id)
        assert blocks[0].size > 12 * 1024 * 1024
        messages = read_all(log, 2)
    assert messages[0].payload == big
    assert [m.id for m in messages] == [mid, small]


def test_payload_any_c_contiguous_buffer(make_config):
    np = pytest.importorskip("numpy", reason="numpy is a dev dependency (pip install -e '.[dev]')")
    import array

    config = make_config("local")
    with wp.Client(config) as client:
        log = client.open_log("buffers", create=True)
        matrix = np.arange(12, dtype=np.int32).reshape(3, 4)
        reused = bytearray(b"first")
        payloads = [
            np.arange(5, dtype=np.float64),
            matrix,
            np.float32(1.5),
            array.array("h", [1, -2, 3]),
            memoryview(matrix.tobytes()).cast("B", (6, 8)),  # a 2-D byte view
        ]
        with log.open_writer() as w:
            w.write(payloads[0])
            w.write_batch(payloads[1:3])
            fut = w.write_async(reused)
            reused[:] = b"later"  # reusing a buffer after the call never changes the entry
            w.write_async(payloads[3]).result(10)
            w.write(payloads[4])
            assert fut.result(10)
            for bad, name in [("text", "str"), (7, "int"), ([b"a"], "list"), (None, "NoneType")]:
                with pytest.raises(TypeError, match=f"not {name}$"):
                    w.write(bad)  # type: ignore[arg-type]
                with pytest.raises(TypeError, match=f"not {name}$"):
                    w.write_batch([b"ok", bad])  # type: ignore[list-item]
            with pytest.raises(TypeError, match="ndarray payload must be C-contiguous"):
                w.write(np.arange(10)[::2])
            with pytest.raises(TypeError, match="ndarray payload must be C-contiguous"):
                w.write_batch([b"ok", matrix.T])
        got = [m.payload for m in read_all(log, 6)]
        assert got[:3] == [payloads[0].tobytes(), matrix.tobytes(), payloads[2].tobytes()]
        assert got[3] == b"first"
        assert got[4:] == [payloads[3].tobytes(), matrix.tobytes()]


def test_write_batch_ids_are_one_range_until_read(make_config):
    """A write_batch's ids come back as (segment, range): exact, in order, built when read."""
    with wp.Client(make_config("local")) as client:
        log = client.open_log("lazy-ids", create=True)
        with log.open_writer() as w:
            before = w.write(b"before")
            ids = w.write_batch([b"entry %d" % i for i in range(1000)])
            after = w.write(b"after")
        assert isinstance(ids, LogMessageIds)
        assert ids.segment_id == before.segment_id
        assert ids.entry_ids == range(before.entry_id + 1, before.entry_id + 1001)
        assert (after.segment_id, after.entry_id) > (ids[-1].segment_id, ids[-1].entry_id)
        read = read_all(log, 1002)
        assert [m.id for m in read[1:-1]] == ids
        assert [m.payload for m in read[1:-1]] == [b"entry %d" % i for i in range(1000)]


class CountingRLock:
    """An RLock that counts its acquisitions per thread name (Condition-compatible)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.by_thread: Counter[str] = Counter()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if got:
            self.by_thread[threading.current_thread().name] += 1
        return got

    __enter__ = acquire

    def release(self) -> None:
        self._lock.release()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def _is_owned(self) -> bool:
        return self._lock._is_owned()  # type: ignore[attr-defined]

    def _release_save(self) -> Any:
        return self._lock._release_save()  # type: ignore[attr-defined]

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]
        self.by_thread[threading.current_thread().name] += 1


def test_ack_thread_resolves_each_pass_of_batches_in_one_lock_round_trip(make_config, monkeypatch):
    """Thousands of write_async appends sealed in a few batches: the ack thread takes the
    link's lock once per pass (however many appends the pass resolves), and every future
    still gets its exact id, in order."""
    lock = CountingRLock()
    monkeypatch.setattr(producer, "threading", types.SimpleNamespace(**{
        **vars(threading), "RLock": lambda: lock
    }))  # fmt: skip
    passes: Counter[str] = Counter()

    def counted_select(*args: Any) -> Any:
        passes[threading.current_thread().name] += 1
        return select.select(*args)

    monkeypatch.setattr(producer, "select", types.SimpleNamespace(select=counted_select))
    sealed = []
    encode = producer.write_batch_message
    monkeypatch.setattr(
        producer, "write_batch_message", lambda p, into: sealed.append(len(p)) or encode(p, into)
    )
    config = make_config("local", writer_max_inflight_batches=1)
    with wp.Client(config) as client:
        log = client.open_log("one-lock-per-batch", create=True)
        with log.open_writer() as w:
            first = w.write(b"warm-up")
            acks = "woodpecker-acks"
            locks_before, passes_before, sealed_before = (
                lock.by_thread[acks],
                passes[acks],
                len(sealed),
            )
            futures = [w.write_async(b"x" * 100) for _ in range(3000)]
            w.flush()
            locks = lock.by_thread[acks] - locks_before
            ack_passes = passes[acks] - passes_before
            batches = len(sealed) - sealed_before
        ids = [f.result() for f in futures]
    assert sum(sealed[sealed_before:]) == 3000 and batches < 300, sealed
    assert ids == [wp.LogMessageId(first.segment_id, first.entry_id + 1 + i) for i in range(3000)]
    assert locks <= ack_passes, (
        f"{locks} lock round trips in {ack_passes} passes ({batches} batches)"
    )
