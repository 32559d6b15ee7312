"""Truncation, retention and the operator CLI on QuorumBuffer logs, against real quorum nodes,
etcd and storage: an ACTIVE quorum segment's committed end is the LAC its nodes report (its
etcd record says -1), and a sealed one is retained and deleted as in MemoryBuffer mode."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import orjson
import pytest
from chaos.nodes import NodePool

import woodpecker as wp
from tests.conftest import ConfigFactory
from woodpecker import admin
from woodpecker.config import Config
from woodpecker.local_nodes import free_port
from woodpecker.meta import MetaStore, SegmentState
from woodpecker.meta.flush import flush_cursor
from woodpecker.meta.nodes import registered_nodes
from woodpecker.meta.records import EnsembleMember
from woodpecker.storage import open_store
from workers.maintenance import ActionKind, Maintenance

HOUR = 3600.0


def wait_for(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {within:g}s"
        time.sleep(0.05)


def cli(env: dict[str, str], *argv: str) -> str:
    """``python -m woodpecker ARGV`` as an operator runs it; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "woodpecker", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def held(meta: MetaStore, log_id: int, segment_id: int) -> int:
    """Bytes of a segment that the registered nodes hold, as they last reported."""
    return sum(
        size
        for node in registered_nodes(meta)
        for held_log, held_segment, _last, _lac, size in node.segments
        if (held_log, held_segment) == (log_id, segment_id)
    )


@pytest.mark.parametrize("backend", ["local"])
def test_a_quorum_log_truncates_inside_its_active_segment_and_the_cli_counts_its_entries(
    quorum_pool: NodePool, config_env: Callable[[Config], dict[str, str]], unique: str
) -> None:
    config = quorum_pool.config(retention_ttl=HOUR, retention_orphan_grace=60.0)
    env = config_env(config)
    name = f"trunc-{unique}"
    payloads = [b"p%02d" % i for i in range(10)]
    node_ids = {n.wait_registered().node_id for n in quorum_pool.nodes}
    with wp.Client(config) as client:
        log = client.open_log(name, create=True)
        meta = client.meta_store()
        with log.open_writer() as writer:
            writer.write_batch(payloads)
            (segment,) = log.segments()
            assert segment.lac_on_nodes and segment.lac == -1  # etcd does not know the LAC
            # the nodes learn that entry 9 is acked from the writer's idle LAC request
            wait_for(lambda: log.read_table().num_rows == 10, "the nodes' LAC at entry 9")

            # above what is acked: refused, and the error names the nodes' LAC
            past = r"past the committed end of segment 0 \(lac 9 from its nodes\)"
            with pytest.raises(wp.InvalidPositionError, match=past):
                log.truncate(wp.LogMessageId(0, 10))
            assert log.truncation_point() is None
            # inside the ACTIVE segment: EARLIEST starts right after the point
            assert log.truncate(wp.LogMessageId(0, 5)) == wp.LogMessageId(0, 5)
            with log.open_reader(wp.EARLIEST) as reader:
                assert reader.position == wp.LogMessageId(0, 6)
                got = [reader.read_next(timeout=5) for _ in range(4)]
            assert [m.payload for m in got if m is not None] == payloads[6:]

            # the CLI counts the ACTIVE segment's entries from its nodes, and says so
            shown = orjson.loads(cli(env, "logs", "show", name, "--json"))
            assert shown["buffer_mode"] == "quorum" and shown["truncated_through"] == "0:5"
            assert (shown["entries"], shown["entries_from"]) == (10, "nodes")
            (quorum_row,) = shown["quorum_segments"]
            assert (quorum_row["lac"], quorum_row["lac_from"]) == (9, "nodes")
            assert {m.split("@")[0] for m in quorum_row["ensemble"].split(", ")} == node_ids
            (row,) = orjson.loads(cli(env, "segments", name, "--json"))
            assert (row["state"], row["entries"], row["lac"], row["lac_from"]) == (
                "ACTIVE",
                10,
                9,
                "nodes",
            )
            shown_text = cli(env, "logs", "show", name).splitlines()
            assert shown_text[-3:-1] == [
                "quorum_segments:",
                "SEGMENT_ID  STATE   LAC  LAC_FROM  ENSEMBLE",
            ]
            assert shown_text[-1].split()[:4] == ["0", "ACTIVE", "9", "nodes"]
            table = cli(env, "segments", name).splitlines()
            assert table[0].split()[:6] == [
                "SEGMENT_ID",
                "STATE",
                "ENTRIES",
                "LAC",
                "LAC_FROM",
                "BYTES",
            ]
            assert table[1].split()[:5] == ["0", "ACTIVE", "10", "9", "nodes"]
            assert cli(env, "cat", name).splitlines() == [p.decode() for p in payloads[6:]]

        # retention of a sealed quorum segment: as in MemoryBuffer mode, and its flush
        # cursor and claim go with it
        wait_for(lambda: log.segments()[0].state is SegmentState.SEALED, "the seal")
        with log.open_writer() as writer:
            writer.write_batch([b"next0", b"next1", b"next2"])
            wait_for(lambda: log.read_table().num_rows == 7, "the nodes' LAC in segment 1")
            assert log.truncate(wp.LogMessageId(1, 0)) == wp.LogMessageId(1, 0)
        wait_for(
            lambda: flush_cursor(meta, log.log_id, 0).cursor.next_entry == 10,
            "the flush of the sealed segment 0",
        )
        wait_for(
            lambda: held(meta, log.log_id, 0) == 0,
            "every node forgot the flushed segment 0 (it is only in object storage)",
        )
        keys = meta.keys
        flushed = [keys.flush_cursor(log.log_id, 0), keys.flusher(log.log_id, 0)]
        assert all(meta.etcd.get("test", key) is not None for key in flushed)
        assert meta.list_blocks(log.log_id, 0)
        store = open_store(config)
        try:
            maintenance = Maintenance(config, meta, store)
            now = time.time()
            report = maintenance.run_once(now)
            assert [a.segment_id for a in report.of(ActionKind.TRUNCATE)] == [0]
            assert not report.of(ActionKind.DELETE_SEGMENT), "retention.ttl has not passed"
            objects = {b.key for b in meta.list_blocks(log.log_id, 0)}
            report = maintenance.run_once(now + HOUR + 1)
            assert [a.segment_id for a in report.of(ActionKind.DELETE_SEGMENT)] == [0]
            # the nodes' flushed objects wait for retention.orphan_grace, then go
            assert set(report.keys(ActionKind.DELETE_SEGMENT)) == objects
            report = maintenance.run_once(now + HOUR + 62)
            assert set(report.keys(ActionKind.DELETE_OBJECTS)) == objects
        finally:
            store.close()
        assert [s.segment_id for s in log.segments()] == [1]
        assert all(meta.etcd.get("test", key) is None for key in flushed)
        assert meta.list_blocks(log.log_id, 0) == []
        after = log.read_table().column("payload").to_pylist()
        assert after == [b"next1", b"next2"]


def test_an_active_quorum_segment_whose_nodes_do_not_answer_is_shown_as_unknown(
    make_config: ConfigFactory,
) -> None:
    config = make_config("local", buffer_mode="quorum", quorum_node_timeout=0.5)
    meta = MetaStore(config)
    log_id = meta.create_log("ghosts", buffer_mode="quorum").log_id
    nowhere = [EnsembleMember(f"gone{i}", f"127.0.0.1:{free_port()}", 1) for i in range(3)]
    with meta.acquire_writer(log_id, "test-writer") as session:
        session.create_segment(0, ensemble=nowhere, ack=2)
        with wp.Client(config) as client:
            (row,) = admin.segments(client, "ghosts")
            assert (row["entries"], row["lac"]) == (None, None)  # never a silent 0
            assert row["lac_from"] == "unknown: no node of its ensemble answers"
            shown = admin.show_log(client, "ghosts")
            assert shown["entries"] is None
            assert shown["entries_from"] == "unknown: no node of segment 0's ensemble answers"
            with pytest.raises(wp.QuorumUnavailableError, match="no node of its ensemble"):
                client.open_log("ghosts").truncate(wp.LogMessageId(0, 0))
    meta.close()
