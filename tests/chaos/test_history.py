"""The history checker itself, on synthetic histories: it must catch every kind of violation."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import woodpecker as wp
from chaos.history import (
    FAIL,
    PENDING,
    UNKNOWN,
    History,
    check,
    classify,
    make_payload,
    parse_payload,
)
from chaos.workload import Plan

Id = wp.LogMessageId


def good_history() -> tuple[History, list[wp.LogMessage]]:
    """Two producers interleaved over two segments, with a failed and two unknown appends."""
    h = History()
    entries: list[wp.LogMessage] = []
    ids = iter([Id(0, 0), Id(0, 1), Id(0, 2), Id(0, 3), Id(1, 0), Id(1, 1), Id(1, 2)])
    for seq in range(4):
        for producer in ("a", "b"):
            op = h.invoke(producer, seq, size=40 + seq)
            if (producer, seq) == ("a", 2):
                h.failed(op, wp.WriterFencedError("fenced"))
                continue
            if (producer, seq) == ("b", 3):
                h.failed(op, wp.LogstoreUnavailableError("gone"))  # unknown, not written
                continue
            mid = next(ids)
            entries.append(wp.LogMessage(mid, op.payload))
            if (producer, seq) == ("a", 3):
                h.failed(op, TimeoutError("no ack"))  # unknown, but it was written
            else:
                h.ok(op, mid)
    return h, entries


def kinds(ops, entries, **kw) -> list[str]:
    return sorted({v.kind for v in check(ops, entries, **kw).violations})


def test_a_correct_history_passes_with_its_figures():
    h, entries = good_history()
    report = check(h.ops, entries)
    assert report.valid, report.evidence()
    assert (report.ops, report.ok, report.failed, report.unknown) == (8, 5, 1, 2)
    assert report.unknown_visible == 1
    assert report.entries_read == 6


def test_a_lost_entry_is_caught_and_named():
    h, entries = good_history()
    del entries[2]
    report = check(h.ops, entries)
    assert [v.kind for v in report.violations] == ["lost"]
    assert "a#1 acked at 0:2" in report.evidence()
    assert "read 0:1 before it, 0:3 after" in report.evidence()


def test_a_duplicated_entry_is_caught():
    h, entries = good_history()
    dup = wp.LogMessage(Id(2, 0), entries[1].payload)
    assert kinds(h.ops, [*entries, dup]) == ["duplicated"]


def test_an_unknown_append_visible_twice_is_caught():
    h, entries = good_history()
    unknown = next(o for o in h.ops if o.name == "a#3")
    dup = wp.LogMessage(Id(2, 0), unknown.payload)
    assert kinds(h.ops, [*entries, dup]) == ["duplicated"]


def test_reordered_acks_of_one_producer_are_caught():
    h, entries = good_history()
    a0, a1 = (o for o in h.ops if o.name in ("a#0", "a#1"))
    a0.id, a1.id = a1.id, a0.id  # acks swapped: a#1 got the smaller id
    e = {m.id: m for m in entries}
    e[a0.id], e[a1.id] = (
        wp.LogMessage(a0.id, a0.payload),
        wp.LogMessage(a1.id, a1.payload),
    )
    report = check(h.ops, sorted(e.values()))
    assert [v.kind for v in report.violations] == ["reordered", "reordered"]
    assert "a#1 acked at 0:0 after a#0 at 0:2" in report.evidence()


def test_an_unknown_append_read_out_of_producer_order_is_caught():
    h = History()
    first, second = h.invoke("p", 0), h.invoke("p", 1)
    h.failed(first, TimeoutError("no ack"))
    h.ok(second, Id(0, 0))
    entries = [wp.LogMessage(Id(0, 0), second.payload), wp.LogMessage(Id(1, 0), first.payload)]
    assert kinds(h.ops, entries) == ["reordered"]


def test_a_corrupted_entry_is_caught_with_the_offset():
    h, entries = good_history()
    flipped = bytearray(entries[3].payload)
    flipped[-1] ^= 0x01
    entries[3] = wp.LogMessage(entries[3].id, bytes(flipped))
    report = check(h.ops, entries)
    assert kinds(h.ops, entries) == ["corrupted", "misplaced"]
    assert f"at offset {len(flipped) - 1}" in report.evidence()


def test_swapped_entries_are_caught():
    h, entries = good_history()
    entries[0], entries[1] = (  # a#0 and b#0: two producers
        wp.LogMessage(entries[0].id, entries[1].payload),
        wp.LogMessage(entries[1].id, entries[0].payload),
    )
    assert kinds(h.ops, entries) == ["misplaced"]
    h, entries = good_history()
    entries[0], entries[2] = (  # a#0 and a#1: one producer, so also out of its order
        wp.LogMessage(entries[0].id, entries[2].payload),
        wp.LogMessage(entries[2].id, entries[0].payload),
    )
    assert kinds(h.ops, entries) == ["misplaced", "reordered"]


def test_a_definitely_failed_append_must_never_appear():
    h, entries = good_history()
    failed = next(o for o in h.ops if o.outcome == FAIL)
    entries.insert(4, wp.LogMessage(Id(0, 4), failed.payload))  # in its producer's order
    report = check(h.ops, entries)
    assert [v.kind for v in report.violations] == ["failed-visible"]
    assert "a#2 failed definitely (WriterFencedError: fenced)" in report.evidence()


def test_foreign_bytes_and_reader_disorder_are_caught():
    h, entries = good_history()
    assert kinds(h.ops, [*entries, wp.LogMessage(Id(9, 0), b"garbage")]) == ["foreign"]
    assert "reader-order" in kinds(h.ops, [entries[1], entries[0], *entries[2:]])
    assert "duplicate-id" in kinds(h.ops, [*entries, entries[-1]])


def test_a_prefix_check_requires_only_what_the_reader_passed():
    h, entries = good_history()
    assert check(h.ops, entries[:3], complete=False).valid
    assert kinds(h.ops, entries[:3]) == ["lost"]
    holes = [entries[0], entries[2]]  # 0:1 is below the last id read: it must be there
    assert kinds(h.ops, holes, complete=False) == ["lost"]


def test_history_files_survive_a_torn_last_line(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    h = History(path)
    a, b, c = h.invoke("p", 0, 100), h.invoke("p", 1), h.invoke("p", 2)
    h.ok(a, Id(3, 4))
    h.failed(b, wp.EntryTooLargeError("too big"))
    h.close()
    with open(path, "ab") as f:
        f.write(b'{"e":"ok","p":"p","s":2,"id":[3')  # killed mid-write
    loaded = {op.seq: op for op in History.load([path, tmp_path / "missing.jsonl"])}
    assert loaded[0] == dataclasses.replace(a, invoked=0.0, completed=0.0)  # times: in memory
    assert loaded[0].payload == make_payload("p", 0, 100) and len(loaded[0].payload) == 100
    assert (loaded[1].outcome, loaded[2].outcome) == (FAIL, PENDING)
    assert c.outcome == PENDING
    report = check(list(loaded.values()), [wp.LogMessage(Id(3, 4), a.payload)])
    assert report.valid and report.unknown == 1


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (wp.WriterFencedError("x"), FAIL),
        (wp.EntryTooLargeError("x"), FAIL),
        (TypeError("x"), FAIL),
        (wp.WriterClosedError("x"), FAIL),
        (wp.BackpressureTimeout("x"), FAIL),
        (TimeoutError("x"), UNKNOWN),
        (wp.LogstoreUnavailableError("x"), UNKNOWN),
        (wp.StorageUnavailableError("x"), UNKNOWN),
        (wp.MetadataUnavailableError("x"), UNKNOWN),
        (wp.WoodpeckerError("x"), UNKNOWN),
    ],
)
def test_errors_are_classified_conservatively(error, outcome):
    assert classify(error) == outcome


@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="|"),
        min_size=1,
        max_size=20,
    ),
    st.integers(0, 2**40),
    st.integers(0, 5000),
)
def test_payloads_name_their_append(producer: str, seq: int, size: int):
    payload = make_payload(producer, seq, size)
    assert len(payload) >= size
    assert parse_payload(payload) == (producer, seq)
    assert make_payload(producer, seq, size) == payload
    assert parse_payload(payload[1:]) is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_producer_that_crashes_fails_the_run(make_config, fleet_factory):
    """A producer dying of an error that is not a WoodpeckerError (here a bug: no entry
    sizes to choose from) fails the run, whether it is a thread (its exception) or a
    process (its exit code); a process the test kills on purpose does not."""
    config = make_config("local")
    with wp.Client(config) as client:
        client.create_log("crash")
    fleet = fleet_factory(config, "crash", Plan(sizes=()))
    fleet.start_thread("thread")
    fleet.start_process("process")
    fleet.start_process("victim")
    fleet.kill("victim")
    deadline = time.monotonic() + 60
    while fleet.live() and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(AssertionError, match="producers crashed") as failure:
        fleet.stop()
    message = str(failure.value)
    assert "thread: CRASHED: IndexError" in message
    assert "process: CRASHED: process exited with code 1" in message
    assert "victim" not in message
    with pytest.raises(AssertionError, match="CRASHED"):
        fleet.wait_progress(fleet.acked(), 1.0, "after the crash")
