"""The ack rule of QuorumBuffer mode: a batch is acked once ``ack`` nodes hold it and every
earlier batch is acked (docs/quorum.md, "Write path and ack")."""

from __future__ import annotations

from woodpecker.quorum.client import AckQuorum


def test_a_batch_is_acked_once_ack_distinct_nodes_hold_it() -> None:
    quorum = AckQuorum(ack=2)
    ends = [1, 4, 9]
    quorum.held("a", 9)
    quorum.held("a", 9)  # the same node twice is still one holder
    assert quorum.advance(ends) == 0
    quorum.held("b", 4)
    assert (quorum.advance(ends), quorum.lac) == (2, 4)


def test_acks_never_skip_a_batch_held_by_too_few() -> None:
    quorum = AckQuorum(ack=2)
    quorum.held("a", 9)
    quorum.held("b", 0)  # b is behind: the first batch (entries 0-1) lacks a second holder
    quorum.held("c", 9)
    assert (quorum.advance([1, 4, 9]), quorum.lac) == (3, 9)
    quorum = AckQuorum(ack=3)
    for node, last in (("a", 9), ("b", 0), ("c", 9)):
        quorum.held(node, last)
    assert (quorum.advance([1, 4, 9]), quorum.lac) == (0, -1)


def test_a_failed_node_no_longer_counts() -> None:
    quorum = AckQuorum(ack=2)
    quorum.held("a", 5)
    quorum.held("b", 5)
    quorum.forget("b")
    assert quorum.advance([5]) == 0
    quorum.held("c", 5)
    assert quorum.advance([5]) == 1
