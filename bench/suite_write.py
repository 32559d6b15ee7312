"""Write throughput and latency: entry size x producer processes x backend x API.

Each cell is one measurement with its own logstore and producers (``harness``):
the producers warm up, start together, append for ``duration`` seconds and
flush, so every figure counts only acknowledged (durable, committed) entries.
Latency is per call for ``write`` and ``write_batch`` and submit-to-ack of
sampled appends for ``write_async`` (under full load: it includes queueing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import drivers
import harness
from plan import RunSettings, Step
from stats import human_size

KiB = 1 << 10
MiB = 1 << 20
BATCH_BYTES = 4 * MiB  # one write_batch call carries about this much (at most 10,000 entries)


@dataclass(frozen=True)
class WriteCell:
    backend: str
    api: str
    entry_size: int
    producers: int

    @property
    def name(self) -> str:
        return f"{self.backend} {self.api} {human_size(self.entry_size)} x{self.producers}"


def batch_entries(entry_size: int) -> int:
    return max(1, min(10_000, BATCH_BYTES // entry_size))


def plan(quick: bool, backends: list[str]) -> list[WriteCell]:
    """The cells to run. The full matrix is trimmed (see docs/benchmarks.md): every size and
    producer count for ``write_async``; ``write`` and ``write_batch`` at every size with one
    producer, and at their target entry size with 2 and 4."""
    if quick:  # a smoke run: its write cells are the targets suite's
        return []
    sizes = [KiB, 16 * KiB, 256 * KiB, MiB, 4 * MiB]
    cells = []
    for b in backends:
        cells += [WriteCell(b, "write_async", s, p) for s in sizes for p in (1, 2, 4)]
        cells += [WriteCell(b, "write", s, 1) for s in sizes]
        cells += [WriteCell(b, "write", KiB, p) for p in (2, 4)]
        cells += [WriteCell(b, "write_batch", s, 1) for s in (100, KiB, 16 * KiB, 256 * KiB)]
        cells += [WriteCell(b, "write_batch", 100, p) for p in (2, 4)]
    return cells


def run(cell: WriteCell, parent: Path, duration: float) -> dict[str, Any]:
    jobs = [
        drivers.WriteJob(
            {},
            "bench",
            cell.api,
            cell.entry_size,
            duration,
            batch_entries=batch_entries(cell.entry_size),
        )
        for _ in range(cell.producers)
    ]
    results, blocks, _ = harness.run_cell(cell.backend, parent, jobs, timeout=duration + 150)
    summary = harness.summarize(results)
    return {
        "suite": "write",
        "backend": cell.backend,
        "api": cell.api,
        "entry_size": cell.entry_size,
        "producers": cell.producers,
        "batch_entries": batch_entries(cell.entry_size) if cell.api == "write_batch" else None,
        **summary,
        **block_stats(blocks, summary["bytes"]),
    }


def block_stats(blocks: dict[str, Any], payload_bytes: int) -> dict[str, Any]:
    """How the payload was cut into objects: count, mean size, objects per GB."""
    n = blocks["blocks"]
    return {
        "blocks": n,
        "mean_block_bytes": round(blocks["block_bytes"] / n) if n else 0,
        "blocks_per_gb": round(n / (payload_bytes / 1e9), 1) if payload_bytes else None,
    }


def steps(settings: RunSettings, backend: str) -> list[Step]:
    """A cell takes its duration, ~2 s to start a logstore, and ~0.7 s per producer process."""
    return [
        Step(
            f"write {cell.name}",
            settings.duration + 2 + 0.7 * cell.producers,
            "write",
            lambda c=cell: run(c, settings.parent, settings.duration),
            {
                "suite": "write",
                "backend": cell.backend,
                "api": cell.api,
                "entry_size": cell.entry_size,
                "producers": cell.producers,
            },
            writes=True,
        )
        for cell in plan(settings.quick, [backend])
    ]
