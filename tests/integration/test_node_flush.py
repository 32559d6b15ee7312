"""Quorum nodes flush acked ranges to object storage: one flusher per segment by a
lease-bound claim, one commit per range by CAS, then every node forgets the range; a
sealed segment is flushed at once and then forgotten altogether, and a segment deleted
from etcd is forgotten, never flushed back into existence."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from pathlib import Path

from chaos.nodes import Connection, NodePool, NodeProcess, declare_segments
from chaos.processes import wait_until

import woodpecker as wp
from woodpecker.format import decode_block, iter_payloads
from woodpecker.meta import BlockRecord, MetaStore
from woodpecker.meta.flush import claim_flush, commit_flush, flush_cursor
from woodpecker.meta.records import EnsembleMember, SegmentState
from woodpecker.quorum import wire
from woodpecker.quorum.tail import TailRead, TailReads
from woodpecker.quorum.wire import Status
from woodpecker.storage import ObjectStore, open_store

PAYLOAD = 600  # two entries make a batch over quorum.flush_bytes (1 KiB): due at once


def payloads(first: int, count: int, size: int = PAYLOAD) -> list[bytes]:
    return [b"%d:" % i + bytes(size) for i in range(first, first + count)]


def members_of(nodes: list[NodeProcess]) -> list[EnsembleMember]:
    records = [node.wait_registered() for node in nodes]
    return [EnsembleMember(r.node_id, r.address, r.incarnation) for r in records]


def held_segments(node: NodeProcess) -> tuple[list[tuple[int, int]], int]:
    """What a node's registry record says it holds: (log, segment) ids, buffered bytes."""
    (record,) = [r for r in node.registered() if r.pid == node.proc.pid]
    return sorted((s[0], s[1]) for s in record.segments), record.buffered_bytes


def flushed_payloads(meta: MetaStore, store: ObjectStore, segment_id: int) -> list[bytes]:
    return [
        p
        for b in meta.list_blocks(1, segment_id)
        for p in iter_payloads(decode_block(store.get(b.key), expected_checksum=b.checksum))
    ]


def flusher_of(meta: MetaStore) -> str:
    kv = meta.etcd.get("test", meta.keys.flusher(1, 0))
    assert kv is not None
    return kv[0].decode()


def test_nodes_flush_acked_ranges_once_and_forget_them(
    start_node: Callable[..., NodeProcess],
) -> None:
    settings = {"quorum_flush_bytes": "1KiB", "quorum_flush_interval": 60.0, "etcd_lease_ttl": 2}
    nodes = [start_node(f"f{i}", **settings) for i in range(3)]
    meta = nodes[0].meta
    declare_segments(meta, members_of(nodes), [0])
    store = open_store(nodes[0].config)
    conns = [Connection(node.port, node.config) for node in nodes]
    for conn in conns:
        assert conn.append(0, 1, 0, payloads(0, 2), lac=-1).status == Status.OK
        assert conn.append(0, 1, 2, payloads(2, 2), lac=-1).status == Status.OK
        assert conn.append(0, 1, 4, payloads(4, 2), lac=3).status == Status.OK  # 0-3 acked

    wait_until(
        lambda: flush_cursor(meta, 1, 0).cursor.next_entry == 4, 30.0, "flush of entries 0-3"
    )
    blocks = meta.list_blocks(1, 0)
    assert [b.first_entry_id for b in blocks] == [0, 2]  # objects of about quorum.flush_bytes
    flushed = [
        p
        for b in blocks
        for p in iter_payloads(decode_block(store.get(b.key), expected_checksum=b.checksum))
    ]
    assert flushed == payloads(0, 4)
    assert [o.key for o in store.list("1/0/")] == [b.key for b in blocks]  # one upload each
    claimant = flusher_of(meta)
    by_id = {f"f{i}": (node, conn) for i, (node, conn) in enumerate(zip(nodes, conns, strict=True))}
    # the flusher forgot what it committed: readers of entry 0 go to object storage
    assert by_id[claimant][1].call(wire.READ, 0, 1, wire.READ_BODY.pack(0, 1 << 20, 0)).status == (
        Status.FLUSHED
    )

    # the flusher dies: its claim goes with its lease, another node flushes what follows
    dead, _ = by_id.pop(claimant)
    dead.proc.kill()
    dead.proc.wait()
    for _, conn in by_id.values():
        assert conn.call(wire.LAC, 0, 1, wire.lac_body(5)).status == Status.OK
    wait_until(
        lambda: flush_cursor(meta, 1, 0).cursor.next_entry == 6, 30.0, "takeover of the flush"
    )
    successor = flusher_of(meta)
    assert successor in by_id
    assert [b.first_entry_id for b in meta.list_blocks(1, 0)] == [0, 2, 4]

    # draining: the other survivor is asked to stop; what it holds below the LAC is flushed
    # already, so it leaves at once and deregisters
    other = next(node for node_id, (node, _) in by_id.items() if node_id != successor)
    other.proc.send_signal(signal.SIGTERM)
    assert other.proc.wait(timeout=30) == 0
    store.close()


def test_a_draining_node_flushes_what_it_holds_before_it_leaves(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node("drain", quorum_flush_bytes="1MiB", quorum_flush_interval=60.0)
    declare_segments(node.meta, members_of([node]), [0], ack=1)
    conn = Connection(node.port, node.config)
    assert conn.append(0, 1, 0, payloads(0, 3, size=10), lac=2).status == Status.OK
    time.sleep(0.5)  # several flush ticks: nothing is due (small, and not old enough)
    assert flush_cursor(node.meta, 1, 0).cursor.next_entry == 0  # control
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=30) == 0
    assert flush_cursor(node.meta, 1, 0).cursor.next_entry == 3
    assert node.registered() == []


def test_a_sealed_segment_is_flushed_at_once_then_forgotten_by_every_node(
    start_node: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    settings = {"quorum_flush_interval": 60.0, "etcd_lease_ttl": 2}
    data_dir = tmp_path / "disk-node"
    nodes = [
        start_node("s0", **settings),
        start_node("s1", **settings),
        start_node("s2", quorum_durability="disk", node_data_dir=str(data_dir), **settings),
    ]
    meta = nodes[0].meta
    declare_segments(meta, members_of(nodes), [0, 1], sealed_at=3)  # as the writer's seal
    store = open_store(nodes[0].config)
    conns = [Connection(node.port, node.config) for node in nodes]
    for conn in conns:
        for seg in (0, 1):
            assert conn.append(seg, 1, 0, payloads(0, 2), lac=-1).status == Status.OK
            assert conn.append(seg, 1, 2, payloads(2, 2), lac=-1).status == Status.OK
            assert conn.append(seg, 1, 4, payloads(4, 1), lac=-1).status == Status.OK  # unacked
    segment_files = data_dir / "segments"
    assert sorted(p.name for p in segment_files.iterdir()) == ["1-0.wal", "1-1.wal"]
    both = [(1, 0), (1, 1)]
    wait_until(lambda: all(held_segments(n)[0] == both for n in nodes), 30.0, "registry records")

    told = time.monotonic()
    for conn in conns:  # segment 1 (the control) hears its final LAC without the flag
        assert conn.call(wire.LAC, 1, 1, wire.lac_body(3)).status == Status.OK
        assert conn.call(wire.LAC, 0, 1, wire.lac_body(3, sealed=True)).status == Status.OK
    wait_until(lambda: flush_cursor(meta, 1, 0).cursor.next_entry == 4, 20.0, "flush at seal")
    print(f"segment flushed {time.monotonic() - told:.2f}s after the sealed LAC")
    assert flushed_payloads(meta, store, 0) == payloads(0, 4)  # never entry 4, above the seal
    # every node forgets it; the control, told without the flag, stays and is not flushed
    # before quorum.flush_interval (60 s)
    wait_until(
        lambda: all(held_segments(n)[0] == [(1, 1)] for n in nodes),
        30.0,
        "every node forgets the sealed, flushed segment",
    )
    assert not (segment_files / "1-0.wal").exists()
    assert flush_cursor(meta, 1, 1).cursor.next_entry == 0

    for conn in conns:
        assert conn.call(wire.LAC, 1, 1, wire.lac_body(3, sealed=True)).status == Status.OK
    wait_until(
        lambda: all(held_segments(node) == ([], 0) for node in nodes),
        30.0,
        "nodes that hold nothing once every segment is sealed and flushed",
    )
    assert flushed_payloads(meta, store, 1) == payloads(0, 4)
    assert list(segment_files.iterdir()) == []
    assert conns[2].call(wire.LAC, 0, 1, wire.lac_body(-1)).status == Status.UNKNOWN
    store.close()

    # a reader sent to the nodes (its snapshot predates the last flush) goes back to etcd
    # once replicas - ack + 1 members say UNKNOWN of the sealed segment
    tail = TailReads(nodes[0].config, 1, "sealed")
    try:
        sealed = meta.get_segment(1, 0)
        assert sealed is not None
        assert tail.read(sealed, 0) == TailRead(None, flushed=True)
        active = dataclasses.replace(sealed, state=SegmentState.ACTIVE)
        assert tail.read(active, 0) == TailRead(None)  # control: its first append may come
        for node in nodes[1:]:
            node.stop()
        assert tail.read(sealed, 0) == TailRead(None)  # control: one UNKNOWN proves nothing
    finally:
        tail.close()


def test_a_node_that_missed_the_seal_or_the_deletion_learns_it_from_etcd(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node("c0", quorum_flush_interval=1.0, etcd_lease_ttl=2)
    meta = node.meta
    members = members_of([node])
    declare_segments(meta, members, [0], ack=1, sealed_at=1)  # the node is never told
    declare_segments(meta, members, [1], ack=1)
    # retention deleted segment 1 (its record; nothing was flushed: no cursor key)
    meta.etcd.txn("test", [], [meta.etcd.ops.delete(meta.keys.segment(1, 1))])
    conn = Connection(node.port, node.config)
    for seg in (0, 1):
        assert conn.append(seg, 1, 0, payloads(0, 2), lac=1).status == Status.OK

    def forgotten(seg: int) -> bool:
        return conn.call(wire.LAC, seg, 1, wire.lac_body(-1)).status == Status.UNKNOWN

    wait_until(lambda: forgotten(0) and forgotten(1), 30.0, "a node that forgot both segments")
    assert flush_cursor(meta, 1, 0).cursor.next_entry == 2  # the sealed one, flushed first
    assert flush_cursor(meta, 1, 1).revision == 0  # the deleted one: no cursor put back
    assert meta.list_blocks(1, 1) == []
    wait_until(lambda: held_segments(node) == ([], 0), 30.0, "its registry record")

    # a flush that read the cursor before the deletion commits nothing after it
    declare_segments(meta, members, [2], ack=1)
    read = flush_cursor(meta, 1, 2)
    assert claim_flush(meta, 1, 2, "x", 0) == "x"
    block = BlockRecord(
        log_id=1,
        segment_id=2,
        block_id=0,
        first_entry_id=0,
        entry_count=1,
        size=10,
        key="1/2/orphan.arrow",
        offset=0,
        length=10,
        checksum=0,
    )
    meta.etcd.txn("test", [], [meta.etcd.ops.delete(meta.keys.segment(1, 2))])
    assert not commit_flush(meta, "x", read, block)
    assert (flush_cursor(meta, 1, 2).revision, meta.list_blocks(1, 2)) == (0, [])
    declare_segments(meta, members, [2], ack=1)  # control: with its record it commits
    assert commit_flush(meta, "x", flush_cursor(meta, 1, 2), block)


def test_a_closed_quorum_log_leaves_nothing_on_its_nodes(
    quorum_pool: NodePool, backend: str, unique: str
) -> None:
    payloads = [b"zero-disk %04d" % i for i in range(200)]
    with wp.Client(quorum_pool.config()) as client:
        log = client.open_log(f"zero-disk-{unique}", create=True)

        def holders() -> int:
            return sum(
                any(log_id == log.log_id for log_id, _ in held_segments(node)[0])
                for node in quorum_pool.nodes
            )

        with log.open_writer() as writer:
            futures = [writer.write_async(p) for p in payloads]
            assert [f.result().entry_id for f in futures] == list(range(200))
            wait_until(lambda: holders() == 3, 30.0, "the nodes' registry records list the log")
        closed = time.monotonic()
        wait_until(lambda: holders() == 0, 30.0, "nodes that hold nothing of the closed log")
        print(f"nodes forgot the log {time.monotonic() - closed:.2f}s after its writer closed")
        with log.open_reader(wp.EARLIEST) as reader:  # every entry from object storage
            assert [reader.read_next(timeout=10).payload for _ in payloads] == payloads
    assert quorum_pool.intact()
