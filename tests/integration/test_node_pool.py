"""The pool of quorum nodes the integration tests share (``quorum_pool`` in conftest)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from chaos.nodes import Connection, NodePool, NodePools

import woodpecker as wp
from woodpecker.config import Config
from woodpecker.deployment import Deployment
from woodpecker.meta import MetaStore
from woodpecker.quorum import wire


def handshake(port: int, deployment: Deployment) -> int:
    """The kind of the node's answer to a HELLO for ``deployment`` (WELCOME or REFUSED)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(b"".join(wire.frame(wire.hello(deployment))))
        (size,) = wire.LENGTH.unpack(sock.recv(wire.LENGTH.size, socket.MSG_WAITALL))
        kind, _ = wire.decode_control(sock.recv(size, socket.MSG_WAITALL))
        return kind


def test_the_pool_is_three_registered_nodes_serving_the_tests_deployment(
    quorum_pool: NodePool, backend: str, make_config: Callable[..., Config]
) -> None:
    config = quorum_pool.config()
    assert (config.storage.type, config.buffer.mode) == (backend, "quorum")
    records = quorum_pool.nodes[0].registered()
    assert sorted(r.address for r in records) == sorted(
        f"127.0.0.1:{n.port}" for n in quorum_pool.nodes
    )
    assert len(records) == 3 and {r.durability for r in records} == {"memory"}
    for node in quorum_pool.nodes:
        assert handshake(node.port, Deployment.of(config)) == wire.WELCOME
        # the control: a test's own deployment (make_config) is another one, refused
        assert handshake(node.port, Deployment.of(make_config(backend))) == wire.REFUSED


def test_an_intact_pool_is_reused_and_a_changed_one_replaced(node_pools: NodePools) -> None:
    pool = node_pools.get("local")
    node_pools.release("local")
    assert node_pools.get("local") is pool  # left as found: the next test reuses it

    before = Connection(pool.nodes[1].port, pool.config()).welcome["incarnation"]
    killed = pool.nodes[1]
    restarted = pool.restart(1)
    assert killed.proc.returncode is not None and restarted.port == killed.port
    after = Connection(restarted.port, pool.config()).welcome["incarnation"]
    assert after != before  # memory durability: a new incarnation on the same address

    spare = pool.spare()
    drained = pool.terminate(0)
    assert drained.proc.returncode == 0  # SIGTERM: drained and deregistered at once
    live = {r.address for r in spare.registered()}
    assert f"127.0.0.1:{spare.port}" in live and f"127.0.0.1:{drained.port}" not in live

    node_pools.release("local")
    fresh = node_pools.get("local")
    assert fresh is not pool
    assert Deployment.of(fresh.config()) != Deployment.of(pool.config())
    assert all(node.proc.poll() is not None for node in pool.nodes)
    assert fresh.intact()


def test_a_quorum_log_written_through_the_pool_is_read_back(
    quorum_pool: NodePool, backend: str
) -> None:
    payloads = [b"pooled %04d" % i for i in range(300)]
    with wp.Client(quorum_pool.config()) as client:
        log = client.open_log(f"pooled-{backend}", create=True)
        with log.open_writer() as writer:
            futures = [writer.write_async(p) for p in payloads]
            assert [f.result().entry_id for f in futures] == list(range(300))
        with MetaStore(quorum_pool.config()) as meta:
            (segment,) = meta.list_segments(log.log_id)
        ensemble = {m.node_id for m in segment.ensemble or []}
        assert ensemble == {n.config.node.id for n in quorum_pool.nodes}
        with log.open_reader(wp.EARLIEST) as reader:
            assert [reader.read_next(timeout=10).payload for _ in payloads] == payloads
    assert quorum_pool.intact()  # left as found: the next test reuses these nodes
