"""The block format: round trips through our reader and plain pyarrow, and every kind
of damaged input ends in ``CorruptedDataError`` (invariant 5: bad bytes are never returned).
"""

from __future__ import annotations

import itertools
import mmap
import os

import pyarrow as pa
import pytest
import xxhash
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from woodpecker.errors import CorruptedDataError
from woodpecker.format import (
    SCHEMA,
    STREAM_FOOTER,
    STREAM_HEADER,
    batch_message_size,
    checksum,
    decode_block,
    decode_messages,
    encode_batch_message,
    encode_block,
    encode_file,
    iter_payloads,
    message_size,
    write_batch_message,
)

MiB = 1024 * 1024
WHERE = "log 3 segment 1 block 7"

fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

small_payloads = st.lists(st.binary(max_size=300), max_size=40)
# Large payloads are generated from a size so that hypothesis need not draw every byte.
big_payload = st.integers(1, 3 * MiB).map(lambda n: os.urandom(n))
many_tiny = st.integers(1000, 5000).map(lambda n: [bytes([i % 251]) * (i % 4) for i in range(n)])
payload_mixes = st.one_of(
    small_payloads,
    many_tiny,
    st.lists(st.one_of(st.binary(max_size=20), big_payload), min_size=1, max_size=4),
)


def assemble(batches: list[list[bytes]]) -> tuple[bytes, int]:
    """A block made of several separately written messages, and its streamed checksum."""
    parts = [STREAM_HEADER, *(encode_batch_message(b) for b in batches), STREAM_FOOTER]
    return b"".join(parts), checksum(parts)


def payloads_of(table: pa.Table) -> list[bytes]:
    return table.column("payload").to_pylist()


def sample_block() -> tuple[bytes, int]:
    return assemble([[b"alpha", b"", b"b" * 100], [b"\x00\xff" * 9], []])


@fast
@given(payload_mixes)
def test_single_message_round_trip(payloads: list[bytes]) -> None:
    message = encode_batch_message(payloads)
    assert len(message) == batch_message_size(payloads)
    assert len(message) == message_size(len(payloads), sum(map(len, payloads)))
    assert len(message) % 8 == 0
    block = encode_block(payloads)
    assert block == STREAM_HEADER + message + STREAM_FOOTER
    table = decode_block(
        block, expected_checksum=xxhash.xxh3_64_intdigest(block), expected_entries=len(payloads)
    )
    assert table.schema.equals(SCHEMA, check_metadata=True)
    assert payloads_of(table) == payloads
    assert list(iter_payloads(table)) == payloads
    assert payloads_of(pa.ipc.open_stream(block).read_all()) == payloads
    assert payloads_of(pa.ipc.read_record_batch(pa.py_buffer(message), SCHEMA)) == payloads


@fast
@given(st.lists(payload_mixes, min_size=1, max_size=5))
def test_block_of_several_messages_reads_back_in_order(batches: list[list[bytes]]) -> None:
    block, streamed = assemble(batches)
    expected = [p for batch in batches for p in batch]
    assert streamed == xxhash.xxh3_64_intdigest(block)
    table = decode_block(block, expected_checksum=streamed, expected_entries=len(expected))
    assert payloads_of(table) == expected
    assert list(iter_payloads(table)) == expected
    assert payloads_of(pa.ipc.open_stream(block).read_all()) == expected


def test_accepts_any_bytes_like_payloads_and_inputs() -> None:
    payloads = [b"ab", bytearray(b"cd"), memoryview(b"xefx")[1:3]]
    block = encode_block(payloads)
    for data in (block, bytearray(block), memoryview(block), pa.py_buffer(block)):
        assert payloads_of(decode_block(data)) == [b"ab", b"cd", b"ef"]


@fast
@given(st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=6))
def test_checksum_is_independent_of_how_the_bytes_are_split(data: bytes, cuts: list[int]) -> None:
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    parts = [memoryview(data)[a:b] for a, b in itertools.pairwise(bounds)]
    assert checksum(parts) == xxhash.xxh3_64_intdigest(data)


@fast
@given(small_payloads, st.integers(0, 64))
def test_write_into_shared_memory_slice_touches_only_the_message(
    payloads: list[bytes], at: int
) -> None:
    size = batch_message_size(payloads)
    with mmap.mmap(-1, at + size + 64) as shm:
        shm[:] = b"\xaa" * len(shm)
        written = write_batch_message(payloads, memoryview(shm)[at:])
        assert written == size
        assert shm[:at] == b"\xaa" * at
        assert shm[at + size :] == b"\xaa" * 64
        assert shm[at : at + size] == encode_batch_message(payloads)


@fast
@given(small_payloads, st.data())
def test_write_into_too_small_buffer_raises_and_writes_nothing(
    payloads: list[bytes], data: st.DataObject
) -> None:
    size = batch_message_size(payloads)
    room = data.draw(st.integers(0, size - 1))
    backing = bytearray(b"\xaa" * (room + 16))
    with pytest.raises(ValueError, match="needs"):
        write_batch_message(payloads, memoryview(backing)[:room])
    assert backing == bytearray(b"\xaa" * (room + 16))


def assert_corrupt(data: bytes | bytearray, **kwargs: object) -> CorruptedDataError:
    with pytest.raises(CorruptedDataError) as info:
        decode_block(data, where=WHERE, **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(WHERE + ": ")
    return info.value


@fast
@given(st.lists(small_payloads, min_size=1, max_size=3), st.data())
def test_any_bit_flip_is_caught_by_the_checksum(
    batches: list[list[bytes]], data: st.DataObject
) -> None:
    block, digest = assemble(batches)
    bit = data.draw(st.integers(0, 8 * len(block) - 1))
    damaged = bytearray(block)
    damaged[bit // 8] ^= 1 << (bit % 8)
    assert_corrupt(damaged, expected_checksum=digest)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_bit_flip_without_checksum_never_escapes_as_another_error(data: st.DataObject) -> None:
    block, _ = sample_block()
    damaged = bytearray(block)
    for bit in data.draw(st.lists(st.integers(0, 8 * len(block) - 1), min_size=1, max_size=3)):
        damaged[bit // 8] ^= 1 << (bit % 8)
    try:
        table = decode_block(damaged, where=WHERE)
    except CorruptedDataError as exc:
        assert str(exc).startswith(WHERE + ": ")
    else:  # a flip inside payload bytes is invisible without the checksum; the shape holds
        assert table.schema.equals(SCHEMA, check_metadata=True)
        assert table.column(0).null_count == 0


def test_every_truncation_is_caught_even_without_checksum() -> None:
    block, digest = sample_block()
    for end in range(len(block)):
        assert_corrupt(block[:end])
        assert_corrupt(block[:end], expected_checksum=digest)


@fast
@given(payload_mixes, st.data())
def test_truncation_of_large_blocks_is_caught(payloads: list[bytes], data: st.DataObject) -> None:
    block = encode_block(payloads)
    end = data.draw(st.integers(0, len(block) - 1))
    assert_corrupt(block[:end])


@fast
@given(st.binary(min_size=1, max_size=2048))
def test_garbage_is_rejected(garbage: bytes) -> None:
    assume(garbage != STREAM_FOOTER)  # header + footer is a valid block of no entries
    assert_corrupt(garbage)
    assert_corrupt(STREAM_HEADER + garbage)
    assert_corrupt(garbage + encode_block([b"x"]))
    assert_corrupt(encode_block([b"x"]) + garbage)


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")])
def test_zero_length_is_rejected(empty: bytes) -> None:
    assert "empty" in str(assert_corrupt(empty))
    assert "empty" in str(assert_corrupt(empty, expected_checksum=xxhash.xxh3_64_intdigest(b"")))


def test_wrong_checksum_and_wrong_entry_count_are_rejected() -> None:
    block, digest = sample_block()
    assert "checksum" in str(assert_corrupt(block, expected_checksum=digest ^ 1))
    assert "4 entries, expected 5" in str(assert_corrupt(block, expected_entries=5))
    assert decode_block(block, expected_checksum=digest, expected_entries=4).num_rows == 4


def ipc_stream(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(
    "batch",
    [
        pa.record_batch({"payload": pa.array(["text"], pa.string())}),
        pa.record_batch({"payload": pa.array([b"no metadata"], pa.binary())}),
        pa.record_batch({"payload": pa.array([1, 2], pa.int64())}),
        pa.record_batch(
            [pa.array([b"a"], pa.binary()), pa.array([b"b"], pa.binary())],
            schema=SCHEMA.append(pa.field("extra", pa.binary())),
        ),
        pa.record_batch(
            [pa.array([b"a"], pa.binary())],
            schema=SCHEMA.with_metadata({"woodpecker.format": "2"}),
        ),
    ],
    ids=["string", "no-metadata", "int64", "extra-column", "format-2"],
)
def test_valid_stream_with_another_schema_is_rejected(batch: pa.RecordBatch) -> None:
    data = ipc_stream(batch)
    assert "schema" in str(assert_corrupt(data, expected_checksum=xxhash.xxh3_64_intdigest(data)))


def test_null_payloads_are_rejected() -> None:
    data = ipc_stream(pa.record_batch([pa.array([b"a", None], pa.binary())], schema=SCHEMA))
    assert "null" in str(assert_corrupt(data))


# ---- compacted files ---------------------------------------------------------------------


def test_a_compacted_file_is_one_ipc_file_and_its_spans_decode_as_messages() -> None:
    blocks = [[b"a", b"bb"], [b"ccc"], [bytes(range(256)) * 40, b""]]
    tables = [decode_block(encode_block(b)) for b in blocks]
    data, spans = encode_file(tables)
    whole = pa.ipc.open_file(data).read_all()
    assert whole.schema.equals(SCHEMA, check_metadata=True)
    assert whole.column("payload").to_pylist() == [p for b in blocks for p in b]
    for (offset, length), payloads in zip(spans, blocks, strict=True):
        part = data[offset : offset + length]
        table = decode_messages(
            part, expected_checksum=checksum([part]), expected_entries=len(payloads)
        )
        assert table.column("payload").to_pylist() == payloads
    # a run of several blocks' messages is one chunk
    (first, _), (last, last_length) = spans[0], spans[-1]
    run = data[first : last + last_length]
    assert decode_messages(run, expected_entries=5).num_rows == 5


def test_damaged_chunks_raise_corrupted_data() -> None:
    data, [(offset, length)] = encode_file([decode_block(encode_block([b"x" * 100, b"y"]))])
    part = data[offset : offset + length].to_pybytes()
    digest = checksum([part])
    flipped = bytearray(part)
    flipped[-20] ^= 0xFF
    cases = {
        "checksum mismatch": (bytes(flipped), digest, 2),
        "not valid Arrow IPC messages": (part[:-9], None, 2),
        "2 entries, expected 3": (part, digest, 3),
        "empty chunk": (b"", None, None),
        "unexpected schema message": (STREAM_HEADER + part, None, None),
    }
    for reason, (chunk, expected_checksum, entries) in cases.items():
        with pytest.raises(CorruptedDataError, match=f"^{WHERE}: .*") as e:
            decode_messages(
                chunk, expected_checksum=expected_checksum, expected_entries=entries, where=WHERE
            )
        assert reason in str(e.value), (reason, e.value)
