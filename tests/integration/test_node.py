"""``woodpecker node`` as a real process against the real etcd, spoken to over TCP."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from chaos.nodes import START_TIMEOUT, Connection, NodeProcess, held, start_ensemble

from tests.conftest import ConfigFactory
from woodpecker.deployment import Deployment
from woodpecker.errors import QuorumUnavailableError
from woodpecker.format import decode_messages, encode_batch_message, iter_payloads
from woodpecker.quorum import wire
from woodpecker.quorum.client import EnsembleMember, QuorumSegment, SegmentReplicator
from woodpecker.quorum.recovery import Recovered, recover_segment
from woodpecker.quorum.wire import Reply, Status


def test_a_node_registers_with_its_lease_and_sigterm_deregisters_it(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node()
    record = node.wait_registered()
    assert (record.node_id, record.state, record.durability) == ("n1", "serving", "memory")
    assert Connection(node.port, node.config).welcome["incarnation"] == record.incarnation
    listed = subprocess.run(
        [sys.executable, "-m", "woodpecker", "nodes", "--json"],
        env=node.env,
        capture_output=True,
        check=True,
    )
    assert [n["address"] for n in orjson.loads(listed.stdout)] == [record.address]

    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=10) == 0
    # revoked, not expired: gone at once, well before the 10 s lease would lapse
    assert node.registered() == []


def test_a_second_node_with_the_same_id_is_refused(start_node: Callable[..., NodeProcess]) -> None:
    first = start_node("same")
    first.wait_registered()
    second = start_node("same")
    assert second.proc.wait(timeout=START_TIMEOUT) == 1
    assert "node.id: 'same' is registered already" in second.stderr()
    assert [n.address for n in first.registered()] == [f"127.0.0.1:{first.port}"]


def test_append_fence_read_and_lac_over_the_wire(start_node: Callable[..., NodeProcess]) -> None:
    node = start_node()
    node.wait_registered()
    conn = Connection(node.port, node.config)
    assert conn.append(0, 1, 0, [b"a", b"b"], lac=-1).status == Status.OK
    reply = conn.append(0, 1, 2, [b"c"], lac=1)
    assert (reply.status, reply.last, reply.lac) == (Status.OK, 2, 1)
    assert conn.read(0, 1, 0) == [b"a", b"b"]  # up to the LAC
    assert conn.call(wire.LAC, 0, 1, wire.lac_body(2)).lac == 2
    assert conn.read(0, 1, 0) == [b"a", b"b", b"c"]

    recovery = Connection(node.port, node.config)
    fenced = recovery.call(wire.FENCE, 0, 2)
    assert (fenced.status, fenced.last, fenced.fence_epoch) == (Status.OK, 2, 2)
    stale = conn.append(0, 1, 3, [b"d"], lac=2)
    assert (stale.status, stale.fence_epoch) == (Status.FENCED, 2)
    assert recovery.call(wire.FENCE, 9, 2).status == Status.UNKNOWN  # never "empty"


@pytest.mark.parametrize("durability", ["disk", "memory"])
def test_a_node_killed_after_answering_keeps_its_answers_or_refuses_the_segment(
    start_node: Callable[..., NodeProcess], tmp_path: Path, durability: str
) -> None:
    data_dir = str(tmp_path / "node-data")
    node = start_node("before", quorum_durability=durability, node_data_dir=data_dir)
    record = node.wait_registered()
    conn = Connection(node.port, node.config)
    assert conn.append(0, 1, 0, [b"a", b"b"], lac=-1).status == Status.OK
    assert conn.call(wire.FENCE, 0, 2).status == Status.OK
    assert conn.append(0, 2, 2, [b"c"], lac=1).status == Status.OK
    node.proc.kill()  # no drain, no flush: only what was durable before each answer survives
    node.proc.wait()

    # the dead node's registration lives until its lease expires: restart under a new id
    again = start_node("after", quorum_durability=durability, node_data_dir=data_dir)
    restarted = again.wait_registered()
    conn = Connection(again.port, again.config)
    reply = conn.call(wire.FENCE, 0, 2)
    if durability == "disk":
        assert (reply.status, reply.last, reply.incarnation) == (Status.OK, 2, record.incarnation)
        assert conn.append(0, 1, 3, [b"d"], lac=2).status == Status.FENCED  # the fence survived
    else:  # nothing survived, and the node says so rather than answering "empty"
        assert (reply.status, reply.last) == (Status.UNKNOWN, -1)
        assert restarted.incarnation != record.incarnation


def test_a_waiting_read_is_answered_when_the_lac_moves_not_at_its_timeout(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node()
    node.wait_registered()
    writer = Connection(node.port, node.config)
    assert writer.append(0, 1, 0, [b"a", b"b"], lac=-1).status == Status.OK
    reader = Connection(node.port, node.config)

    def long_poll(wait_ms: int) -> tuple[Reply, float]:
        started = time.monotonic()
        reply = reader.call(wire.READ, 0, 1, wire.READ_BODY.pack(0, 1 << 20, wait_ms))
        return reply, time.monotonic() - started

    # control: nothing is acked, so the read waits its whole (short) wait and finds nothing
    reply, waited = long_poll(300)
    assert (reply.status, reply.batches, waited >= 0.3) == (Status.OK, (), True)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        polling = pool.submit(long_poll, 20_000)
        time.sleep(0.3)
        assert not polling.done()
        assert writer.call(wire.LAC, 0, 1, wire.lac_body(1)).status == Status.OK
        reply, waited = polling.result(timeout=10)
    assert reply.status == Status.OK and waited < 10  # pushed by the LAC, not timed out
    assert [p for b in reply.batches for p in iter_payloads(decode_messages(b.data))] == [
        b"a",
        b"b",
    ]


def test_a_malformed_or_oversized_request_drops_only_its_connection(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node(node_max_request_bytes="1MiB")
    node.wait_registered()
    good = Connection(node.port, node.config)
    assert good.append(0, 1, 0, [b"x"], lac=-1).status == Status.OK

    bad_type = Connection(node.port, node.config)
    bad_type.send(b"\x63" + bytes(40))
    assert bad_type.closed_by_peer()

    short = Connection(node.port, node.config)
    short.send(wire.request(wire.FENCE, 1, 1, 0, 1) + b"extra")
    assert short.closed_by_peer()

    oversized = Connection(node.port, node.config)
    oversized.sock.sendall(wire.LENGTH.pack((1 << 20) + 1) + bytes(64))
    assert oversized.closed_by_peer()

    no_hello = socket.create_connection(("127.0.0.1", node.port), timeout=5.0)
    no_hello.sendall(wire.LENGTH.pack(3) + b"{}x")
    assert no_hello.recv(1) == b""

    assert good.append(0, 1, 1, [b"y"], lac=0).status == Status.OK  # still served
    assert node.proc.poll() is None


def test_a_writer_of_another_deployment_is_refused(
    start_node: Callable[..., NodeProcess], make_config: ConfigFactory
) -> None:
    node = start_node()
    node.wait_registered()
    other = make_config(etcd_prefix="/wp-test-other-deployment")
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=5.0)
    sock.sendall(b"".join(wire.frame(wire.hello(Deployment.of(other)))))
    data = sock.recv(1 << 16)
    kind, body = wire.decode_control(data[wire.LENGTH.size :])
    assert (kind, body["error"]) == (wire.REFUSED, "ConfigError")
    assert "/wp-test-other-deployment" in body["message"]


# ---- the library's replicator against three real nodes -----------------------------------


def replicate(
    nodes: list[NodeProcess],
    members: list[EnsembleMember],
    batches: int,
    *,
    ack: int,
    timeout: float,
    seg: int = 0,
    fault: Callable[[], None] | None = None,
) -> tuple[list[int | BaseException], float]:
    """Append ``batches`` batches of 2 entries at once; each one's LAC or error, and the time.

    ``fault`` runs once every link is open (a node stopped or killed mid-segment).
    """

    async def run() -> tuple[list[int | BaseException], float]:
        replicator = await SegmentReplicator.open(
            members,
            Deployment.of(nodes[0].config),
            QuorumSegment(1, seg, epoch=1, ack=ack, node_timeout=0.5),
        )
        if fault is not None:
            fault()
        started = time.monotonic()
        futures = [
            replicator.append(
                encode_batch_message([b"%d" % (2 * i), b"%d" % (2 * i + 1)]), 2, timeout
            )
            for i in range(batches)
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        elapsed = time.monotonic() - started
        await replicator.close()
        return results, elapsed

    return asyncio.run(asyncio.wait_for(run(), 60))  # a test that cannot hang


def test_batches_are_acked_in_order_once_two_of_three_nodes_hold_them(
    start_node: Callable[..., NodeProcess],
) -> None:
    nodes, members = start_ensemble(start_node)
    try:
        stop = functools.partial(nodes[2].proc.send_signal, signal.SIGSTOP)
        results, _ = replicate(nodes, members, 40, ack=2, timeout=10.0, fault=stop)
        assert results == [2 * i + 1 for i in range(40)]  # every LAC, in order
        nodes[2].proc.send_signal(signal.SIGCONT)
        for node in nodes[:2]:
            assert held(node, 0) == 79
        # control: the same stopped replica with ack=3 acks nothing, and fails at the deadline
        results, elapsed = replicate(nodes, members, 3, ack=3, timeout=1.0, seg=1, fault=stop)
        assert all(isinstance(r, QuorumUnavailableError) for r in results), results
        assert 1.0 <= elapsed < 5.0
    finally:
        nodes[2].proc.send_signal(signal.SIGCONT)


def test_two_nodes_killed_give_quorum_unavailable_within_the_deadline(
    start_node: Callable[..., NodeProcess],
) -> None:
    nodes, members = start_ensemble(start_node)
    acked, _ = replicate(nodes, members, 2, ack=2, timeout=10.0)
    assert acked == [1, 3]

    def kill_two() -> None:
        for node in nodes[:2]:
            node.proc.kill()
            node.proc.wait()

    results, elapsed = replicate(nodes, members, 2, ack=2, timeout=1.0, seg=1, fault=kill_two)
    assert all(isinstance(r, QuorumUnavailableError) for r in results), results
    assert 1.0 <= elapsed < 5.0
    with pytest.raises(QuorumUnavailableError, match="1 of 3 nodes answer, 2 needed"):
        replicate(nodes, members, 1, ack=2, timeout=1.0, seg=2)  # a new segment cannot open
    assert held(nodes[2], 0) == 3  # what was acked before is still held


# ---- recovery of an unsealed segment by a new writer ------------------------------------


def recover(nodes: list[NodeProcess], members: list[EnsembleMember], epoch: int) -> Recovered:
    coroutine = recover_segment(
        members,
        Deployment.of(nodes[0].config),
        QuorumSegment(1, 0, epoch=epoch, ack=2, node_timeout=1.0),
    )
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def test_recovery_keeps_acked_entries_that_a_minimum_rule_would_lose(
    start_node: Callable[..., NodeProcess],
) -> None:
    nodes, members = start_ensemble(start_node)
    a, b, c = (Connection(node.port, node.config) for node in nodes)
    for conn in (a, b, c):
        assert conn.append(0, 1, 0, [b"0", b"1"], lac=-1).status == Status.OK
        assert conn.append(0, 1, 2, [b"2", b"3"], lac=1).status == Status.OK
    for conn in (b, c):  # entries 4-5: acked, held by b and c only
        assert conn.append(0, 1, 4, [b"4", b"5"], lac=3).status == Status.OK
    nodes[2].proc.send_signal(signal.SIGSTOP)  # c, holding the most, is unreachable
    try:
        recovered = recover(nodes, members, epoch=2)
    finally:
        nodes[2].proc.send_signal(signal.SIGCONT)
    assert recovered.replies == {"q0": 3, "q1": 5}
    assert min(recovered.replies.values()) == 3  # where the reference system would seal
    assert (recovered.last_entry, recovered.lowest_lac, recovered.copied) == (5, 1, 1)
    assert held(nodes[0], 0) == 5  # a now holds 4-5 too: two nodes hold every entry
    assert Connection(nodes[0].port, nodes[0].config).read(0, 2, 0) == [b"%d" % i for i in range(6)]
    assert a.append(0, 1, 6, [b"6"], lac=5).status == Status.FENCED  # the old writer is out


def test_recovery_counts_no_reply_from_a_restarted_memory_node(
    start_node: Callable[..., NodeProcess],
) -> None:
    nodes, members = start_ensemble(start_node)
    for node in nodes:
        assert Connection(node.port, node.config).append(0, 1, 0, [b"x"], lac=-1).status == (
            Status.OK
        )
    nodes[1].proc.kill()
    nodes[1].proc.wait()
    restarted = start_node("q1-again", port=nodes[1].port)  # same address, memory lost
    restarted.wait_registered()
    nodes[2].proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(QuorumUnavailableError, match="1 valid fence replies of 3 nodes, 2"):
            recover(nodes, members, epoch=2)
    finally:
        nodes[2].proc.send_signal(signal.SIGCONT)
    # control: with the paused node back, two valid replies recover the segment
    assert recover(nodes, members, epoch=3).last_entry == 0


def test_recovery_counts_a_node_of_the_listed_incarnation_that_never_got_an_entry(
    start_node: Callable[..., NodeProcess],
) -> None:
    nodes, members = start_ensemble(start_node)
    for node in nodes[:2]:  # the third never received anything of the segment
        assert Connection(node.port, node.config).append(0, 1, 0, [b"0", b"1"], lac=-1).status == (
            Status.OK
        )
    nodes[0].proc.send_signal(signal.SIGSTOP)
    try:
        recovered = recover(nodes, members, epoch=2)
    finally:
        nodes[0].proc.send_signal(signal.SIGCONT)
    # its UNKNOWN counts as "holds nothing" (last -1): it has lived since the segment opened
    assert recovered.replies == {"q1": 1, "q2": -1}
    assert (recovered.last_entry, recovered.copied) == (1, 1)
    assert held(nodes[2], 0) == 1  # brought up from entry 0, so two nodes hold every entry
