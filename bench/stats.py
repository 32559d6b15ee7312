"""Summaries every suite reports the same way: throughput and latency percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MB = 1e6  # throughput is reported in MB/s with MB = 10^6 bytes


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """p50 / p99 / p999 / max in milliseconds and the sample count behind them.

    With fewer than 1,000 samples p999 is the maximum; ``n`` says how much to trust it.
    """
    values = sorted(seconds)
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.50) * 1e3, 3),
        "p99_ms": round(percentile(values, 0.99) * 1e3, 3),
        "p999_ms": round(percentile(values, 0.999) * 1e3, 3),
        "max_ms": round(values[-1] * 1e3, 3),
    }


def throughput(entries: int, nbytes: int, seconds: float) -> dict[str, Any]:
    """MB/s and entries/s over ``seconds`` of wall time."""
    if seconds <= 0:
        return {"entries": entries, "bytes": nbytes, "seconds": seconds, "mb_s": 0, "entries_s": 0}
    return {
        "entries": entries,
        "bytes": nbytes,
        "seconds": round(seconds, 3),
        "mb_s": round(nbytes / seconds / MB, 2),
        "entries_s": round(entries / seconds),
    }


def human_size(n: int) -> str:
    """1024 -> '1 KiB', 100 -> '100 B'."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def approx_size(n: float) -> str:
    """4718592.0 -> '4.5 MiB' (for averages)."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
