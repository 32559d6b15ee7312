"""Metadata records: JSON round trips, and malformed values as CorruptedDataError."""

from __future__ import annotations

import dataclasses
import json

import pytest

from woodpecker.errors import CorruptedDataError
from woodpecker.meta import (
    BlockRecord,
    Keys,
    LogRecord,
    SegmentIndex,
    SegmentRecord,
    SegmentState,
    TruncationPoint,
    WriterRecord,
)
from woodpecker.meta.records import EnsembleMember, decode_counter

RECORDS = [
    LogRecord(log_id=1, name="orders", created_ms=1_700_000_000_000, uid="ab12"),
    WriterRecord(log_id=3, epoch=7, owner="host:123", lease_id=2**62, acquired_ms=5),
    SegmentRecord(
        log_id=3,
        segment_id=0,
        state=SegmentState.ACTIVE,
        epoch=1,
        lac=-1,
        size=0,
        block_count=0,
        created_ms=1,
        sealed_ms=None,
    ),
    SegmentRecord(
        log_id=3,
        segment_id=9,
        state=SegmentState.SEALED,
        epoch=4,
        lac=99,
        size=12345,
        block_count=3,
        created_ms=1,
        sealed_ms=2,
    ),
    BlockRecord(
        log_id=3,
        segment_id=9,
        block_id=2,
        first_entry_id=60,
        entry_count=40,
        size=4096,
        key="root/3/9/2.arrow",
        offset=0,
        length=4096,
        checksum=2**64 - 1,
    ),
    TruncationPoint(segment_id=2, entry_id=0),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_round_trip(record) -> None:
    data = record.to_bytes()
    assert isinstance(data, bytes)
    assert type(record).from_bytes(data, "/k") == record


def test_state_is_stored_by_name_and_unknown_fields_are_ignored() -> None:
    seg = RECORDS[3]
    assert b'"state":"SEALED"' in seg.to_bytes()
    newer = seg.to_bytes()[:-1] + b',"future_field":[1,2]}'
    assert SegmentRecord.from_bytes(newer, "/k") == seg


def test_block_helpers() -> None:
    assert RECORDS[4].last_entry_id == 99
    assert RECORDS[3].entry_count == 100


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", ""),
        (b"{not json", ""),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"text"', "expected a JSON object, got str"),
        (b'{"segment_id": 1}', "field 'entry_id' is missing"),
        (b'{"segment_id": "1", "entry_id": 0}', "segment_id must be int"),
        (b'{"segment_id": true, "entry_id": 0}', "segment_id must be int"),
        (b'{"segment_id": 1.0, "entry_id": 0}', "segment_id must be int"),
        (b'{"segment_id": null, "entry_id": 0}', "segment_id must be int"),
        (b'{"segment_id": -1, "entry_id": 0}', "segment_id must be >= 0"),
        (b"\xff\xfe", ""),
    ],
)
def test_malformed_values_name_the_key(data: bytes, reason: str) -> None:
    with pytest.raises(CorruptedDataError, match="/wp/truncation/7") as info:
        TruncationPoint.from_bytes(data, "/wp/truncation/7")
    assert reason in str(info.value)


def test_unknown_state_and_bad_optional_are_corrupted() -> None:
    data = RECORDS[2].to_bytes()
    with pytest.raises(CorruptedDataError, match="'COMPACTING' is not a valid SegmentState"):
        SegmentRecord.from_bytes(data.replace(b"ACTIVE", b"COMPACTING"), "/k")
    with pytest.raises(CorruptedDataError, match=r"sealed_ms must be int \| None"):
        SegmentRecord.from_bytes(data.replace(b'"sealed_ms":null', b'"sealed_ms":"x"'), "/k")
    with pytest.raises(CorruptedDataError, match="lac must be >= -1"):
        SegmentRecord.from_bytes(data.replace(b'"lac":-1', b'"lac":-2'), "/k")


def test_block_checksum_and_key_are_checked() -> None:
    data = RECORDS[4].to_bytes()
    too_big = data.replace(b"18446744073709551615", b"18446744073709551616")
    with pytest.raises(CorruptedDataError, match="checksum must be int"):
        BlockRecord.from_bytes(too_big, "/k")  # orjson reads it as a float
    with pytest.raises(ValueError, match="checksum must fit in 64 bits"):
        dataclasses.replace(RECORDS[4], checksum=2**64)
    with pytest.raises(CorruptedDataError, match="key must not be empty"):
        BlockRecord.from_bytes(data.replace(b'"root/3/9/2.arrow"', b'""'), "/k")
    with pytest.raises(CorruptedDataError, match="entry_count must be >= 1"):
        BlockRecord.from_bytes(data.replace(b'"entry_count":40', b'"entry_count":0'), "/k")


def test_constructor_refuses_bad_fields() -> None:
    with pytest.raises(TypeError, match="log_id must be int"):
        LogRecord(log_id="1", name="a", created_ms=0, uid="u")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log_id must be >= 1"):
        LogRecord(log_id=0, name="a", created_ms=0, uid="u")


@pytest.mark.parametrize("data", [b"", b"-1", b" 1", b"1_0", b"+3", b"1.5", b"\xd9\xa1"])
def test_bad_counters_are_corrupted(data: bytes) -> None:
    with pytest.raises(CorruptedDataError, match="/p/idgen/log"):
        decode_counter(data, "/p/idgen/log")


def test_counter() -> None:
    assert decode_counter(b"0", "/k") == 0
    assert decode_counter(b"12345678901234567890", "/k") == 12345678901234567890


def test_keys_are_ordered_and_prefix_safe() -> None:
    k = Keys("/wp/")
    assert k.log("orders") == "/wp/logs/orders"
    assert k.segment(12, 3) == "/wp/segments/12/00000000000000000003"
    assert k.block(12, 3, 10) == "/wp/blocks/12/00000000000000000003/00000000000000000010"
    assert not k.segment(123, 0).startswith(k.segments_prefix(12))
    assert not k.block(123, 0, 0).startswith(k.blocks_prefix(12))
    ids = [k.segment(1, n) for n in (0, 2, 10, 99, 100, 2**63 - 1)]
    assert ids == sorted(ids)
    assert {k.writer(1), k.epoch(1), k.truncation(1), k.log_id(1), k.log_idgen} == {
        "/wp/writer/1",
        "/wp/epoch/1",
        "/wp/truncation/1",
        "/wp/ids/1",
        "/wp/idgen/log",
    }


def test_segment_index_is_dense_and_turns_into_block_records() -> None:
    chunks = [[0, 0, 3, 300, 200, 400, 7], [1, 3, 2, 100, 200, 250, 2**64 - 1]]
    index = SegmentIndex(
        log_id=3, segment_id=9, objects=["3/9/a.arrow", "3/9/b.arrow"], chunks=chunks
    )
    assert SegmentIndex.from_bytes(index.to_bytes(), "/k") == index
    blocks = index.blocks()
    assert [(b.block_id, b.first_entry_id, b.last_entry_id, b.key) for b in blocks] == [
        (0, 0, 2, "3/9/a.arrow"),
        (1, 3, 4, "3/9/b.arrow"),
    ]
    assert all(b.messages_only and (b.log_id, b.segment_id) == (3, 9) for b in blocks)
    bad = {
        "does not continue at entry 3": [chunks[0], [1, 4, 2, 100, 200, 250, 1]],
        "names object 2 of 2": [[2, 0, 3, 300, 200, 400, 7]],
        "does not continue at entry 0": [[0, 1, 3, 300, 200, 400, 7]],
        "7 ints >= 0": [[0, 0, 3, 300, 200, 400]],
        r"list\[list\[int\]\]": [[0, 0, 3, 300, 200, 400, 2**64]],  # orjson: a float
    }
    for reason, wrong in bad.items():
        value = {"log_id": 3, "segment_id": 9, "objects": index.objects, "chunks": wrong}
        data = json.dumps(value).encode()  # orjson refuses to write ints past 64 bits
        with pytest.raises(CorruptedDataError, match=reason):
            SegmentIndex.from_bytes(data, "/k")
    with pytest.raises(ValueError, match="64 bits"):
        dataclasses.replace(index, chunks=[[0, 0, 3, 300, 200, 400, 2**64]])


def test_a_log_record_written_before_buffer_modes_is_a_memory_log() -> None:
    old = b'{"log_id": 3, "name": "a", "created_ms": 0, "uid": "u"}'
    assert LogRecord.from_bytes(old, "/p/logs/a").buffer_mode == "memory"
    new = LogRecord(log_id=3, name="a", created_ms=0, uid="u", buffer_mode="quorum")
    assert LogRecord.from_bytes(new.to_bytes(), "/p/logs/a").buffer_mode == "quorum"


def test_a_quorum_segment_record_keeps_its_ensemble() -> None:
    members = [EnsembleMember(f"n{i}", f"127.0.0.1:{7870 + i}", 2**63 + i) for i in range(3)]
    record = dataclasses.replace(RECORDS[2], ensemble=members, ack=2)
    decoded = SegmentRecord.from_bytes(record.to_bytes(), "/p/segments/3/0")
    assert decoded == record and decoded.quorum
    assert all(isinstance(m, EnsembleMember) for m in decoded.ensemble or [])
    assert not RECORDS[2].quorum  # records written without one are MemoryBuffer segments
    assert SegmentRecord.from_bytes(RECORDS[2].to_bytes(), "/k").ensemble is None
    broken = json.loads(record.to_bytes())
    broken["ensemble"][1] = {"node_id": "n1", "address": "x"}
    with pytest.raises(CorruptedDataError, match="incarnation"):
        SegmentRecord.from_bytes(json.dumps(broken).encode(), "/p/segments/3/0")
    broken["ensemble"][1] = "n1"
    with pytest.raises(CorruptedDataError, match="EnsembleMember"):
        SegmentRecord.from_bytes(json.dumps(broken).encode(), "/p/segments/3/0")
