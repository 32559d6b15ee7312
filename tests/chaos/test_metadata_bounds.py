"""etcd stays within its quota under a steady write + truncate workload, and recovers from NOSPACE.

Each test runs its own etcd (``chaos.services.EtcdCluster``) with a small
``--quota-backend-bytes`` and no server-side auto-compaction, so what keeps it
within the quota is the logstore's maintenance alone: history compaction
(``etcd.history_retention``), segment indexes replacing block records, and
retention deleting truncated segments. Without them, a 24 MiB etcd refused
commits after about 40,000 sync writes (``docs/metadata.md``).
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

import woodpecker as wp
from chaos.scale import pick
from chaos.services import EtcdCluster
from woodpecker.doctor import run_doctor
from woodpecker.errors import MetadataUnavailableError, WoodpeckerError
from woodpecker.meta import MetaStore
from woodpecker.meta.space import NOSPACE_RECOVERY, etcd_space
from woodpecker.storage import open_store
from workers.maintenance import Maintenance

MiB = 1 << 20
PAYLOAD = b"x" * 1024
TRUNCATE_EVERY = 5_000
LOGS = 8  # one sync writer thread per log: one commit per write, at this machine's etcd rate


def bounded_config(make_config, etcd: EtcdCluster, **overrides: object):
    settings: dict[str, object] = dict(
        etcd_endpoints=etcd.endpoints,
        etcd_history_retention=2.0,
        retention_interval=1.0,
        retention_ttl=0.0,
        # a compaction must finish within half the grace; keep it above load stalls
        retention_orphan_grace=30.0,
        retention_sweep_interval=30.0,
        segment_max_blocks=1_000,
        retry_deadline=30.0,
    )
    settings.update(overrides)
    return make_config("local", **settings)


@pytest.mark.timeout(pick(600, 0))  # ~130 s here; 1M writes (--long) take about 40 minutes
def test_etcd_with_a_24_mib_quota_takes_60k_sync_writes_with_periodic_truncation(
    make_config, tmp_path
):
    writes = pick(60_000, 1_000_000)
    quota = 24 * MiB
    etcd = EtcdCluster(tmp_path / "etcd", flags={"--quota-backend-bytes": str(quota)})
    try:
        config = bounded_config(make_config, etcd)
        meta = MetaStore(config)
        first_revision = etcd_space(meta).revision
        acked: dict[str, list[wp.LogMessageId]] = {}
        errors: list[BaseException] = []
        largest = [0]
        done = threading.Event()

        trend: list[str] = []  # db size by writes done, every 10 s

        def sample() -> None:  # the db size seen every second
            seconds = 0
            while not done.wait(1.0):
                size = etcd_space(meta).db_size
                largest[0] = max(largest[0], size)
                seconds += 1
                if seconds % 10 == 0:
                    trend.append(f"{sum(map(len, acked.values()))}: {size / MiB:.1f}")

        def write(log: wp.LogHandle, count: int) -> None:
            ids = acked[log.name]
            try:
                with log.open_writer() as writer:
                    for i in range(1, count + 1):
                        ids.append(writer.write(PAYLOAD))
                        if i % (TRUNCATE_EVERY // LOGS) == 0:  # a consumer checkpointed
                            log.truncate(ids[-1])
            except BaseException as e:
                errors.append(e)

        with wp.Client(config) as client:
            logs = [client.create_log(f"steady-{n}") for n in range(LOGS)]
            acked.update((log.name, []) for log in logs)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            start = time.monotonic()
            threads = [threading.Thread(target=write, args=(log, writes // LOGS)) for log in logs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - start
            done.set()
            sampler.join()
            assert errors == [], errors[:3]
            assert sum(map(len, acked.values())) == writes

            space = etcd_space(meta)
            revisions = space.revision - first_revision
            keys = meta.etcd.scan("test", meta.keys.root + "/", keys_only=True)
            blocks = [kv for _, kv in keys if b"/blocks/" in kv.key]
            indexes = [kv for _, kv in keys if b"/index/" in kv.key]
            print(
                f"\n{writes} acknowledged 1 KiB sync writes ({LOGS} logs, a writer thread each) "
                f"in {elapsed:.0f}s ({writes / elapsed:.0f}/s), {revisions} etcd revisions; "
                f"db largest {largest[0] / MiB:.1f} MiB, now {space.describe()}; live keys "
                f"{len(keys)} ({len(blocks)} block records, {len(indexes)} segment indexes); "
                f"db MiB by writes: {', '.join(trend)}"
            )
            # one commit per write: more than the ~40,000 that filled this quota unmaintained
            assert revisions > writes
            assert space.db_size < quota and not space.alarms
            # live metadata stays bounded: about one segment's block records per log
            assert len(blocks) <= LOGS * (config.segment.max_blocks + 10)
            with pytest.raises(MetadataUnavailableError, match="compacted"):
                meta.etcd.call("test", lambda c: c.get(meta.keys.root, revision=first_revision))

            for log in logs:
                point = log.truncation_point()
                expected = [tuple(mid) for mid in acked[log.name] if mid > point]
                with log.open_reader(wp.EARLIEST) as reader:
                    table = reader.read_until(None)
                read = list(
                    zip(
                        table.column("segment_id").to_pylist(),
                        table.column("entry_id").to_pylist(),
                        strict=True,
                    )
                )
                assert read == expected, f"{log.name}: every retained entry, in order"
        meta.close()
    finally:
        etcd.close()


def test_after_etcd_raised_nospace_writes_resume_once_space_is_freed(make_config, tmp_path):
    etcd = EtcdCluster(tmp_path / "etcd", flags={"--quota-backend-bytes": str(8 * MiB)})
    try:
        config = bounded_config(make_config, etcd, retry_deadline=3.0)
        meta = MetaStore(config)
        acked: list[tuple[wp.LogMessageId, bytes]] = []
        with wp.Client(config) as client:
            log = client.create_log("full")
            with log.open_writer() as writer, pytest.raises(WoodpeckerError) as refused:
                for i in range(10_000):
                    payload = f"entry {i}".encode()
                    acked.append((writer.write(payload), payload))
                    if i == 100:  # another tenant of this etcd fills it up
                        fill(meta)
            assert "database space exceeded" in str(refused.value), refused.value
            space = etcd_space(meta)
            assert space.alarms == ("NOSPACE",)
            print(f"\nNOSPACE after {len(acked)} acknowledged writes: {space.describe()}")
            report = run_doctor(config)
            assert not report.ok and report.facts["etcd_alarms"] == "NOSPACE"
            assert "etcd raised alarm NOSPACE" in report.error
            assert all(command in report.error for command in NOSPACE_RECOVERY)

            # free space, then the recovery docs/metadata.md gives: compact, defragment, disarm
            meta.etcd.call("test", lambda c: c.delete_prefix("/junk/"))
            etcd.etcdctl("compact", str(etcd_space(meta).revision))
            etcd.etcdctl("defrag")
            etcd.etcdctl("alarm", "disarm")
            assert etcd_space(meta).alarms == ()

            with log.open_writer() as writer:
                for i in range(100):
                    payload = f"after {i}".encode()
                    acked.append((writer.write(payload), payload))
            with log.open_reader(wp.EARLIEST) as reader:
                table = reader.read_until(None)
            read = list(
                zip(
                    table.column("segment_id").to_pylist(),
                    table.column("entry_id").to_pylist(),
                    table.column("payload").to_pylist(),
                    strict=True,
                )
            )
            assert read == [(*mid, payload) for mid, payload in acked], "nothing acked is lost"
        meta.close()
    finally:
        etcd.close()


def test_maintenance_warns_once_per_crossing_of_80_percent_of_the_quota(
    make_config, tmp_path, caplog
):
    etcd = EtcdCluster(tmp_path / "etcd", flags={"--quota-backend-bytes": str(4 * MiB)})
    try:
        config = make_config("local", etcd_endpoints=etcd.endpoints)
        meta = MetaStore(config)
        maintenance = Maintenance(config, meta, open_store(config))

        def warnings_after_passes(passes: int) -> list[str]:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="woodpecker.etcd_space"):
                for _ in range(passes):
                    report = maintenance.run_once()
                    assert report.errors == [] and report.etcd_space is not None
            return [r.getMessage() for r in caplog.records]

        def defrag() -> None:
            meta.etcd.call("test", lambda c: c.delete_prefix("/junk/"))
            etcd.etcdctl("compact", str(etcd_space(meta).revision))
            etcd.etcdctl("defrag")

        assert warnings_after_passes(1) == []
        for crossing in range(2):
            for i in range(7):  # 3.5 MiB of the 4 MiB quota
                meta.etcd.call("test", lambda c, i=i: c.put(f"/junk/{i}", b"j" * (MiB // 2)))
            # etcd reports its size as of its last backend commit (every 100 ms)
            assert wait_until(lambda: etcd_space(meta).fraction > 0.8, 10)
            warned = warnings_after_passes(3)
            assert len(warned) == 1, (crossing, warned)
            assert "of its space quota" in warned[0] and "quota 4 MiB" in warned[0]
            defrag()
            assert wait_until(lambda: etcd_space(meta).fraction < 0.8, 10)
            assert warnings_after_passes(1) == []
        maintenance.store.close()
        meta.close()
    finally:
        etcd.close()


def fill(meta: MetaStore) -> None:
    """Put 1 MiB values until etcd refuses one: it raises NOSPACE."""
    value = b"j" * MiB
    with pytest.raises(MetadataUnavailableError, match="database space exceeded"):
        for i in range(100):
            meta.etcd.call("fill", lambda c, i=i: c.put(f"/junk/{i}", value))


def test_a_reader_whose_watch_revision_was_compacted_resumes_from_a_fresh_snapshot(
    make_config, tmp_path
):
    etcd = EtcdCluster(tmp_path / "etcd")
    try:
        config = make_config("local", etcd_endpoints=etcd.endpoints)
        meta = MetaStore(config)
        with wp.Client(config) as client:
            log = client.create_log("tailed")
            with log.open_writer() as writer, log.open_reader(wp.EARLIEST) as reader:
                before = [writer.write(f"before {i}".encode()) for i in range(10)]
                table = reader.read_until(None)  # reads, never waits: no watch yet
                assert table.num_rows == len(before)
                after = [writer.write(f"after {i}".encode()) for i in range(10)]
                # the history since the reader's last read goes (maintenance does this too)
                revision = etcd_space(meta).revision
                meta.etcd.call("test", lambda c: c.compact(revision))

                # the watch starts after the reader's last read: etcd cancels it as compacted
                got = [reader.read_next(timeout=10) for _ in after]
                assert [m.id for m in got] == after
                assert wait_until(lambda: reader._watch.compacted == 1, 10)
                # re-armed after a fresh snapshot: new commits are pushed again, none skipped
                tail = [writer.write(f"tail {i}".encode()) for i in range(10)]
                got = [reader.read_next(timeout=10) for _ in tail]
                assert [m.id for m in got] == tail
                assert [m.payload for m in got] == [f"tail {i}".encode() for i in range(10)]
                assert reader._watch.compacted == 1
        meta.close()
    finally:
        etcd.close()


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
