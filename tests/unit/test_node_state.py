"""A quorum node's rules (docs/quorum.md, "Requests"), on ``NodeState`` without sockets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from woodpecker.format import decode_messages, encode_batch_message, iter_payloads
from woodpecker.quorum.wire import (
    APPEND,
    APPEND_BODY,
    FENCE,
    LAC,
    READ,
    READ_BODY,
    Reply,
    Request,
    Status,
    lac_body,
)
from workers.node_state import NodeState

LOG, SEG = 7, 3
MiB = 1024 * 1024


def batch(first: int, count: int) -> bytes:
    return encode_batch_message([f"e{first + i}".encode() for i in range(count)])


def append(
    node: NodeState,
    first: int,
    count: int,
    *,
    epoch: int = 1,
    lac: int = -1,
    seg: int = SEG,
    data: bytes | None = None,
    checksum: int | None = None,
) -> Reply:
    data = batch(first, count) if data is None else data
    digest = xxhash.xxh3_64_intdigest(data) if checksum is None else checksum
    body = APPEND_BODY.pack(first, count, lac, digest) + data
    return node.handle(Request(APPEND, 1, LOG, seg, epoch), memoryview(body))


def fence(node: NodeState, epoch: int, seg: int = SEG) -> Reply:
    return node.handle(Request(FENCE, 2, LOG, seg, epoch), memoryview(b""))


def read(node: NodeState, start: int, *, epoch: int = 1, budget: int = MiB) -> list[bytes]:
    reply = node.handle(
        Request(READ, 3, LOG, SEG, epoch), memoryview(READ_BODY.pack(start, budget, 0))
    )
    assert reply.status == Status.OK
    return [p for b in reply.batches for p in iter_payloads(decode_messages(b.data))]


def lac(node: NodeState, value: int, *, epoch: int = 1) -> Reply:
    return node.handle(Request(LAC, 4, LOG, SEG, epoch), memoryview(lac_body(value)))


def entries(first: int, last: int) -> list[bytes]:
    return [f"e{i}".encode() for i in range(first, last + 1)]


def test_appends_continue_the_segment_and_the_lac_rides_on_them() -> None:
    node = NodeState.in_memory(MiB)
    assert append(node, 0, 3).status == Status.OK
    reply = append(node, 3, 2, lac=2)
    assert (reply.status, reply.last, reply.lac) == (Status.OK, 4, 2)
    assert reply.incarnation == node.incarnation
    assert read(node, 0) == entries(0, 2)  # readers stop at the LAC, not at the last entry
    assert lac(node, 4).lac == 4
    assert lac(node, 1).lac == 4  # never lowered
    assert read(node, 1) == entries(0, 4)  # whole batches from the one holding entry 1


def test_a_node_holds_a_contiguous_run_only() -> None:
    node = NodeState.in_memory(MiB)
    assert append(node, 0, 2).status == Status.OK
    assert append(node, 5, 1).status == Status.GAP
    assert append(node, 1, 3).status == Status.GAP  # overlaps the end: not how batches are re-sent
    resent = append(node, 0, 2)  # a re-send after a lost reply: answered, stored once
    assert (resent.status, resent.last) == (Status.OK, 1)
    assert node.buffered_bytes == len(batch(0, 2))


def test_a_batch_that_is_not_what_its_header_says_is_rejected() -> None:
    node = NodeState.in_memory(MiB)
    assert append(node, 0, 2, checksum=123).status == Status.REJECTED
    assert append(node, 0, 3, data=batch(0, 2)).status == Status.REJECTED  # count differs
    assert append(node, 0, 1, data=b"\xff" * 40).status == Status.REJECTED
    assert node.segments() == []


def test_a_full_node_answers_busy() -> None:
    node = NodeState.in_memory(MiB)
    big = encode_batch_message([bytes(600 * 1024)])
    assert append(node, 0, 1, data=big).status == Status.OK
    assert append(node, 1, 1, data=big).status == Status.BUSY
    assert node.segments()[0].last == 0


def test_a_fence_stops_older_epochs_on_every_segment_of_the_log() -> None:
    node = NodeState.in_memory(MiB)
    append(node, 0, 2, epoch=1)
    fenced = fence(node, 2)
    assert (fenced.status, fenced.last, fenced.fence_epoch) == (Status.OK, 1, 2)
    stale = append(node, 2, 1, epoch=1)
    assert (stale.status, stale.fence_epoch) == (Status.FENCED, 2)
    assert lac(node, 1, epoch=1).status == Status.FENCED
    assert fence(node, 1).status == Status.FENCED  # a fence is never lowered
    assert append(node, 0, 1, epoch=1, seg=SEG + 1).status == Status.FENCED  # nor a new segment
    assert append(node, 2, 1, epoch=2).status == Status.OK  # the fencing writer re-replicates
    assert read(node, 0, epoch=1) == []  # readers of any epoch get what is at or below the LAC


def test_only_the_fencing_epoch_reads_above_the_lac() -> None:
    node = NodeState.in_memory(MiB)
    append(node, 0, 2, lac=-1)
    append(node, 2, 2, lac=1)
    assert read(node, 0, epoch=1) == entries(0, 1)
    fence(node, 5)
    assert read(node, 0, epoch=4) == entries(0, 1)
    assert read(node, 0, epoch=5) == entries(0, 3)  # the recovery read sees the whole run


def test_an_unknown_segment_is_refused_never_answered_as_empty() -> None:
    node = NodeState.in_memory(MiB)
    assert append(node, 4, 1).status == Status.UNKNOWN
    reply = fence(node, 3)
    assert (reply.status, reply.last) == (Status.UNKNOWN, -1)
    assert lac(node, 0, epoch=3).status == Status.UNKNOWN
    assert node.handle(
        Request(READ, 9, LOG, SEG, 3), memoryview(READ_BODY.pack(0, 1, 0))
    ).status == (Status.UNKNOWN)
    # the fence of the unknown segment is kept: the stale writer cannot create it later
    assert append(node, 0, 1, epoch=2).status == Status.FENCED


def test_a_restarted_memory_node_is_a_new_incarnation_that_refuses_what_it_lost() -> None:
    before = NodeState.in_memory(MiB)
    append(before, 0, 3, lac=2)
    assert fence(before, 2).status == Status.OK  # control: the live incarnation knows it
    after = NodeState.in_memory(MiB)  # the same node, restarted: memory is gone
    reply = fence(after, 2)
    assert reply.status == Status.UNKNOWN
    assert reply.incarnation != before.incarnation
    assert append(after, 3, 1, epoch=2).status == Status.UNKNOWN


def test_a_disk_node_keeps_its_fences_and_batches_across_a_restart(tmp_path: Path) -> None:
    node = NodeState.on_disk(tmp_path, MiB)
    append(node, 0, 2)
    append(node, 2, 3, lac=1)
    fence(node, 4)
    incarnation = node.incarnation
    node.close()

    again = NodeState.on_disk(tmp_path, MiB)
    assert again.incarnation == incarnation
    assert append(again, 5, 1, epoch=3).status == Status.FENCED
    assert fence(again, 4).last == 4
    assert read(again, 0, epoch=4) == entries(0, 4)
    assert again.buffered_bytes == len(batch(0, 2)) + len(batch(2, 3))
    again.close()


def test_a_torn_journal_record_was_never_answered_and_is_cut_off(tmp_path: Path) -> None:
    node = NodeState.on_disk(tmp_path, MiB)
    append(node, 0, 2)
    append(node, 2, 2)
    node.close()
    wal = next((tmp_path / "segments").glob("*.wal"))
    whole = wal.stat().st_size
    with open(wal, "ab") as f:  # a crash in the middle of writing the next record
        f.write(b"\x40\x00\x00\x00" + b"\x01" * 20)

    again = NodeState.on_disk(tmp_path, MiB)
    assert fence(again, 2).last == 3
    assert wal.stat().st_size == whole
    assert append(again, 4, 1, epoch=2).status == Status.OK  # continues after the cut
    again.close()


def test_one_sync_makes_every_request_handled_since_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = NodeState.on_disk(tmp_path, MiB)
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    for first in range(0, 10, 2):
        append(node, first, 2)
    fence(node, 2)
    assert synced == []  # nothing is answered before the sync, so nothing waited for it
    node.sync()
    assert len(synced) == 2  # a group commit: the segment's file and the fence file, once each
    node.sync()
    assert len(synced) == 2
    monkeypatch.undo()
    node.close()


def test_the_next_flush_is_whole_batches_from_the_cursor_up_to_the_lac() -> None:
    node = NodeState.in_memory(MiB)
    append(node, 0, 2)
    append(node, 2, 2)
    append(node, 4, 2, lac=4)  # entry 5 is not acked yet: its batch waits
    key = (LOG, SEG)
    assert [b.first for b in node.flushable(key, 0, MiB)] == [0, 2]
    assert [b.first for b in node.flushable(key, 2, MiB)] == [2]
    assert node.flushable(key, 1, MiB) == []  # not the start of a batch: not a flush
    assert [b.first for b in node.flushable(key, 0, 1)] == [0]  # at least one batch
    assert node.flushable_bytes(key) == len(batch(0, 2)) + len(batch(2, 2))


def test_a_committed_flush_is_forgotten_and_read_from_storage_instead() -> None:
    node = NodeState.in_memory(MiB)
    append(node, 0, 2)
    append(node, 2, 2, lac=3)
    key = (LOG, SEG)
    assert node.drop_through(key, 1) == len(batch(0, 2))
    assert node.buffered_bytes == len(batch(2, 2))
    reply = node.handle(Request(READ, 5, LOG, SEG, 1), memoryview(READ_BODY.pack(1, MiB, 0)))
    assert reply.status == Status.FLUSHED
    assert read(node, 2) == entries(2, 3)
    node.drop_through(key, 3)
    assert (fence(node, 2).status, fence(node, 2).last) == (Status.OK, 3)  # still known
    assert append(node, 4, 1, epoch=2).status == Status.OK  # and it continues


def test_a_disk_node_rewrites_a_segment_file_once_forgotten_batches_dominate_it(
    tmp_path: Path,
) -> None:
    node = NodeState.on_disk(tmp_path, 64 * MiB)
    big = [bytes(40 * 1024)]
    for first in range(6):
        append(node, first, 1, data=encode_batch_message(big), lac=first)
    wal = tmp_path / "segments" / f"{LOG}-{SEG}.wal"
    before = wal.stat().st_size
    node.drop_through((LOG, SEG), 4)  # five of six flushed and forgotten
    assert wal.stat().st_size < before / 3  # only the kept batch and where the rest ended
    append(node, 6, 1, data=encode_batch_message(big))
    node.close()

    again = NodeState.on_disk(tmp_path, 64 * MiB)
    assert [b.first for b in again.replicas[(LOG, SEG)].batches] == [5, 6]
    reply = again.handle(Request(READ, 5, LOG, SEG, 1), memoryview(READ_BODY.pack(4, MiB, 0)))
    assert reply.status == Status.FLUSHED  # not resurrected as empty, nor as data
    assert fence(again, 2).last == 6
    again.close()


def test_the_fence_file_keeps_one_record_per_log_across_restarts(tmp_path: Path) -> None:
    node = NodeState.on_disk(tmp_path, MiB)
    for epoch in range(1, 50):
        fence(node, epoch)
    node.close()
    grown = (tmp_path / "fences.wal").stat().st_size
    again = NodeState.on_disk(tmp_path, MiB)
    assert (tmp_path / "fences.wal").stat().st_size < grown / 10
    assert append(again, 0, 1, epoch=48).status == Status.FENCED
    assert fence(again, 49).status == Status.UNKNOWN  # still the fence of epoch 49, kept
    again.close()


def test_a_sealed_lac_caps_the_segment_and_forgetting_it_keeps_the_logs_fence(
    tmp_path: Path,
) -> None:
    node = NodeState.on_disk(tmp_path, MiB)
    append(node, 0, 3, lac=1)
    append(node, 3, 2)  # sent, never acked: above the seal
    fence(node, 2, seg=SEG + 1)  # a recovering writer fenced the log
    assert node.sealed_last((LOG, SEG)) is None
    reply = node.handle(Request(LAC, 4, LOG, SEG, 2), memoryview(lac_body(2, sealed=True)))
    assert (reply.status, reply.lac) == (Status.OK, 2)
    assert node.sealed_last((LOG, SEG)) == 2
    node.sync()
    path = tmp_path / "segments" / f"{LOG}-{SEG}.wal"
    assert path.exists()
    assert node.forget((LOG, SEG)) > 0
    assert (node.buffered_bytes, node.segments(), path.exists()) == (0, [], False)
    assert lac(node, -1, epoch=2).status == Status.UNKNOWN
    # the fence outlives the segment: a stale writer's late first append is still refused
    assert append(node, 0, 1, epoch=1).status == Status.FENCED
    node.close()
    restarted = NodeState.on_disk(tmp_path, MiB)
    assert (restarted.segments(), restarted.fences) == ([], {LOG: 2})
    restarted.close()
