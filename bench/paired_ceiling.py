"""A raw ceiling measured in slices between timed rounds, each as long as the round before it.

The pytest-benchmark throughput runs divide every Woodpecker figure by the raw
backend's figure. On a shared machine the disk and the CPU drift within seconds,
so a ceiling measured once, or for a shorter time than the rounds, divides by a
luckier or unluckier moment than the one measured. Here the ceiling is measured
right after each timed round, for as long as that round took: every round has its
own ratio, and the ceiling covers exactly as much time as the figures it divides.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from services import Scratch
from stats import MB, human_size
from suite_ceilings import discard, raw_read, raw_write


@dataclass
class Shape:
    """What the raw backend does: ``op`` ("write" or "read") of ``size``-byte objects from
    ``processes`` x ``threads`` (reads: one process, from objects written beforehand)."""

    op: str
    size: int
    processes: int = 1
    threads: int = 1

    def describe(self, backend: str) -> str:
        verb = {"write": "write+fsync", "read": "read"} if backend == "local" else {}
        name = verb.get(self.op) or {"write": "PUT", "read": "GET"}[self.op]
        return (
            f"raw {name} of {human_size(self.size)} objects, "
            f"{self.processes} x {self.threads} in flight"
        )


@dataclass
class PairedCeiling:
    """Slices of one raw measurement in ``space``; ``pair(round_s, round_bytes)`` after each
    timed round measures the ceiling for ``round_s`` and records that round's ratio."""

    space: Scratch
    shape: Shape
    where: str = "ceiling"
    ratios: list[float] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    ops: int = 0

    def prepare(self, seconds: float) -> None:
        """Reads: write the objects the slices read back (untimed)."""
        if self.shape.op == "read":
            raw_write(self.space, self.where, self.shape.size, 1, 1, seconds)

    def pair(self, round_s: float, round_bytes: int) -> None:
        """Measure the ceiling for as long as the round took; keep the round's ratio."""
        s = self.shape
        if s.op == "write":
            result = raw_write(self.space, self.where, s.size, s.processes, s.threads, round_s)
            discard(self.space, self.where)
        else:
            result = raw_read(self.space, self.where, s.threads, round_s)
        self.bytes += result["bytes"]
        self.seconds += result["seconds"]
        self.ops += result["entries"]
        self.ratios.append(100 * (round_bytes / round_s) / (result["bytes"] / result["seconds"]))

    def summary(self) -> dict[str, Any]:
        """The ceiling over all slices, and the median of the per-round ratios."""
        return {
            "ceiling": self.shape.describe(self.space.backend),
            "ceiling_mb_s": round(self.bytes / self.seconds / MB, 2),
            "ceiling_ops_s": round(self.ops / self.seconds, 1),
            "ceiling_seconds": round(self.seconds, 3),
            "pct_of_ceiling_per_round": [round(r, 1) for r in self.ratios],
            "pct_of_ceiling": round(statistics.median(self.ratios), 1),
        }
