"""Truncation, retention, garbage collection and compaction against the real etcd and S3."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import woodpecker as wp
from woodpecker.config import Config
from woodpecker.format import checksum, decode_block, decode_messages, encode_block
from woodpecker.meta import BlockRecord, MetaStore, SegmentIndex, SegmentState
from woodpecker.meta.lifecycle import Lifecycle
from woodpecker.reader import LogReader
from woodpecker.storage import ObjectStore, open_store
from workers.maintenance import ActionKind, Maintenance

HOUR = 3600.0


@dataclass
class Env:
    config: Config
    meta: MetaStore
    store: ObjectStore

    def maintenance(self) -> Maintenance:
        return Maintenance(self.config, self.meta, self.store)

    def objects(self, log_id: int) -> list[str]:
        return [info.key for info in self.store.list(f"{log_id}/")]


@pytest.fixture
def env_factory(make_config) -> Iterator:
    opened: list[Env] = []

    def build(backend: str, **overrides: object) -> Env:
        config = make_config(backend, **overrides)
        env = Env(config, MetaStore(config), open_store(config))
        opened.append(env)
        return env

    yield build
    for env in opened:
        env.meta.etcd.call("cleanup", lambda c, e=env: c.delete_prefix(e.meta.keys.root + "/"))
        env.meta.close()
        env.store.close()


class CountingGets:
    """An ObjectStore proxy that counts GET requests."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self.count = 0

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self.count += 1
        return self._store.get(key, offset, length)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def payload(log_id: int, segment: int, entry: int, size: int) -> bytes:
    return f"{log_id}:{segment}:{entry}:".encode().ljust(size, b"x")


def seed(
    env: Env,
    name: str,
    *,
    segments: int = 3,
    blocks: int = 2,
    entries: int = 3,
    size: int = 100,
    seal_last: bool = True,
) -> int:
    """A log written the way the pipeline writes it: durable objects, then a fenced commit."""
    log_id = env.meta.create_log(name).log_id
    with env.meta.acquire_writer(log_id, "seed") as session:
        for seg in range(segments):
            session.create_segment(seg)
            records, total = [], 0
            for b in range(blocks):
                data = encode_block(
                    [payload(log_id, seg, b * entries + i, size) for i in range(entries)]
                )
                key = f"{log_id}/{seg}/{b}.arrow"
                env.store.put(key, data)
                total += len(data)
                records.append(
                    BlockRecord(
                        log_id=log_id,
                        segment_id=seg,
                        block_id=b,
                        first_entry_id=b * entries,
                        entry_count=entries,
                        size=len(data),
                        key=key,
                        offset=0,
                        length=len(data),
                        checksum=checksum([data]),
                    )
                )
            for i in range(0, blocks, 127):  # etcd takes at most 128 operations per txn
                chunk = records[i : i + 127]
                session.commit(seg, chunk, chunk[-1].last_entry_id, total)
            if seg < segments - 1 or seal_last:
                session.seal_segment(seg)
    return log_id


def committed(env: Env, log_id: int) -> dict[tuple[int, int], bytes]:
    """Every committed entry, read through the metadata and verified by its block checksum."""
    out = {}
    for seg in env.meta.list_segments(log_id):
        for b in env.meta.list_blocks(log_id, seg.segment_id):
            decode = decode_messages if b.messages_only else decode_block
            table = decode(
                env.store.get(b.key, b.offset, b.length),
                expected_checksum=b.checksum,
                expected_entries=b.entry_count,
            )
            for i, p in enumerate(table.column("payload").to_pylist()):
                out[(seg.segment_id, b.first_entry_id + i)] = p
    return out


def expected(log_id: int, segments: range, entries: int, size: int = 100) -> dict:
    return {(s, e): payload(log_id, s, e, size) for s in segments for e in range(entries)}


# ---- truncation --------------------------------------------------------------------


def test_truncate_is_a_forward_only_cas_and_rejects_uncommitted_positions(make_config, env_factory):
    env = env_factory("local")
    log_id = seed(env, "trunc", segments=2, blocks=2, entries=3, seal_last=False)
    with wp.Client(make_config("local")) as client:
        log = client.open_log("trunc")
        assert log.truncation_point() is None
        key = env.meta.keys.truncation(log_id)

        def stored() -> tuple[bytes, int] | None:
            kv = env.meta.etcd.get("test", key)
            return None if kv is None else (kv[0], kv[1].mod_revision)

        for bad in [
            wp.LogMessageId(1, 6),  # past the LAC of the ACTIVE segment 1 (lac 5)
            wp.LogMessageId(0, 99),  # past the LAC of a sealed segment
            wp.LogMessageId(7, 0),  # a segment that does not exist
            wp.LogMessageId(-1, 0),
        ]:
            with pytest.raises(wp.InvalidPositionError) as info:
                log.truncate(bad)
            assert isinstance(info.value, ValueError)
            assert stored() is None, "a rejected truncation wrote nothing"

        assert log.truncate(wp.LogMessageId(0, 4)) == wp.LogMessageId(0, 4)
        before = stored()
        assert log.truncate(wp.LogMessageId(0, 2)) == wp.LogMessageId(0, 4)  # backwards: no-op
        assert log.truncate(wp.LogMessageId(0, 4)) == wp.LogMessageId(0, 4)
        assert stored() == before
        with pytest.raises(wp.InvalidPositionError, match="past the committed end"):
            log.truncate(wp.LogMessageId(1, 6))
        assert stored() == before
        assert log.truncate(wp.LogMessageId(1, 5)) == wp.LogMessageId(1, 5)  # up to the LAC
        assert log.truncation_point() == wp.LogMessageId(1, 5)

        # concurrent truncations: the point only moves forward and ends at the maximum
        env.meta.etcd.call("test", lambda c: c.delete(key))
        targets = [wp.LogMessageId(s, e) for s in (0, 1) for e in range(6)]
        threads = [threading.Thread(target=log.truncate, args=(t,)) for t in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert log.truncation_point() == max(targets)

        with pytest.raises(TypeError):
            log.truncate((1, 0))  # type: ignore[arg-type]
        client.delete_log("trunc")
        with pytest.raises(wp.LogNotFoundError):
            Lifecycle(env.meta).truncate(log_id, "trunc", 1, 5)
        assert stored() is None, "a deleted log never gets its truncation key back"


# ---- retention -------------------------------------------------------------------------


def test_retention_waits_for_ttl_readers_and_grace(env_factory, backend):
    env = env_factory(backend, retention_ttl=HOUR, retention_orphan_grace=60.0)
    log_id = seed(env, "ret", segments=4, blocks=2, entries=3)
    old_objects = set(env.objects(log_id))
    # segments 0 and 2 as quorum segments: a flush cursor and a flush claim each
    cursors = {s: env.meta.keys.flush_cursor(log_id, s) for s in (0, 2)}
    claims = {s: env.meta.keys.flusher(log_id, s) for s in (0, 2)}
    for key in [*cursors.values(), *claims.values()]:
        env.meta.etcd.call("test", lambda c, k=key: c.put(k, b"{}"))
    Lifecycle(env.meta).truncate(log_id, "ret", 2, 1)
    now = time.time()
    m = env.maintenance()

    report = m.run_once(now)
    assert [a.segment_id for a in report.of(ActionKind.TRUNCATE)] == [0, 1]
    states = [s.state for s in env.meta.list_segments(log_id)]
    assert states == [SegmentState.TRUNCATED] * 2 + [SegmentState.SEALED] * 2
    assert not report.of(ActionKind.DELETE_SEGMENT), "retention.ttl has not passed"

    # a registration GC cannot parse holds the whole log
    lease = env.meta.etcd.call("test", lambda c: c.lease(30))
    garbage = env.meta.keys.reader(log_id, "garbage")
    env.meta.etcd.call("test", lambda c: c.put(garbage, b"{not json", lease=lease.id))
    report = m.run_once(now + HOUR + 1)
    assert not report.of(ActionKind.DELETE_SEGMENT) and "retention" in report.errors[0]
    env.meta.etcd.call("test", lambda c: c.revoke_lease(lease.id))

    # an open reader at segment 1 holds segments 1 and later, not segment 0
    with wp.Client(env.config) as client:
        reader = client.open_log("ret").open_reader(wp.LogMessageId(1, 2), name="slow")
        dry = m.run_once(now + HOUR + 1, dry_run=True)
        assert [a.segment_id for a in dry.of(ActionKind.DELETE_SEGMENT)] == [0]
        assert len(env.meta.list_segments(log_id)) == 4, "a dry run changes nothing"
        report = m.run_once(now + HOUR + 1)
        assert [a.segment_id for a in report.of(ActionKind.DELETE_SEGMENT)] == [0]
        # a deleted segment's flush cursor and claim go with it; a kept one's stay
        assert env.meta.etcd.get("test", cursors[0]) is None
        assert env.meta.etcd.get("test", claims[0]) is None
        assert env.meta.etcd.get("test", cursors[2]) is not None
        assert env.meta.etcd.get("test", claims[2]) is not None
        assert [a.segment_id for a in report.of(ActionKind.HOLD)] == [1]
        assert report.of(ActionKind.HOLD)[0].reason == "reader 'slow' is at 1:2"
        assert reader.read_next(timeout=5).payload == payload(log_id, 1, 2, 100)
        reader.close()  # its registration goes with it

    report = m.run_once(now + HOUR + 2)
    assert [a.segment_id for a in report.of(ActionKind.DELETE_SEGMENT)] == [1]
    assert [s.segment_id for s in env.meta.list_segments(log_id)] == [2, 3]
    # metadata is gone, the objects outlive it by the grace for readers holding old records
    assert set(env.objects(log_id)) == old_objects
    assert not report.of(ActionKind.DELETE_OBJECTS) and not report.of(ActionKind.DELETE_ORPHANS)
    # what waits is reported (gc --dry-run shows it): how many objects, when due, why
    waiting = sorted((w.reason, w.objects, round(w.due - now)) for w in report.waiting)
    assert waiting == [
        ("segment 0 retention", 2, HOUR + 1 + 60),
        ("segment 1 retention", 2, HOUR + 2 + 60),
    ]

    report = m.run_once(now + HOUR + 2 + 61)
    gone = set(report.keys(ActionKind.DELETE_OBJECTS))
    assert gone == {f"{log_id}/{s}/{b}.arrow" for s in (0, 1) for b in (0, 1)}
    assert set(env.objects(log_id)) == old_objects - gone
    assert Lifecycle(env.meta).pending_deletions() == []
    # the segment holding the truncation point and everything after it are intact
    assert committed(env, log_id) == expected(log_id, range(2, 4), 6)
    assert m.run_once(now + 10 * HOUR).actions == []


def test_active_segment_and_truncation_segment_are_never_deleted(env_factory):
    env = env_factory("local", retention_ttl=0.0, retention_orphan_grace=0.0)
    log_id = seed(env, "active", segments=3, blocks=1, entries=2, seal_last=False)
    # segment 0 as a crashed writer leaves it: ACTIVE although later segments exist
    seg0 = env.meta.get_segment(log_id, 0)
    active = dataclasses.replace(seg0, state=SegmentState.ACTIVE, sealed_ms=None)
    key = env.meta.keys.segment(log_id, 0)
    env.meta.etcd.call("test", lambda c: c.put(key, active.to_bytes()))
    Lifecycle(env.meta).truncate(log_id, "active", 2, 1)  # the whole of segment 2 (ACTIVE)

    report = env.maintenance().run_once(time.time() + 10 * HOUR)
    segments = {s.segment_id: s.state for s in env.meta.list_segments(log_id)}
    assert segments == {0: SegmentState.ACTIVE, 2: SegmentState.ACTIVE}
    assert [a.segment_id for a in report.of(ActionKind.DELETE_SEGMENT)] == [1]
    assert committed(env, log_id) == {
        **expected(log_id, range(0, 1), 2),
        **expected(log_id, range(2, 3), 2),
    }


# ---- orphans ---------------------------------------------------------------------------


def test_orphans_and_deleted_logs_are_swept_after_the_grace(make_config, env_factory, backend):
    env = env_factory(backend, retention_orphan_grace=HOUR)
    log_id = seed(env, "kept", segments=2, blocks=2, entries=2)
    gone_id = seed(env, "deleted", segments=1, blocks=2, entries=2)
    referenced = set(env.objects(log_id))
    orphan = f"{log_id}/1/2.arrow"  # a crashed or fenced writer's upload, never committed
    env.store.put(orphan, b"uncommitted")
    not_ours = ["notalog/x.arrow", "007/x.arrow", "README"]
    for key in not_ours:
        env.store.put(key, b"someone else's")
    with wp.Client(make_config(backend)) as client:
        client.delete_log("deleted")  # metadata now, objects in the background
    m = env.maintenance()
    now = time.time()

    assert m.run_once(now).of(ActionKind.DELETE_ORPHANS) == [], "younger than the grace"
    dry = m.run_once(now + HOUR + 1, dry_run=True)
    assert set(dry.keys(ActionKind.DELETE_ORPHANS)) == {orphan, *env.objects(gone_id)}
    assert orphan in env.objects(log_id)

    report = m.run_once(now + HOUR + 1)
    reasons = {a.log_id: a.reason for a in report.of(ActionKind.DELETE_ORPHANS)}
    assert "deleted log" in reasons[gone_id] and "unreferenced" in reasons[log_id]
    assert env.objects(gone_id) == []
    assert set(env.objects(log_id)) == referenced
    for key in not_ours:
        assert env.store.get(key) == b"someone else's"
    assert committed(env, log_id) == expected(log_id, range(2), 4)


def test_abandoned_multipart_uploads_are_aborted_after_the_grace(env_factory, backend):
    """An uploader killed mid multipart upload leaves its parts behind (billed storage)."""
    env = env_factory(backend, retention_orphan_grace=HOUR)
    log_id = seed(env, "kept", segments=1, blocks=1, entries=1)
    abandoned = env.store.create_multipart(f"{log_id}/5/0-e9.arrow")
    env.store.upload_part(f"{log_id}/5/0-e9.arrow", abandoned, 1, b"left by kill -9")
    foreign = env.store.create_multipart("someone/else.bin")
    m = env.maintenance()
    now = time.time()
    try:
        assert m.run_once(now).of(ActionKind.ABORT_UPLOADS) == [], "younger than the grace"
        dry = m.run_once(now + HOUR + 1, dry_run=True)
        assert dry.keys(ActionKind.ABORT_UPLOADS) == [f"{log_id}/5/0-e9.arrow"]
        assert len(list(env.store.list_multipart())) == 2
        report = m.run_once(now + HOUR + 1)
        assert [a.log_id for a in report.of(ActionKind.ABORT_UPLOADS)] == [log_id]
        assert [u.upload_id for u in env.store.list_multipart()] == [foreign]
        assert committed(env, log_id) == expected(log_id, range(1), 1)
    finally:
        env.store.abort_multipart("someone/else.bin", foreign)


# ---- compaction ------------------------------------------------------------------------


def keys_under(env: Env, prefix: str) -> int:
    kvs = env.meta.etcd.scan("test", prefix, keys_only=True)
    return len(kvs)


def test_compaction_merges_small_blocks_and_old_readers_keep_working(env_factory, backend):
    env = env_factory(
        backend,
        compaction_target_bytes="16KiB",
        compaction_chunk_bytes="4KiB",
        compaction_min_blocks=4,
        retention_orphan_grace=60.0,
    )
    blocks, entries, size = 48, 4, 250
    log_id = seed(env, "compact", segments=2, blocks=blocks, entries=entries, size=size)
    seg_bytes = sum(b.length for b in env.meta.list_blocks(log_id, 0))
    old_records = env.meta.list_blocks(log_id, 0)
    before = len({b.key for b in old_records})
    now = time.time()
    m = env.maintenance()

    report = m.run_once(now)
    assert [a.segment_id for a in report.of(ActionKind.COMPACT)] == [0, 1], report.errors
    new_records = env.meta.list_blocks(log_id, 0)
    after = len({b.key for b in new_records})
    block_size = seg_bytes / blocks
    # requests per GB read: one GET per object
    per_gb_before, per_gb_after = before / seg_bytes * 1e9, after / seg_bytes * 1e9
    print(
        f"\ncompaction ({backend}): {blocks} blocks of {block_size:.0f} B -> {after} objects; "
        f"GETs per GB {per_gb_before:,.0f} -> {per_gb_after:,.0f} "
        f"(x{before / after:.1f}, target/block = {16 * 1024 / block_size:.1f})"
    )
    per_object = 16 * 1024 // old_records[0].length  # the blocks all have the same size
    assert before == blocks and after == -(-blocks // per_object)
    assert before / after >= 0.7 * (16 * 1024 / block_size)
    # the block records became one index of chunks of at most compaction.chunk_bytes
    k = env.meta.keys
    assert keys_under(env, k.blocks_prefix(log_id)) == 0
    assert keys_under(env, k.indexes_prefix(log_id)) == 2
    assert all(b.messages_only and b.length <= 4096 for b in new_records)
    assert len(new_records) < blocks / 2
    assert [(b.first_entry_id, b.entry_count) for b in new_records] == [
        (first, sum(c.entry_count for c in new_records if c.first_entry_id == first))
        for first in [c.first_entry_id for c in new_records]
    ]
    assert sum(b.entry_count for b in new_records) == blocks * entries
    segment = env.meta.get_segment(log_id, 0)
    assert segment.compacted_ms is not None and segment.state is SegmentState.SEALED
    assert committed(env, log_id) == expected(log_id, range(2), blocks * entries, size)
    # the reader fetches contiguous chunks of one object with one ranged GET
    gets = CountingGets(env.store)
    with LogReader(env.meta, gets, "compact", log_id, wp.EARLIEST) as reader:
        table = reader.read_until(None)
    assert table.num_rows == 2 * blocks * entries
    assert gets.count == 2 * after, f"{gets.count} GETs for {2 * after} objects"
    # a reader that listed the old layout before the swap still reads it during the grace
    for b in old_records:
        data = env.store.get(b.key, b.offset, b.length)
        decode_block(data, expected_checksum=b.checksum, expected_entries=b.entry_count)
    assert m.run_once(now + 1).of(ActionKind.COMPACT) == [], "a compacted segment is done"

    report = m.run_once(now + 61)
    assert set(report.keys(ActionKind.DELETE_OBJECTS)) == {
        f"{log_id}/{s}/{b}.arrow" for s in range(2) for b in range(blocks)
    }
    assert len(env.objects(log_id)) == 2 * after
    assert committed(env, log_id) == expected(log_id, range(2), blocks * entries, size)


def test_compaction_of_a_big_segment_is_one_txn_and_a_too_slow_one_is_abandoned(env_factory):
    env = env_factory("local", compaction_target_bytes="1MiB", retention_orphan_grace=60.0)
    log_id = seed(env, "big", segments=1, blocks=300, entries=1)  # over etcd's 128 ops per txn
    report = env.maintenance().run_once(time.time())
    assert report.errors == [] and len(report.of(ActionKind.COMPACT)) == 1
    assert len({b.key for b in env.meta.list_blocks(log_id, 0)}) == 1
    (segment,) = env.meta.list_segments(log_id)
    assert segment.compacted_ms is not None
    pending = Lifecycle(env.meta).pending_deletions(log_id)
    assert sorted(k for p in pending for k in p.record.keys) == sorted(
        f"{log_id}/0/{b}.arrow" for b in range(300)
    )
    assert committed(env, log_id) == expected(log_id, range(1), 300)

    # with no grace a compacted file could be swept before its swap: never swapped
    env = env_factory("local", compaction_min_blocks=2, retention_orphan_grace=0.0)
    log_id = seed(env, "slow", segments=1, blocks=4, entries=1)
    old = env.meta.list_blocks(log_id, 0)
    report = env.maintenance().run_once(time.time() - 1)  # its sweep: only older objects
    assert report.of(ActionKind.COMPACT) == []
    assert len(report.errors) == 1 and "abandoned" in report.errors[0]
    assert env.meta.list_blocks(log_id, 0) == old
    leftover = [k for k in env.objects(log_id) if "compacted" in k]
    assert len(leftover) == 1
    report = env.maintenance().run_once(time.time() + 1)  # sweeps it (and tries again)
    assert set(leftover) <= set(report.keys(ActionKind.DELETE_ORPHANS))
    assert leftover[0] not in env.objects(log_id)
    assert committed(env, log_id) == expected(log_id, range(1), 4)


def test_compaction_swap_loses_to_a_concurrent_change(env_factory):
    env = env_factory("local")
    log_id = seed(env, "race", segments=1, blocks=4, entries=1)
    lifecycle = Lifecycle(env.meta)
    (seg,) = lifecycle.segments(log_id)
    blocks = lifecycle.blocks(log_id, 0)
    index = SegmentIndex(
        log_id=log_id,
        segment_id=0,
        objects=[f"{log_id}/0/compacted.arrow"],
        chunks=[[0, 0, 4, 400, 200, 800, 1]],
    )
    with pytest.raises(ValueError, match="index of"):
        lifecycle.index_segment(seg, dataclasses.replace(index, segment_id=1), [], 0, 1)
    assert lifecycle.mark_truncated(seg, 1) is not None  # retention got there first
    assert lifecycle.index_segment(seg, index, ["k"], 0, 1) is None
    assert lifecycle.blocks(log_id, 0) == blocks and lifecycle.pending_deletions() == []


# ---- maintenance in the logstore, and everything at once -------------------------------


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_logstore_maintains_logs_without_open_writers(make_config, env_factory):
    overrides = dict(
        segment_max_blocks=1,
        retention_ttl=0.0,
        # uploads older than half the grace are never committed: keep it above load stalls
        retention_orphan_grace=3.0,
        retention_interval=0.2,
    )
    env = env_factory("local", **overrides)
    with wp.Client(make_config("local", **overrides)) as client:
        log = client.create_log("background")
        with log.open_writer() as w:
            ids = [w.write(f"e{i}".encode()) for i in range(5)]
        assert len({i.segment_id for i in ids}) == 5
        last = ids[-1].segment_id
        assert wait_until(lambda: log.segments()[-1].state is SegmentState.SEALED, 10)
        log.truncate(ids[-2])  # no writer is open from here on
        assert wait_until(
            lambda: (
                [s.segment_id for s in log.segments()] == [ids[-2].segment_id, last]
                and {k.split("/")[1] for k in env.objects(log.log_id)}
                == {str(ids[-2].segment_id), str(last)}
            ),
            15,
        ), (log.segments(), env.objects(log.log_id))
        with log.open_reader(ids[-1]) as reader:
            assert reader.read_next(timeout=5) == wp.LogMessage(ids[-1], b"e4")


def test_gc_racing_a_writer_a_reader_and_compaction_keeps_committed_data(
    make_config, env_factory, backend, unique
):
    overrides = dict(
        segment_max_blocks=3,
        retention_ttl=0.0,
        retention_orphan_grace=3.0,
        retention_interval=0.2,  # the logstore's maintenance races the test's too
        compaction_min_blocks=2,
        compaction_target_bytes="8KiB",
    )
    env = env_factory(backend, **overrides)
    maintenance = env.maintenance()
    acked: dict[wp.LogMessageId, bytes] = {}
    refused: list[bytes] = []  # appended by the fenced writer: must never be read
    read: list[wp.LogMessage] = []
    reports = []
    failures: list[BaseException] = []
    stop, written = threading.Event(), threading.Event()

    with wp.Client(make_config(backend, **overrides)) as client:
        log = client.create_log("race")

        def guarded(fn):
            def run() -> None:
                try:
                    fn()
                except BaseException as e:
                    failures.append(e)
                    stop.set()

            return threading.Thread(target=run)

        def write() -> None:
            # half-way, a second logstore opens the log and fences the first one
            other = make_config(
                backend, logstore_socket=f"/tmp/wp-test-{unique}/fencer.sock", **overrides
            )
            fence_at, i = time.monotonic() + 2.0, 0
            w = log.open_writer()
            with wp.Client(other) as fencer:
                while not stop.is_set():
                    batch = [f"{i + k:08d}".encode() * 25 for k in range(5)]
                    i += 5
                    if fence_at and time.monotonic() > fence_at:
                        fence_at = 0.0
                        taken = fencer.open_log("race").open_writer()
                        with pytest.raises(wp.WriterFencedError):
                            w.write_batch(batch)
                        refused.extend(batch)
                        w.close()
                        w = taken
                        continue
                    acked.update(zip(w.write_batch(batch), batch, strict=True))
                w.close()
            written.set()

        def read_all() -> None:
            with log.open_reader(wp.EARLIEST) as reader:
                deadline = None
                while not (written.is_set() and len(read) >= len(acked)):
                    if written.is_set():
                        deadline = deadline or time.monotonic() + 30
                        assert time.monotonic() < deadline, "the reader fell behind for good"
                    message = reader.read_next(timeout=0.5)
                    if message is not None:
                        read.append(message)

        def maintain() -> None:
            while not stop.is_set():
                reports.append(maintenance.run_once())
                time.sleep(0.01)  # tight, but leaves the 2 cores to the pipeline too

        def truncate() -> None:
            while not stop.is_set():
                if len(read) > 40:
                    log.truncate(read[-40].id)  # behind the reader
                time.sleep(0.05)

        threads = [guarded(f) for f in (write, read_all, maintain, truncate)]
        threads[0].start()
        assert wait_until(lambda: len(acked) > 0, 30), "the logstore did not start"
        for t in threads[1:]:
            t.start()
        time.sleep(6.0)  # long enough for pending deletions (grace 3 s) to come due

        def seen(kind: ActionKind) -> bool:
            return any(r.of(kind) for r in list(reports))

        # on a loaded machine the writer may need longer to give maintenance work
        wait_until(lambda: seen(ActionKind.DELETE_SEGMENT) and seen(ActionKind.COMPACT), 60)
        stop.set()
        for t in threads:
            t.join(60)
        assert not failures, failures
        assert not any(t.is_alive() for t in threads)

        assert [m.id for m in read] == sorted(acked), "the reader saw every entry, in order"
        assert all(m.payload == acked[m.id] for m in read)
        assert refused and not set(refused) & {m.payload for m in read}
        done = {k: sum(len(r.of(k)) for r in reports) for k in ActionKind}
        print(f"\nrace ({backend}): {len(acked)} entries, maintenance did {done}")
        assert done[ActionKind.DELETE_SEGMENT] > 0 and done[ActionKind.COMPACT] > 0
        assert [e for r in reports for e in r.errors] == []

        # after the dust settles: every pending deletion was carried out (by the test's
        # maintenance or the logstores'), everything after the truncation point is intact
        maintenance.run_once(time.time() + HOUR)  # may record deletions of its own...
        maintenance.run_once(time.time() + 2 * HOUR)  # ...which this one carries out
        assert Lifecycle(env.meta).pending_deletions(log.log_id) == []
        point = log.truncation_point()
        assert point is not None
        after = sorted(i for i in acked if i > point)
        for b in (
            b for s in log.segments() for b in env.meta.list_blocks(log.log_id, s.segment_id)
        ):
            env.store.stat(b.key)  # every committed object exists
        with log.open_reader(wp.LogMessageId(point.segment_id, point.entry_id + 1)) as reader:
            again = [reader.read_next(timeout=5) for _ in after]
        assert [(m.id, m.payload) for m in again] == [(i, acked[i]) for i in after]
