"""Recovery of an unsealed quorum segment by a new writer: fence, take the maximum, re-replicate.

BookKeeper's rule, not the reference system's (docs/quorum.md, "Recovery"): an entry acked
by ``ack`` nodes is held by at least one of any ``replicas - ack + 1`` valid fence replies,
so the maximum last entry over those replies covers every acked entry. Taking the minimum
loses acked entries whenever the node holding the most is among the ones not counted.
What this returns is the last entry to seal the segment at; sealing it (a CAS on the
segment record) is the caller's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from woodpecker.deployment import Deployment
from woodpecker.errors import QuorumUnavailableError, WriterFencedError
from woodpecker.quorum import wire
from woodpecker.quorum.client import EnsembleMember, NodeLink, QuorumSegment, connect_ensemble
from woodpecker.quorum.wire import Batch, Reply, Status

log = logging.getLogger(__name__)

READ_BUDGET = 8 * 1024 * 1024
"""Bytes of batches asked for by one recovery read."""


@dataclass(frozen=True, slots=True)
class Recovered:
    """What recovery found and did."""

    last_entry: int  # seal the segment here: every acked entry is at or below it
    lowest_lac: int  # entries above it were re-replicated until ``ack`` nodes held each
    replies: dict[str, int]  # node id -> its last entry, for every valid fence reply
    copied: int  # batches appended to nodes that lacked them


async def recover_segment(
    ensemble: Sequence[EnsembleMember],
    deployment: Deployment,
    segment: QuorumSegment,
) -> Recovered:
    """Fence the ensemble with the segment's new epoch; make every entry up to the maximum
    held by ``ack`` nodes.

    A reply counts only from the incarnation the ensemble lists: ``OK``, or ``UNKNOWN``
    (that node has lived since the segment opened and never got an entry: last ``-1``).
    ``QuorumUnavailableError`` with fewer than ``replicas - ack + 1`` of them within
    ``node_timeout``; ``WriterFencedError`` if a later epoch fenced the log already.
    """
    log_id, segment_id, epoch, ack = segment.log_id, segment.segment_id, segment.epoch, segment.ack
    need = len(ensemble) - ack + 1
    where = str(segment)
    links, unreachable = await connect_ensemble(ensemble, deployment, segment.node_timeout)
    try:
        replies = await asyncio.gather(
            *(
                link.call(
                    lambda rid: wire.frame(wire.request(wire.FENCE, rid, log_id, segment_id, epoch))
                )
                for link in links
            ),
            return_exceptions=True,
        )
        valid: dict[str, tuple[NodeLink, int, int]] = {}
        for link, reply in zip(links, replies, strict=True):
            if isinstance(reply, Reply) and reply.status == Status.FENCED:
                raise WriterFencedError(
                    f"{where}: epoch {epoch} cannot recover it, node {link.member.node_id} was "
                    f"fenced by epoch {reply.fence_epoch}"
                )
            if _counts(link, reply):
                assert isinstance(reply, Reply)
                valid[link.member.node_id] = (link, reply.last, reply.lac)
        if len(valid) < need:
            raise QuorumUnavailableError(
                f"{where}: {len(valid)} valid fence replies of {len(ensemble)} nodes, "
                f"{need} needed to recover it ({_why(links, replies, unreachable)})"
            )
        last = max(held for _, held, _ in valid.values())
        lowest_lac = min(lac for _, _, lac in valid.values())
        copied = await _rereplicate(valid, last, lowest_lac, ack, log_id, segment_id, epoch)
        log.info(
            "%s recovered at entry %d (replies %s, %d batches copied)",
            where,
            last,
            {n: held for n, (_, held, _) in valid.items()},
            copied,
        )
        return Recovered(last, lowest_lac, {n: v[1] for n, v in valid.items()}, copied)
    finally:
        await asyncio.gather(*(link.close() for link in links))


def _counts(link: NodeLink, reply: Reply | BaseException) -> bool:
    """A fence reply recovery may count: from the listed incarnation, OK or UNKNOWN."""
    return (
        isinstance(reply, Reply)
        and reply.incarnation == link.member.incarnation
        and reply.status in (Status.OK, Status.UNKNOWN)
    )


def _why(
    links: Sequence[NodeLink], replies: Sequence[Reply | BaseException], unreachable: list[str]
) -> str:
    said = list(unreachable)
    for link, reply in zip(links, replies, strict=True):
        what = str(reply) if isinstance(reply, BaseException) else wire.status_name(reply.status)
        said.append(f"{link.member.node_id}: {what}")
    return "; ".join(said) or "no node answered"


async def _rereplicate(
    valid: dict[str, tuple[NodeLink, int, int]],
    last: int,
    lowest_lac: int,
    ack: int,
    log_id: int,
    segment_id: int,
    epoch: int,
) -> int:
    """Copy the batches above each replier's last entry from the one holding the most.

    Only what ``ack`` nodes do not hold yet is copied, in entry order, to the repliers
    that hold the longest runs (they need the fewest batches).
    """
    if last <= lowest_lac:
        return 0
    source = next(link for link, held, _ in valid.values() if held == last)
    holds = {node_id: held for node_id, (_, held, _) in valid.items()}
    short = sorted((n for n in holds if holds[n] < last), key=lambda n: -holds[n])
    missing = ack - sum(1 for held in holds.values() if held >= last)
    targets = short[: max(0, missing)]
    if not targets:
        return 0
    start = min(holds[n] for n in targets) + 1
    batches = await _read_run(source, start, last, log_id, segment_id, epoch)
    copied = 0
    for node_id in targets:
        link = valid[node_id][0]
        for batch in batches:
            if batch.first + batch.count - 1 <= holds[node_id]:
                continue
            reply = await link.call(
                lambda rid, b=batch: wire.append(
                    rid, log_id, segment_id, epoch, b, lowest_lac, xxhash.xxh3_64_intdigest(b.data)
                )
            )
            if reply.status != Status.OK:
                raise QuorumUnavailableError(
                    f"segment {log_id}/{segment_id}: node {node_id} answered "
                    f"{wire.status_name(reply.status)} to a recovery copy of entry {batch.first}"
                )
            holds[node_id] = reply.last
            copied += 1
    return copied


async def _read_run(
    source: NodeLink, start: int, last: int, log_id: int, segment_id: int, epoch: int
) -> list[Batch]:
    """The batches holding entries ``start..last``, by recovery reads (above the LAC)."""
    batches: list[Batch] = []
    position = start
    while position <= last:
        reply = await source.call(
            lambda rid, at=position: wire.frame(
                wire.request(wire.READ, rid, log_id, segment_id, epoch)
                + wire.READ_BODY.pack(at, READ_BUDGET, 0)
            )
        )
        if reply.status != Status.OK or not reply.batches:
            raise QuorumUnavailableError(
                f"segment {log_id}/{segment_id}: node {source.member.node_id} answered "
                f"{wire.status_name(reply.status)} to a recovery read of entry {position}"
            )
        batches += [Batch(b.first, b.count, bytes(b.data)) for b in reply.batches]
        position = batches[-1].first + batches[-1].count
    return batches
