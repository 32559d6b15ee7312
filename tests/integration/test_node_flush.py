"""Quorum nodes flush acked ranges to object storage: one flusher per segment by a
lease-bound claim, one commit per range by CAS, then every node forgets the range."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from chaos.nodes import Connection, NodeProcess

from woodpecker.format import decode_block, iter_payloads
from woodpecker.meta import MetaStore
from woodpecker.meta.flush import flush_cursor
from woodpecker.quorum import wire
from woodpecker.quorum.wire import Status
from woodpecker.storage import open_store

PAYLOAD = 600  # two entries make a batch over quorum.flush_bytes (1 KiB): due at once


def payloads(first: int, count: int, size: int = PAYLOAD) -> list[bytes]:
    return [b"%d:" % i + bytes(size) for i in range(first, first + count)]


def wait_for(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {within:g}s"
        time.sleep(0.05)


def flusher_of(meta: MetaStore) -> str:
    kv = meta.etcd.get("test", meta.keys.flusher(1, 0))
    assert kv is not None
    return kv[0].decode()


def test_nodes_flush_acked_ranges_once_and_forget_them(
    start_node: Callable[..., NodeProcess],
) -> None:
    settings = {"quorum_flush_bytes": "1KiB", "quorum_flush_interval": 60.0, "etcd_lease_ttl": 2}
    nodes = [start_node(f"f{i}", **settings) for i in range(3)]
    for node in nodes:
        node.wait_registered()
    meta = nodes[0].meta
    store = open_store(nodes[0].config)
    conns = [Connection(node.port, node.config) for node in nodes]
    for conn in conns:
        assert conn.append(0, 1, 0, payloads(0, 2), lac=-1).status == Status.OK
        assert conn.append(0, 1, 2, payloads(2, 2), lac=-1).status == Status.OK
        assert conn.append(0, 1, 4, payloads(4, 2), lac=3).status == Status.OK  # 0-3 acked

    wait_for(lambda: flush_cursor(meta, 1, 0).cursor.next_entry == 4, "flush of entries 0-3")
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
        assert conn.call(wire.LAC, 0, 1, wire.LAC_BODY.pack(5)).status == Status.OK
    wait_for(lambda: flush_cursor(meta, 1, 0).cursor.next_entry == 6, "takeover of the flush")
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
    node.wait_registered()
    conn = Connection(node.port, node.config)
    assert conn.append(0, 1, 0, payloads(0, 3, size=10), lac=2).status == Status.OK
    time.sleep(0.5)  # several flush ticks: nothing is due (small, and not old enough)
    assert flush_cursor(node.meta, 1, 0).cursor.next_entry == 0  # control
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=30) == 0
    assert flush_cursor(node.meta, 1, 0).cursor.next_entry == 3
    assert node.registered() == []
