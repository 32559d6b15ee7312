"""The side-by-side table of ``woodpecker quickstart --mode quorum``."""

from __future__ import annotations

from woodpecker.quickstart import Phase, WriteResult, comparison_lines


def result(mode: str, size: int, count: int, latencies: list[float]) -> WriteResult:
    return WriteResult(Phase(f"log-{mode}-{size}", mode, count, size, mode), 1.0, latencies)


def test_each_entry_size_is_one_row_with_both_modes_ack_latency_and_puts_per_gb() -> None:
    writes = [
        result("memory", 1024, 1000, [4.0] * 98 + [20.0, 30.0]),
        result("memory", 1024 * 1024, 10, [50.0] * 10),
        result("quorum", 1024, 1000, [0.5] * 98 + [3.0, 9.0]),
        result("quorum", 1024 * 1024, 10, [12.0] * 10),
    ]
    # 1000 x 1 KiB = 1.024 MB: 100 blocks are 97,656 per GB, 1 block 977 per GB
    blocks = {"log-memory-1024": 100, "log-quorum-1024": 1, "log-memory-1048576": 10}
    blocks["log-quorum-1048576"] = 2
    header, columns, small, large = comparison_lines(writes, blocks)
    assert header.startswith("memory vs quorum mode")
    assert columns.split() == [
        "entries",
        "memory",
        "p50",
        "p99",
        "PUT/GB",
        "quorum",
        "p50",
        "p99",
        "PUT/GB",
    ]
    assert small.split() == [
        "1",
        "KiB",
        "entries",
        "4.00",
        "30.00",
        "97,656",
        "0.50",
        "9.00",
        "977",
    ]
    assert large.split() == [
        "1",
        "MiB",
        "entries",
        "50.00",
        "50.00",
        "954",
        "12.00",
        "12.00",
        "191",
    ]
    assert len({len(columns), len(small), len(large)}) == 1  # the columns line up
