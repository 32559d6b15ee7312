"""The API's contracts under real use: use after close, fork, write_batch atomicity."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

import woodpecker as wp
from woodpecker.meta import MetaStore

FORK = multiprocessing.get_context("fork")


def _new_threads(before: set[threading.Thread], wait: float = 5.0) -> list[str]:
    """Threads started since ``before`` that are still alive after up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_closed_client_refuses_every_use_and_leaves_no_thread(make_config):
    config = make_config("local")
    before = set(threading.enumerate())
    client = wp.Client(config)
    log = client.create_log("closed")
    writer = log.open_writer()
    writer.write(b"before close")
    reader = log.open_reader(wp.EARLIEST)
    assert reader.read_next(timeout=5).payload == b"before close"
    client.close()
    uses = {
        "write": lambda: writer.write(b"x", timeout=5),
        "write_async": lambda: writer.write_async(b"x"),
        "write_batch": lambda: writer.write_batch([b"x"], timeout=5),
        "flush": lambda: writer.flush(timeout=5),
        "read_next": lambda: reader.read_next(timeout=0),
        "read_batch": lambda: reader.read_batch(10, timeout=0),
        "open_writer": log.open_writer,
        "open_reader": log.open_reader,
        "read_table": log.read_table,
        "segments": log.segments,
        "truncate": lambda: log.truncate(wp.LogMessageId(0, 0)),
        "open_log": lambda: client.open_log("closed"),
        "create_log": lambda: client.create_log("other"),
        "list_logs": client.list_logs,
        "delete_log": lambda: client.delete_log("closed"),
    }
    for name, use in uses.items():
        started = time.monotonic()
        with pytest.raises(wp.ClientClosedError, match="the Client was closed"):
            use()
        assert time.monotonic() - started < 1.0, f"{name} waited"
    assert list(reader) == []  # iteration just ends, as after reader.close()
    writer.close()
    reader.close()
    client.close()  # idempotent
    assert _new_threads(before) == []  # acks, watch, lease and fetch threads all ended
    with wp.Client(config) as fresh:  # nothing was deleted or left half-written
        assert fresh.open_log("closed").read_table().column("payload").to_pylist() == [
            b"before close"
        ]


def _use_inherited(client, writer, reader, log_name, results) -> None:
    """In a forked child: every inherited object refuses at once; a new Client works."""
    out = []
    for use in (
        lambda: writer.write(b"from the child", timeout=5),
        lambda: writer.write_async(b"x"),
        lambda: writer.flush(timeout=5),
        lambda: reader.read_next(timeout=5),
        lambda: client.open_log(log_name).open_writer(),
        client.list_logs,
    ):
        started = time.monotonic()
        try:
            use()
            out.append("accepted")
        except wp.ForkedClientError as e:
            ok = "create a new Client after fork" in str(e)
            out.append("refused" if ok and time.monotonic() - started < 1 else f"slow: {e}")
        except Exception as e:
            out.append(f"{type(e).__name__}: {e}")
    writer.close()  # in the child these release nothing the parent still uses
    reader.close()
    client.close()
    with wp.Client(client.config) as fresh, fresh.open_log(log_name).open_writer() as w:
        out.append(str(w.write(b"child's own client", timeout=30)))
    results.put(out)


def test_fork_child_refuses_inherited_objects_and_parent_is_undisturbed(make_config):
    config = make_config("local")
    with wp.Client(config) as client:
        log = client.create_log("forked")
        with log.open_writer() as writer, log.open_reader(wp.EARLIEST) as reader:
            writer.write(b"parent 1")
            assert reader.read_next(timeout=5).payload == b"parent 1"
            pending = [writer.write_async(b"async %d" % i) for i in range(200)]
            results = FORK.Queue()
            child = FORK.Process(
                target=_use_inherited, args=(client, writer, reader, "forked", results)
            )
            child.start()
            out = results.get(timeout=90)
            child.join(30)
            assert child.exitcode == 0
            assert out[:6] == ["refused"] * 6, out
            # the parent's writer, its acks and its reader carry on
            assert [f.result(30) for f in pending]
            writer.write(b"parent 2", timeout=30)
            got = [reader.read_next(timeout=5).payload for _ in range(202)]
        assert sorted(got) == sorted(
            [b"child's own client", b"parent 2"] + [b"async %d" % i for i in range(200)]
        )


def _pool_worker(args: tuple) -> list[str]:
    config, name, n = args
    with wp.Client(config) as client, client.open_log(name).open_writer() as w:
        return [str(w.write(b"%s-%d" % (name.encode(), i), timeout=30)) for i in range(n)]


def test_fork_pool_workers_each_build_a_client(make_config):
    config = make_config("local")
    with wp.Client(config) as client:  # the parent holds a live Client across the fork
        names = [f"pool-{i}" for i in range(4)]
        for name in names:
            client.create_log(name)
        with client.open_log(names[0]).open_writer() as w:
            w.write(b"parent")
        with FORK.Pool(3) as pool:
            ids = pool.map(_pool_worker, [(config, name, 20) for name in names], chunksize=1)
        assert [len(i) for i in ids] == [20] * 4
        for name in names:
            payloads = client.open_log(name).read_table().column("payload").to_pylist()
            mine = [p for p in payloads if p.startswith(name.encode())]
            assert mine == [b"%s-%d" % (name.encode(), i) for i in range(20)]
        client.open_log(names[0]).open_writer().close()  # the parent's Client still works


def test_write_batches_are_never_interleaved(make_config):
    """Three writers in three threads, batches above writer.max_batch_bytes: each batch's
    ids are consecutive in one segment and lie in one block (one commit: all or nothing)."""
    config = make_config("local", writer_max_batch_bytes="256KiB", segment_max_bytes="3MiB")
    payload = b"p" * (256 * 1024)
    with wp.Client(config) as client, MetaStore(config) as meta:
        log = client.create_log("batches")
        batches: list[list[wp.LogMessageId]] = []
        errors: list[BaseException] = []

        def write(tag: int) -> None:
            try:
                with log.open_writer() as w:
                    for _ in range(4):
                        batches.append(w.write_batch([payload] * 6, timeout=60))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=write, args=(t,)) for t in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert len(batches) == 12
        blocks = {}
        for seg in meta.list_segments(log.log_id):
            for b in meta.list_blocks(log.log_id, seg.segment_id):
                for e in range(b.first_entry_id, b.first_entry_id + b.entry_count):
                    blocks[(seg.segment_id, e)] = (seg.segment_id, b.block_id)
        segments = set()
        for ids in batches:
            seg = ids[0].segment_id
            assert ids == [wp.LogMessageId(seg, ids[0].entry_id + i) for i in range(6)], ids
            assert len({blocks[i] for i in ids}) == 1, f"batch {ids} spans blocks"
            segments.add(seg)
        assert len(segments) > 1, "segments rolled (3 MiB each) between batches, never inside"


def test_write_batch_too_large_for_the_arena_writes_nothing(make_config):
    config = make_config("local", writer_arena_size="1MiB")
    with wp.Client(config) as client:
        log = client.create_log("huge-batch")
        with log.open_writer() as w:
            with pytest.raises(wp.EntryTooLargeError, match="nothing of it was written"):
                w.write_batch([b"x" * 100_000] * 11)
            w.write(b"after")
        assert log.read_table().column("payload").to_pylist() == [b"after"]
