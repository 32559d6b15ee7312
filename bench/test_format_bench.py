"""Block format throughput: producer-side encode into shared memory, reader-side decode+verify.

Each case is one 4 MiB block; ``extra_info`` carries entries/s and MB/s of payload.
"""

from __future__ import annotations

import mmap
import os

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from woodpecker.format import (
    batch_message_size,
    checksum,
    decode_block,
    encode_block,
    write_batch_message,
)

BLOCK_BYTES = 4 * 1024 * 1024
ENTRY_SIZES = [100, 1024]


def payloads_of(entry_size: int) -> list[bytes]:
    return [os.urandom(entry_size) for _ in range(BLOCK_BYTES // entry_size)]


def record_rate(benchmark: BenchmarkFixture, entries: int) -> None:
    """Store throughput next to the timings (absent when benchmarks are disabled)."""
    if benchmark.stats:
        mean = benchmark.stats.stats.mean
        benchmark.extra_info["entries_per_s"] = round(entries / mean)
        benchmark.extra_info["payload_MB_per_s"] = round(BLOCK_BYTES / mean / 1e6, 1)


@pytest.mark.parametrize("entry_size", ENTRY_SIZES)
def test_write_batch_message(benchmark: BenchmarkFixture, entry_size: int) -> None:
    payloads = payloads_of(entry_size)
    with mmap.mmap(-1, batch_message_size(payloads)) as shm:
        view = memoryview(shm)
        written = benchmark(write_batch_message, payloads, view)
        assert written == len(shm)
        view.release()
    record_rate(benchmark, len(payloads))


@pytest.mark.parametrize("entry_size", ENTRY_SIZES)
def test_decode_and_verify(benchmark: BenchmarkFixture, entry_size: int) -> None:
    payloads = payloads_of(entry_size)
    block = encode_block(payloads)
    digest = checksum([block])
    table = benchmark(decode_block, block, expected_checksum=digest, expected_entries=len(payloads))
    assert table.num_rows == len(payloads)
    record_rate(benchmark, len(payloads))
