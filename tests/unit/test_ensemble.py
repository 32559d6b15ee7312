"""Choosing a quorum segment's ensemble from the node registry."""

from __future__ import annotations

import pytest

from woodpecker.errors import QuorumUnavailableError
from woodpecker.meta.nodes import NodeRecord
from woodpecker.quorum.ensemble import choose_ensemble, node_key, spare_exists


def node(name: str, buffered: int = 0, state: str = "serving", started: int = 1) -> NodeRecord:
    return NodeRecord(
        node_id=name,
        address=f"{name}:1",
        incarnation=7,
        durability="memory",
        state=state,
        started_ms=started,
        pid=1,
        buffered_bytes=buffered,
    )


def test_the_least_loaded_serving_nodes_are_chosen() -> None:
    nodes = [node("a", 30), node("b", 10), node("c", 20), node("d", 0, state="draining")]
    assert [n.node_id for n in choose_ensemble(nodes, 2, 2)] == ["b", "c"]
    assert [n.node_id for n in choose_ensemble(nodes, 3, 2)] == ["b", "c", "a"]


def test_a_failed_run_of_a_node_comes_last_but_its_restart_does_not() -> None:
    nodes = [node("a"), node("b"), node("c"), node("d", buffered=50)]
    failed = {node_key(nodes[0])}
    assert [n.node_id for n in choose_ensemble(nodes, 3, 2, failed)][2] == "d"
    assert [n.node_id for n in choose_ensemble(nodes[:3], 3, 2, failed)][2] == "a"  # or none
    assert spare_exists(nodes, 3, failed)
    assert not spare_exists(nodes[:3], 3, failed)
    restarted = [node("a", started=2), nodes[1], nodes[2]]
    assert spare_exists(restarted, 3, failed)


def test_fewer_serving_nodes_than_ack_is_quorum_unavailable() -> None:
    with pytest.raises(QuorumUnavailableError, match=r"1 quorum node\(s\) serve of the 2"):
        choose_ensemble([node("a"), node("b", state="draining")], 3, 2)
