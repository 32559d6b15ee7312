"""The fault proxy between a writer and one of three quorum nodes: latency, blackhole, reset.

Acks come from the two healthy nodes whatever the third does; the third leaves the
segment's ensemble when it stops answering within ``node_timeout`` (blackhole) or its
connection breaks (reset), and not for being slow (latency).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

from chaos.faultproxy import FaultProxy
from chaos.nodes import NodeProcess, start_ensemble
from woodpecker.deployment import Deployment
from woodpecker.format import encode_batch_message
from woodpecker.quorum.client import QuorumSegment, SegmentReplicator

BATCHES = 10


async def append_all(replicator: SegmentReplicator) -> list[int]:
    """BATCHES one-entry batches at once; their LACs (the append deadline is generous)."""
    first = replicator.lac + 1
    message = [encode_batch_message([b"%d" % (first + i)]) for i in range(BATCHES)]
    return list(await asyncio.gather(*(replicator.append(m, 1, 30.0) for m in message)))


async def wait_until(check: Callable[[], bool], within: float) -> float:
    """Seconds until ``check()`` held; fails the test past ``within``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_acks_go_on_whatever_one_node_behind_the_proxy_does(
    start_node: Callable[..., NodeProcess],
) -> None:
    nodes, members = start_ensemble(start_node)
    host, port = nodes[2].config.node_listen
    with FaultProxy(host, port) as proxy:
        members[2] = dataclasses.replace(members[2], address=proxy.endpoint)
        deployment = Deployment.of(nodes[0].config)
        slow = members[2].node_id

        async def phase(segment_id: int, node_timeout: float) -> SegmentReplicator:
            segment = QuorumSegment(1, segment_id, epoch=1, ack=2, node_timeout=node_timeout)
            return await SegmentReplicator.open(members, deployment, segment)

        async def run() -> None:
            # latency: acked by the two others; the slow one catches up and stays
            replicator = await phase(0, node_timeout=10.0)
            proxy.set(latency=1.0)
            assert await append_all(replicator) == list(range(BATCHES))
            assert replicator.quorum.holders(BATCHES - 1) == 2  # acked without the slow node
            await wait_until(lambda: replicator.quorum.holders(BATCHES - 1) == 3, within=10.0)
            assert slow in replicator.live
            await replicator.close()
            proxy.heal()

            # blackhole: acks go on; the node leaves once node_timeout passed without a reply
            replicator = await phase(1, node_timeout=0.5)
            proxy.set(blackhole=True)
            assert await append_all(replicator) == list(range(BATCHES))
            await wait_until(lambda: slow not in replicator.live, within=10.0)
            proxy.heal()
            assert await append_all(replicator) == list(range(BATCHES, 2 * BATCHES))
            assert slow not in replicator.live  # out for the rest of the segment
            await replicator.close()

            # reset: the broken connection drops the node at once, long before node_timeout
            replicator = await phase(2, node_timeout=60.0)
            assert proxy.reset_all() == 1
            assert await append_all(replicator) == list(range(BATCHES))
            assert await wait_until(lambda: slow not in replicator.live, within=10.0) < 10.0
            await replicator.close()

        asyncio.run(asyncio.wait_for(run(), 120))
