"""Which nodes hold a new quorum segment: the live registered ones holding the least.

Chosen when the segment is created and recorded in its segment record by that create's
CAS (docs/quorum.md, "Write path and ack"). A node this writer saw fail recently comes
last, so that a roll after a node failure does not pick the same node again while its
registration lingers until its lease expires; it is still chosen rather than none, so
that writing resumes once a node that only stalled answers again.
"""

from __future__ import annotations

import random
from collections.abc import Container, Sequence

from woodpecker.errors import QuorumUnavailableError
from woodpecker.meta.nodes import NodeRecord

SERVING = "serving"

NodeKey = tuple[str, int, int]
"""One run of one node: its id, incarnation and start time (a disk node restarted keeps
its incarnation, yet is a new process worth trying again)."""


def node_key(node: NodeRecord) -> NodeKey:
    return (node.node_id, node.incarnation, node.started_ms)


def choose_ensemble(
    nodes: Sequence[NodeRecord],
    replicas: int,
    ack: int,
    suspected: Container[NodeKey] = (),
) -> list[NodeRecord]:
    """Up to ``replicas`` serving nodes, fewest buffered bytes first (ties at random), the
    ``suspected`` ones (they failed a segment lately) only where healthy ones run short: a
    node that stalled for a while may answer again, and connecting tells. Raises
    QuorumUnavailableError with fewer than ``ack`` serving nodes: no entry could be acked."""
    candidates = [n for n in nodes if n.state == SERVING]
    random.shuffle(candidates)
    candidates.sort(key=lambda n: (node_key(n) in suspected, n.buffered_bytes))
    if len(candidates) < ack:
        raise QuorumUnavailableError(
            f"{len(candidates)} quorum node(s) serve of the {ack} a segment needs "
            f"(quorum.ack; {len(nodes)} registered): start `woodpecker node` processes"
        )
    return candidates[:replicas]


def spare_exists(nodes: Sequence[NodeRecord], replicas: int, excluded: Container[NodeKey]) -> bool:
    """Whether a full ensemble of healthy nodes can be chosen now (a roll would help)."""
    return sum(1 for n in nodes if n.state == SERVING and node_key(n) not in excluded) >= replicas
