"""MetaStore and WriterSession against the real etcd: logs, fencing, leases, recovery."""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from woodpecker.config import Config
from woodpecker.errors import (
    ConfigError,
    CorruptedDataError,
    LogExistsError,
    LogNotFoundError,
    MetadataUnavailableError,
    WriterFencedError,
)
from woodpecker.meta import (
    BlockRecord,
    MetaStore,
    SegmentState,
    TruncationPoint,
    WriterSession,
)


@pytest.fixture
def store(make_config) -> Iterator[MetaStore]:
    meta = MetaStore(make_config())
    yield meta
    root = meta.keys.root + "/"
    meta.etcd.call("cleanup", lambda c: c.delete_prefix(root))
    meta.close()


def block(log_id: int, segment: int, block_id: int, first: int, count: int = 1) -> BlockRecord:
    size = 100 * count
    return BlockRecord(
        log_id=log_id,
        segment_id=segment,
        block_id=block_id,
        first_entry_id=first,
        entry_count=count,
        size=size,
        key=f"{log_id}/{segment}/{block_id}",
        offset=0,
        length=size,
        checksum=0xFFFF_FFFF_FFFF_FFFF,
    )


def keys_under(store: MetaStore, prefix: str) -> list[str]:
    kvs = store.etcd.scan("test", prefix, keys_only=True)
    return [kv.key.decode() for _, kv in kvs]


def race(n: int, fn) -> list[object]:
    """Run fn(i) in n threads released together; each result or exception, by index."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


# ---- logs ----------------------------------------------------------------------------


def test_create_get_list_delete(store: MetaStore) -> None:
    a = store.create_log("orders")
    b = store.create_log("orders.archive")
    store.create_log("payments")
    assert a.name == "orders" and b.log_id > a.log_id
    assert store.get_log("orders") == a
    with pytest.raises(LogExistsError, match="'orders'"):
        store.create_log("orders")
    assert store.list_logs() == ["orders", "orders.archive", "payments"]
    assert store.list_logs("orders") == ["orders", "orders.archive"]
    assert store.list_logs("zzz") == []

    assert store.delete_log("orders") == a
    with pytest.raises(LogNotFoundError, match="'orders'"):
        store.get_log("orders")
    with pytest.raises(LogNotFoundError):
        store.delete_log("orders")
    assert store.list_logs() == ["orders.archive", "payments"]
    again = store.create_log("orders")
    assert again.log_id > max(a.log_id, b.log_id)  # ids are never reused


def test_concurrent_create_same_name_has_one_winner(store: MetaStore) -> None:
    results = race(8, lambda i: store.create_log("contended"))
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1, results
    assert all(isinstance(r, LogExistsError) for r in results if r is not winners[0])
    assert store.get_log("contended") == winners[0]


def test_concurrent_create_distinct_names_get_unique_ids(store: MetaStore) -> None:
    results = race(8, lambda i: store.create_log(f"log-{i}"))
    ids = [r.log_id for r in results]  # type: ignore[union-attr]
    assert len(set(ids)) == 8


def test_delete_log_removes_all_metadata_and_fences_the_writer(store: MetaStore) -> None:
    rec = store.create_log("doomed")
    session = store.acquire_writer(rec.log_id, "w")
    session.create_segment(0)
    session.commit(0, [block(rec.log_id, 0, 0, 0)], 0, 100)
    for key in (store.keys.flush_cursor(rec.log_id, 0), store.keys.flusher(rec.log_id, 0)):
        store.etcd.call("test", lambda c, k=key: c.put(k, b"{}"))  # as a quorum segment's
    store.delete_log("doomed")
    gone = ("/segments/", "/blocks/", "/flush/", "/flusher/")
    for prefix in (*(f"{p}{rec.log_id}/" for p in gone), "/logs/", "/ids/"):
        assert keys_under(store, store.keys.root + prefix) == []
    assert keys_under(store, store.keys.writer(rec.log_id)) == []
    with pytest.raises(WriterFencedError, match="writer key is gone"):
        session.commit(0, [block(rec.log_id, 0, 1, 1)], 1, 200)
    with pytest.raises(LogNotFoundError):
        store.acquire_writer(rec.log_id, "late")


def test_corrupted_record_names_its_key(store: MetaStore) -> None:
    rec = store.create_log("c")
    key = store.keys.segment(rec.log_id, 3)
    store.etcd.call("test", lambda c: c.put(key, b'{"log_id": "one"}'))
    with pytest.raises(CorruptedDataError, match=key):
        store.list_segments(rec.log_id)


# ---- writer sessions -----------------------------------------------------------------


def test_racing_acquires_have_one_winner(store: MetaStore) -> None:
    rec = store.create_log("race")
    results = race(6, lambda i: store.acquire_writer(rec.log_id, f"owner-{i}"))
    winners = [r for r in results if isinstance(r, WriterSession)]
    assert len(winners) == 1, results
    losers = [r for r in results if isinstance(r, WriterFencedError)]
    assert len(losers) == 5
    assert f"epoch {winners[0].epoch} (owner '{winners[0].owner}')" in str(losers[0])
    assert "is held by session" in str(losers[0])


def test_preemption_fences_the_old_session(store: MetaStore) -> None:
    rec = store.create_log("p")
    old = store.acquire_writer(rec.log_id, "old")
    old.create_segment(0)
    old.commit(0, [block(rec.log_id, 0, 0, 0, count=3)], 2, 300)

    new = store.acquire_writer(rec.log_id, "new", preempt=True)
    assert new.epoch > old.epoch
    with pytest.raises(WriterFencedError, match="preempted by session epoch"):
        old.commit(0, [block(rec.log_id, 0, 1, 3)], 3, 400)
    assert old.fenced and not new.fenced
    # nothing of the fenced commit is visible
    seg = store.get_segment(rec.log_id, 0)
    assert seg is not None and (seg.lac, seg.block_count, seg.size) == (2, 1, 300)
    assert [b.block_id for b in store.list_blocks(rec.log_id, 0)] == [0]
    # every later call fails at once, without asking etcd
    calls = []
    original = store.etcd.call
    store.etcd.call = lambda *a, **kw: calls.append(a) or original(*a, **kw)  # type: ignore[method-assign]
    for attempt in (
        lambda: old.create_segment(1),
        lambda: old.seal_segment(0),
        lambda: old.recover(),
        lambda: old.next_segment_id(),
    ):
        with pytest.raises(WriterFencedError):
            attempt()
    assert calls == []
    store.etcd.call = original  # type: ignore[method-assign]
    # the new writer recovers the old segment at its committed LAC
    sealed = new.recover()
    assert [(s.segment_id, s.state, s.lac) for s in sealed] == [(0, SegmentState.SEALED, 2)]
    assert new.next_segment_id() == 1


def test_lease_keeps_session_alive_and_expires_after_a_crash(make_config, store) -> None:
    meta = MetaStore(make_config(etcd_lease_ttl=2))
    try:
        rec = meta.create_log("crash")
        old = meta.acquire_writer(rec.log_id, "old")
        old.create_segment(0)
        time.sleep(2.5)  # longer than the TTL: the keepalive thread must have refreshed it
        with pytest.raises(WriterFencedError, match="is held"):
            meta.acquire_writer(rec.log_id, "new")

        old._stop_keepalive()  # the process "freezes": its lease is no longer refreshed
        deadline = time.monotonic() + 8
        while True:
            try:
                new = meta.acquire_writer(rec.log_id, "new")  # no preempt needed
                break
            except WriterFencedError:
                assert time.monotonic() < deadline, "the lease never expired"
                time.sleep(0.2)
        assert new.epoch == old.epoch + 1
        with pytest.raises(WriterFencedError, match=r"writer key is gone|preempted"):
            old.commit(0, [block(rec.log_id, 0, 0, 0)], 0, 100)
        assert meta.get_segment(rec.log_id, 0).lac == -1  # type: ignore[union-attr]
        new.release()
    finally:
        meta.close()


def test_lost_lease_marks_the_session_fenced(make_config, store) -> None:
    meta = MetaStore(make_config(etcd_lease_ttl=2))
    try:
        rec = meta.create_log("lost")
        session = meta.acquire_writer(rec.log_id, "w")
        meta.etcd.call("test", lambda c: c.revoke_lease(session._lease_id))  # etcd forgets it
        deadline = time.monotonic() + 3
        while not session.fenced:
            assert time.monotonic() < deadline, "the keepalive did not notice the lost lease"
            time.sleep(0.05)
        with pytest.raises(WriterFencedError, match="lease expired"):
            session.create_segment(0)
    finally:
        meta.close()


def test_release_then_commit_fails(store: MetaStore) -> None:
    rec = store.create_log("r")
    with store.acquire_writer(rec.log_id, "w") as session:
        session.create_segment(0)
    session.release()  # idempotent
    with pytest.raises(WriterFencedError, match="released"):
        session.commit(0, [block(rec.log_id, 0, 0, 0)], 0, 100)
    assert keys_under(store, store.keys.writer(rec.log_id)) == []
    store.acquire_writer(rec.log_id, "next").release()  # free at once, no TTL wait


def test_epochs_strictly_increase(store: MetaStore) -> None:
    rec = store.create_log("e")
    epochs = []
    for i in range(4):
        with store.acquire_writer(rec.log_id, f"w{i}") as s:
            epochs.append(s.epoch)
    holder = store.acquire_writer(rec.log_id, "holder")
    epochs.append(holder.epoch)
    epochs.append(store.acquire_writer(rec.log_id, "preemptor", preempt=True).epoch)
    assert epochs == sorted(set(epochs)) and epochs[0] == 1


def test_recover_seals_active_segments_at_their_committed_lac(store: MetaStore) -> None:
    rec = store.create_log("rec")
    first = store.acquire_writer(rec.log_id, "first")
    first.create_segment(0)
    first.commit(0, [block(rec.log_id, 0, 0, 0, count=2)], 1, 200)
    first.seal_segment(0)
    first.create_segment(1)
    first.commit(
        1, [block(rec.log_id, 1, 0, 0, count=4), block(rec.log_id, 1, 1, 4, count=2)], 5, 600
    )
    first._stop_keepalive()  # crash: segment 1 stays ACTIVE

    second = store.acquire_writer(rec.log_id, "second", preempt=True)
    sealed = second.recover()
    assert [(s.segment_id, s.state, s.lac, s.block_count, s.size) for s in sealed] == [
        (1, SegmentState.SEALED, 5, 2, 600)
    ]
    assert sealed[0].sealed_ms is not None and sealed[0].epoch == first.epoch
    assert second.recover() == []
    assert [s.state for s in store.list_segments(rec.log_id)] == [SegmentState.SEALED] * 2
    assert second.next_segment_id() == 2
    seg = second.create_segment(2)
    assert seg.epoch == second.epoch and seg.lac == -1
    # a recovered segment takes no more commits
    with pytest.raises(ValueError, match="SEALED"):
        second.commit(1, [block(rec.log_id, 1, 2, 6)], 6, 700)


def test_commit_checks_blocks_are_dense_and_match_the_lac(store: MetaStore) -> None:
    rec = store.create_log("v")
    s = store.acquire_writer(rec.log_id, "w")
    s.create_segment(0)
    with pytest.raises(ValueError, match="not created by this session"):
        s.commit(7, [block(rec.log_id, 7, 0, 0)], 0, 100)
    with pytest.raises(ValueError, match="expected block 0 starting at entry 0"):
        s.commit(0, [block(rec.log_id, 0, 1, 0)], 0, 100)
    with pytest.raises(ValueError, match="expected block 1 starting at entry 2"):
        s.commit(0, [block(rec.log_id, 0, 0, 0, 2), block(rec.log_id, 0, 1, 3)], 3, 300)
    with pytest.raises(ValueError, match="lac 5"):
        s.commit(0, [block(rec.log_id, 0, 0, 0, 2)], 5, 200)
    with pytest.raises(ValueError, match=r"1\.\.127 blocks"):
        s.commit(0, [], -1, 0)
    with pytest.raises(ValueError, match="already exists"):
        store.acquire_writer(rec.log_id, "x", preempt=True).create_segment(0)
    assert store.get_segment(rec.log_id, 0).lac == -1  # type: ignore[union-attr]


def test_lost_replies_are_recognised_as_own_success(store: MetaStore, monkeypatch) -> None:
    """Run every mutating txn twice, as a retry after a lost reply would."""
    original = store.etcd.call

    def twice(op, fn, **kwargs):
        if op in ("create_log", "acquire_writer", "create_segment", "commit", "seal_segment"):
            original(op, fn, **kwargs)
        return original(op, fn, **kwargs)

    monkeypatch.setattr(store.etcd, "call", twice)
    rec = store.create_log("dup")
    with store.acquire_writer(rec.log_id, "w") as s:
        s.create_segment(0)
        s.commit(0, [block(rec.log_id, 0, 0, 0)], 0, 100)
        s.commit(0, [block(rec.log_id, 0, 1, 1)], 1, 200)
        sealed = s.seal_segment(0)
        assert not s.fenced
    assert (sealed.state, sealed.lac, sealed.block_count) == (SegmentState.SEALED, 1, 2)
    assert store.get_log("dup") == rec


def test_truncation_point_bounds_next_segment_id(store: MetaStore) -> None:
    rec = store.create_log("t")
    assert store.get_truncation(rec.log_id) is None
    point = TruncationPoint(segment_id=5, entry_id=3)
    key = store.keys.truncation(rec.log_id)
    store.etcd.call("test", lambda c: c.put(key, point.to_bytes()))
    assert store.get_truncation(rec.log_id) == point
    with store.acquire_writer(rec.log_id, "w") as s:
        assert s.next_segment_id() == 6


# ---- connections ---------------------------------------------------------------------


def test_metadata_unavailable_is_quick_and_keeps_the_password_secret() -> None:
    config = Config(
        env={},
        etcd_endpoints="127.0.0.1:1",
        etcd_user="root",
        etcd_password="hunter2-secret",
        retry_deadline=1,
        retry_max_attempts=100,
    )
    meta = MetaStore(config)
    start = time.monotonic()
    with pytest.raises(MetadataUnavailableError) as info:
        meta.create_log("x")
    assert time.monotonic() - start < 3
    assert "create_log" in str(info.value) and "127.0.0.1:1" in str(info.value)
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(info.value)
    meta.close()


def test_fails_over_to_a_live_endpoint(make_config, services) -> None:
    live = services["WOODPECKER_ETCD_ENDPOINTS"].split(",")[0]
    meta = MetaStore(make_config(), endpoints=["127.0.0.1:1", live])
    try:
        assert meta.server_version().startswith("3.")
        assert meta.list_logs() == []
    finally:
        meta.close()


def test_empty_endpoints_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"etcd\.endpoints is empty"):
        MetaStore(Config(env={}), endpoints=[])


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("etcd-host", "host:port (a port from 1 to 65535) or unix:///path"),
        ("unix://relative.sock", "unix:///absolute/path"),
    ],
)
def test_bad_endpoint_is_a_config_error(endpoint: str, expected: str) -> None:
    with pytest.raises(
        ConfigError, match=re.escape(f"invalid endpoint {endpoint!r}; expected {expected}")
    ):
        MetaStore(Config(env={}), endpoints=[endpoint])


def test_commit_latency(store: MetaStore) -> None:
    """One commit = one txn (1 block record + segment update); printed for the record."""
    rec = store.create_log("lat")
    with store.acquire_writer(rec.log_id, "w") as s:
        s.create_segment(0)
        times = []
        for i in range(200):
            start = time.perf_counter()
            s.commit(0, [block(rec.log_id, 0, i, i)], i, 100 * (i + 1))
            times.append(time.perf_counter() - start)
    median_ms = statistics.median(times) * 1000
    print(f"commit txn median {median_ms:.2f} ms, p99 {sorted(times)[197] * 1000:.2f} ms")
    assert median_ms < 50
