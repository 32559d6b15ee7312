"""QuorumBuffer mode end to end: a log written through the client is replicated to its
segment's ensemble of real quorum nodes, acked by quorum, sealed at its LAC, flushed by
the nodes to object storage and read back; etcd sees no commit per append."""

from __future__ import annotations

from collections.abc import Callable

from chaos.nodes import NodeProcess
from chaos.processes import wait_until

import woodpecker as wp
from woodpecker.meta import MetaStore, SegmentState
from woodpecker.meta.flush import flush_cursor

FAST = {"quorum_flush_interval": 0.2, "etcd_lease_ttl": 2}


def start_pool(
    start_node: Callable[..., NodeProcess], backend: str, n: int = 3
) -> list[NodeProcess]:
    nodes = [start_node(f"q{i}", storage_type=backend, **FAST) for i in range(n)]
    for node in nodes:
        node.wait_registered()
    return nodes


def test_a_quorum_log_is_acked_by_its_nodes_and_flushed_to_storage(
    start_node: Callable[..., NodeProcess], make_config, backend: str
) -> None:
    start_pool(start_node, backend)
    config = make_config(backend, buffer_mode="quorum", **FAST)
    payloads = [b"e%05d" % i + bytes(100) for i in range(500)]
    with wp.Client(config) as client:
        log = client.open_log("q", create=True)
        with log.open_writer() as writer:
            ids = [writer.write(p) for p in payloads[:10]]
            futures = [writer.write_async(p) for p in payloads[10:]]
            ids += [f.result() for f in futures]
        assert [i.entry_id for i in ids] == list(range(500))
        meta = MetaStore(config)
        wait_until(
            lambda: [s.state for s in meta.list_segments(log.log_id)] == [SegmentState.SEALED],
            30.0,
            "the seal of the closed writer's segment",
        )
        (segment,) = meta.list_segments(log.log_id)
        assert segment.quorum and segment.lac == 499 and segment.ack == 2
        assert {m.node_id for m in segment.ensemble or []} == {"q0", "q1", "q2"}
        kv = meta.etcd.get("test", meta.keys.segment(log.log_id, 0))
        assert kv is not None and kv[1].version == 2  # its create and its seal, nothing per append
        wait_until(
            lambda: flush_cursor(meta, log.log_id, 0).cursor.next_entry == 500,
            30.0,
            "the nodes' flush of the sealed segment",
        )
        with log.open_reader(wp.EARLIEST) as reader:
            got = reader.read_until().column("payload").to_pylist()
        assert got == payloads
