"""QuorumBuffer logs written through the logstore while quorum nodes and the logstore fail.

Producer processes keep appending to a quorum log (``chaos.workload.Fleet``) while a node
is killed (with and without a spare registered), a memory node restarts empty, or the
logstore is killed; then every acked entry must be read back exactly once, in order
(``chaos.history.check``). Two nodes killed must fail appends with
``QuorumUnavailableError`` at the deadline and lose nothing acked; a writer fenced by a
new writer's recovery learns it from the nodes (``WriterFencedError``).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

import woodpecker as wp
from chaos.faultproxy import FaultProxy
from chaos.history import assert_valid, check, read_back
from chaos.nodes import NodePool, NodeProcess, free_port
from chaos.processes import wait_logstore, wait_until
from chaos.scale import long_run, pick
from chaos.workload import Fleet, Plan
from woodpecker.config import Config
from woodpecker.meta import MetaStore, SegmentRecord, SegmentState
from woodpecker.meta.flush import flush_cursor

RECOVERY = 45.0  # seconds producers get to be acked again after a fault

S3_WHEN_LONG = pytest.mark.parametrize(
    "backend",
    [
        "local",
        pytest.param(
            "s3",
            marks=pytest.mark.skipif(
                not long_run(), reason="its s3 variant runs with scripts/chaos --long"
            ),
        ),
    ],
    indirect=True,
)
"""The backend only decides where the nodes flush; the slowest scenarios run on S3 too in
the long mode, keeping the normal suite under its time budget."""
PLAN = Plan(sizes=(32, 200, 1000), window=16)


def segments(config: Config, log: wp.LogHandle) -> list[SegmentRecord]:
    meta = MetaStore(config)
    try:
        return meta.list_segments(log.log_id)
    finally:
        meta.close()


def ensemble(segment: SegmentRecord) -> set[str]:
    return {m.node_id for m in segment.ensemble or []}


def wait_sealed_flushed(config: Config, log: wp.LogHandle) -> None:
    """Until every sealed segment is wholly in object storage, and the active one (if any)
    was opened after them (on a full ensemble)."""
    meta = MetaStore(config)
    try:
        deadline = time.monotonic() + RECOVERY
        while True:
            records = meta.list_segments(log.log_id)
            pending = [
                r.segment_id
                for r in records
                if r.state is SegmentState.SEALED
                and flush_cursor(meta, log.log_id, r.segment_id).cursor.next_entry <= r.lac
            ]
            if not pending and records[-1].state is SegmentState.ACTIVE:
                return
            assert time.monotonic() < deadline, f"segments {pending} were never flushed"
            time.sleep(0.1)
    finally:
        meta.close()


def two_logstores(pool: NodePool, **overrides: object) -> tuple[Config, Config]:
    """Configurations of the pool's deployment served by two logstores: two writers."""
    other = str(Path("/tmp") / f"wp-{os.getpid()}-{uuid.uuid4().hex[:6]}.sock")
    return pool.config(**overrides), pool.config(logstore_socket=other, **overrides)


def run_fleet(config: Config, log_name: str, tmp_path: Path, producers: int = 3) -> Fleet:
    fleet = Fleet(config, log_name, tmp_path, plan=PLAN)
    for i in range(producers):
        fleet.start_process(f"p{i}")
    fleet.wait_progress(fleet.acked(), RECOVERY, "producers never got a first ack")
    return fleet


def finish(fleet: Fleet, log: wp.LogHandle) -> None:
    """Stop the producers; every acked entry is read back once, in order."""
    fleet.stop()
    report = check(fleet.ops(), read_back(log))
    assert_valid(report)
    assert report.ok > 0


def test_a_killed_node_is_replaced_by_a_spare_and_nothing_acked_is_lost(
    quorum_pool: NodePool, tmp_path: Path
) -> None:
    # segments roll only for the dead node, never for their size within the test
    config = quorum_pool.config(segment_max_bytes="64GiB")
    spare = quorum_pool.spare()
    with wp.Client(config) as client:
        log = client.open_log("spare", create=True)
        fleet = run_fleet(config, log.name, tmp_path)
        try:
            first = segments(config, log)[0]
            victim = next(
                i for i, n in enumerate(quorum_pool.nodes) if n.config.node.id in ensemble(first)
            )
            killed = quorum_pool.kill(victim).config.node.id
            fleet.wait_progress(fleet.acked(), RECOVERY, "writes stopped after a node was killed")
            wait_until(
                lambda: killed not in ensemble(segments(config, log)[-1]),
                RECOVERY,
                "the segment never rolled off the dead node",
            )
            fleet.wait_progress(fleet.acked(), RECOVERY, "writes stopped after the roll")
            rolled = segments(config, log)[-1]
            assert spare.config.node.id in ensemble(rolled) and len(ensemble(rolled)) == 3
            finish(fleet, log)
        finally:
            fleet.kill_all()


def test_without_a_spare_writing_goes_on_on_the_two_survivors(
    quorum_pool: NodePool, tmp_path: Path
) -> None:
    config = quorum_pool.config(segment_max_bytes="64GiB", quorum_node_timeout=1.0)
    with wp.Client(config) as client:
        log = client.open_log("degraded", create=True)
        fleet = run_fleet(config, log.name, tmp_path, producers=2)
        try:
            killed = quorum_pool.kill(0).config.node.id
            for _ in range(3):  # past node_timeout: the node has left the live set
                fleet.wait_progress(fleet.acked(), RECOVERY, "writes stopped on the survivors")
            time.sleep(config.quorum.node_timeout)
            fleet.wait_progress(fleet.acked(), RECOVERY, "writes stopped on the survivors")
            # no spare: the segment was not rolled, it goes on with two of its three nodes
            assert all(killed in ensemble(s) for s in segments(config, log))
            finish(fleet, log)
        finally:
            fleet.kill_all()


def test_a_memory_node_restarted_empty_loses_nothing_acked_and_resurrects_nothing(
    quorum_pool: NodePool, tmp_path: Path
) -> None:
    config = quorum_pool.config(segment_max_bytes="64GiB")
    with wp.Client(config) as client:
        log = client.open_log("restart", create=True)
        fleet = run_fleet(config, log.name, tmp_path, producers=2)
        try:
            old = quorum_pool.nodes[1].config.node.id
            new = quorum_pool.restart(1).config.node.id  # a new incarnation: it knows no segment
            fleet.wait_progress(fleet.acked(), RECOVERY, "writes stopped after the restart")
            wait_until(
                lambda: old not in ensemble(segments(config, log)[-1]),
                RECOVERY,
                "the segment never rolled to the new node",
            )
            assert new in ensemble(segments(config, log)[-1])
            finish(fleet, log)
        finally:
            fleet.kill_all()


def test_the_logstore_killed_mid_write_is_recovered_through_the_nodes(
    quorum_pool: NodePool, tmp_path: Path
) -> None:
    config = quorum_pool.config()
    with wp.Client(config) as client:
        log = client.open_log("crash", create=True)
        fleet = run_fleet(config, log.name, tmp_path, producers=2)
        try:
            store = wait_logstore(config)
            os.kill(store, signal.SIGKILL)
            wait_logstore(config, RECOVERY, other_than=store)
            fleet.wait_progress(fleet.acked(), RECOVERY, "writes never resumed")
            states = [s.state for s in segments(config, log)]
            assert states[0] == SegmentState.SEALED  # recovered and sealed by the new writer
            finish(fleet, log)
        finally:
            fleet.kill_all()


@S3_WHEN_LONG
def test_two_nodes_killed_fail_appends_at_the_deadline_and_writing_resumes(
    quorum_pool: NodePool,
) -> None:
    config = quorum_pool.config(retry_deadline=3.0, quorum_node_timeout=1.0)
    acked: list[bytes] = []
    with wp.Client(config) as client:
        log = client.open_log("two-down", create=True)
        with log.open_writer() as writer:
            for i in range(20):
                writer.write(b"before-%d" % i)
                acked.append(b"before-%d" % i)
            quorum_pool.kill(0)
            quorum_pool.kill(1)
            started = time.monotonic()
            with pytest.raises(wp.QuorumUnavailableError):
                for i in range(1000):
                    writer.write(b"during-%d" % i)
                    acked.append(b"during-%d" % i)  # acked before the survivors noticed
            waited = time.monotonic() - started
            assert waited < config.retry.deadline + config.quorum.node_timeout + 5
            quorum_pool.restart(0)
            quorum_pool.restart(1)
            deadline = time.monotonic() + RECOVERY
            while True:
                try:
                    writer.write(b"after")
                    acked.append(b"after")
                    break
                except wp.WoodpeckerError:
                    assert time.monotonic() < deadline, "writing never resumed"
                    time.sleep(0.2)
        with log.open_reader(wp.EARLIEST) as reader:
            got = [m.payload for m in iter(lambda: reader.read_next(timeout=5), None)]
        assert got == acked


@S3_WHEN_LONG
def test_a_writer_fenced_by_a_new_writer_learns_it_from_the_nodes(
    quorum_pool: NodePool, tmp_path: Path
) -> None:
    first, second = two_logstores(quorum_pool)
    with wp.Client(first) as a, wp.Client(second) as b:
        log_a = a.open_log("fenced", create=True)
        with log_a.open_writer() as old:
            old.write(b"old-0")
            with b.open_log("fenced").open_writer() as new:  # recovery fences the ensemble
                new.write(b"new-0")
                with pytest.raises((wp.WriterFencedError, wp.OutcomeUnknownError)):
                    for _ in range(50):
                        old.write(b"late")
                with pytest.raises(wp.WriterFencedError):
                    old.write(b"later")
                new.write(b"new-1")
        with log_a.open_reader(wp.EARLIEST) as reader:
            got = [m.payload for m in iter(lambda: reader.read_next(timeout=5), None)]
        assert got[0] == b"old-0" and got[-2:] == [b"new-0", b"new-1"]
        assert b"later" not in got


@S3_WHEN_LONG
def test_a_node_paused_past_the_timeout_adds_nothing_for_the_fenced_writer(
    quorum_pool: NodePool,
) -> None:
    """SIGSTOP one node: acks go on without it; a new writer recovers the segment while it is
    paused; resumed, it holds the fenced writer's queued appends, and none of it is read."""
    first, second = two_logstores(quorum_pool, quorum_node_timeout=1.0)
    with wp.Client(first) as a, wp.Client(second) as b:
        log = a.open_log("paused", create=True)
        acked = []
        with log.open_writer() as old:
            for i in range(10):
                old.write(b"a-%d" % i)
                acked.append(b"a-%d" % i)
            (segment,) = segments(first, log)
            paused = next(n for n in quorum_pool.nodes if n.config.node.id in ensemble(segment))
            quorum_pool.changed = True
            paused.proc.send_signal(signal.SIGSTOP)
            try:
                futures = [old.write_async(b"p-%d" % i) for i in range(200)]
                for i, future in enumerate(futures):
                    future.result(timeout=30)  # two nodes ack; the paused one is not waited on
                    acked.append(b"p-%d" % i)
                time.sleep(first.quorum.node_timeout * 1.5)  # it leaves the live set
                with b.open_log(log.name).open_writer() as new:  # recovery without it
                    new.write(b"b-0")
                    with pytest.raises((wp.WriterFencedError, wp.OutcomeUnknownError)):
                        for _ in range(50):
                            old.write(b"stale")
                    with pytest.raises(wp.WriterFencedError):
                        old.write(b"stale")
            finally:
                paused.proc.send_signal(signal.SIGCONT)
            time.sleep(1.0)  # it reads what was queued for it while it was stopped
        sealed = segments(first, log)[0]
        assert sealed.state is SegmentState.SEALED and sealed.lac == len(acked) - 1
        with log.open_reader(wp.EARLIEST) as reader:
            got = [m.payload for m in iter(lambda: reader.read_next(timeout=5), None)]
        assert got == [*acked, b"b-0"]


@S3_WHEN_LONG
def test_kill_loops_over_the_nodes_lose_nothing_acked(
    quorum_pool: NodePool, tmp_path: Path, rng
) -> None:
    """Nodes killed and restarted again and again under two producers: after every kill
    the producers are acked again, and the whole history checks at the end.

    Memory durability keeps an acked entry on ``ack`` nodes until it is flushed: it
    survives one failure. So the next kill comes once the segments the last kill degraded
    are sealed and flushed (the writer rolls to a full ensemble on the spare)."""
    config = quorum_pool.config(segment_max_bytes="64GiB")
    quorum_pool.spare()
    with wp.Client(config) as client:
        log = client.open_log("kill-loop", create=True)
        fleet = run_fleet(config, log.name, tmp_path, producers=2)
        try:
            for _ in range(pick(3, 30)):
                active = ensemble(segments(config, log)[-1])
                members = [i for i, n in enumerate(quorum_pool.nodes) if n.config.node.id in active]
                quorum_pool.restart(
                    rng.choice(members)
                )  # kill -9, then a new incarnation on its port
                fleet.wait_progress(fleet.acked(), RECOVERY, "writes stopped after a node kill")
                wait_sealed_flushed(config, log)
            assert len(segments(config, log)) > 1
            finish(fleet, log)
        finally:
            fleet.kill_all()


@S3_WHEN_LONG
def test_a_fault_proxy_between_the_logstore_and_one_node(
    start_node: Callable[..., NodeProcess], make_config, backend: str, tmp_path: Path
) -> None:
    """One node reached through the fault proxy (it advertises the proxy's address):
    latency does not stop acks, a reset and a blackhole make it leave the ensemble while
    the two others go on acking, and the history checks."""
    nodes = [start_node(f"n{i}", storage_type=backend) for i in range(2)]
    port = free_port()
    with FaultProxy("127.0.0.1", port) as proxy:
        nodes.append(
            start_node("n2", port=port, storage_type=backend, node_advertise=proxy.endpoint)
        )
        for node in nodes:
            node.wait_registered()
        config = make_config(backend, buffer_mode="quorum", segment_max_bytes="64GiB")
        with wp.Client(config) as client:
            log = client.open_log("proxied", create=True)
            fleet = run_fleet(config, log.name, tmp_path, producers=2)
            try:
                # the logstore reaches n2 through the proxy
                wait_until(lambda: proxy.connections > 0, RECOVERY, "a connection through it")
                proxy.set(latency=0.05, jitter=0.02)
                fleet.wait_progress(fleet.acked(), RECOVERY, "writes stopped with latency")
                proxy.set(latency=0.0, jitter=0.0, blackhole=True)
                time.sleep(config.quorum.node_timeout)
                fleet.wait_progress(fleet.acked(), RECOVERY, "writes stopped in a blackhole")
                proxy.heal()
                proxy.reset_all()
                fleet.wait_progress(fleet.acked(), RECOVERY, "writes stopped after a reset")
                assert len(segments(config, log)) == 1  # no spare: degraded, never rolled
                finish(fleet, log)
            finally:
                fleet.kill_all()


@S3_WHEN_LONG
def test_two_ensemble_nodes_killed_with_spares_move_pending_appends_to_a_new_segment(
    quorum_pool: NodePool,
) -> None:
    """Fewer than ``ack`` of the segment's nodes left, spares registered: the batches not
    acked yet are sent again in a new segment on the spares, and no append fails."""
    config = quorum_pool.config(quorum_node_timeout=1.0, segment_max_bytes="64GiB")
    quorum_pool.spare()
    quorum_pool.spare()
    with wp.Client(config) as client:
        log = client.open_log("moved", create=True)
        with log.open_writer() as writer:
            first = [writer.write_async(b"a-%d" % i) for i in range(100)]
            [f.result(timeout=30) for f in first]
            (segment,) = segments(config, log)
            members = [
                i for i, n in enumerate(quorum_pool.nodes) if n.config.node.id in ensemble(segment)
            ]
            quorum_pool.kill(members[0])
            quorum_pool.kill(members[1])
            rest = [writer.write_async(b"b-%d" % i) for i in range(300)]
            ids = [f.result(timeout=60) for f in rest]  # none fails
        records = segments(config, log)
        assert len(records) >= 2 and ids[-1].segment_id > segment.segment_id
        assert not ensemble(records[-1]) & {
            quorum_pool.nodes[i].config.node.id for i in members[:2]
        }
        with log.open_reader(wp.EARLIEST) as reader:
            got = [m.payload for m in iter(lambda: reader.read_next(timeout=5), None)]
        assert got == [b"a-%d" % i for i in range(100)] + [b"b-%d" % i for i in range(300)]
