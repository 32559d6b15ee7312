"""The write-pipeline targets, measured in paired rounds and judged: met, or missed by how much.

On a shared 2-core VM one measurement of the disk can differ from the next by 2x,
so a target that is a ratio to the raw ceiling is measured in rounds: each round
measures the raw ceiling (best block-sized shape) right before and right after
the Woodpecker cells, divides by the better of the two, and the verdict uses the
median of the per-round ratios. The
other targets use the median of their rounds too.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import suite_write
from plan import RunSettings, Step
from services import scratch
from suite_ceilings import raw_write
from suite_write import WriteCell

KiB = 1 << 10
MiB = 1 << 20


@dataclass(frozen=True)
class Target:
    name: str
    cell: WriteCell
    metric: str  # "pct_of_ceiling" | "entries_s" | "p50_ms" | "p99_ms"
    goal: float
    higher_is_better: bool = True


ROUNDS = 3  # paired ceiling + target cells per backend and round; verdicts use the medians

TARGETS = [
    Target(
        "local 1 MiB write_async >= 85% of raw write+fsync",
        WriteCell("local", "write_async", MiB, 1),
        "pct_of_ceiling",
        85,
    ),
    Target(
        "S3 1 MiB write_async >= 85% of raw PUT",
        WriteCell("s3", "write_async", MiB, 1),
        "pct_of_ceiling",
        85,
    ),
    Target(
        "one producer, local write_async 1 KiB >= 200,000 entries/s",
        WriteCell("local", "write_async", KiB, 1),
        "entries_s",
        200_000,
    ),
    Target(
        "local write_batch 100 B >= 1,000,000 entries/s",
        WriteCell("local", "write_batch", 100, 1),
        "entries_s",
        1_000_000,
    ),
    Target(
        "local sync write 1 KiB p50 <= 1.5 ms",
        WriteCell("local", "write", KiB, 1),
        "p50_ms",
        1.5,
        higher_is_better=False,
    ),
    Target(
        "local sync write 1 KiB p99 <= 5 ms",
        WriteCell("local", "write", KiB, 1),
        "p99_ms",
        5.0,
        higher_is_better=False,
    ),
]


def ceiling(
    backend: str,
    parent: Path,
    duration: float,
    quick: bool,
    step: Callable[[str], None],
    **overrides: Any,
) -> dict[str, Any]:
    """The raw write ceiling now: the best of the block-sized shapes (one shape when quick),
    written through a store configured with ``overrides``."""
    with scratch(backend, parent, **overrides) as space:
        up = space.config.uploader
        sizes = sorted({space.config.writer.max_batch_bytes, up.max_block_bytes})
        wide = max(1, up.max_inflight // up.processes)
        shapes = (
            [(up.max_block_bytes, wide)]
            if quick
            else [(s, t) for s in sizes for t in sorted({1, wide})]
        )
        best: dict[str, Any] = {}
        for size, threads in shapes:
            step(f"targets: raw {backend} {size >> 20} MiB {up.processes}x{threads}")
            result = raw_write(space, f"t-{size}-{threads}", size, up.processes, threads, duration)
            if result["mb_s"] > best.get("mb_s", 0):
                best = {
                    "mb_s": result["mb_s"],
                    "object_bytes": size,
                    "concurrency": up.processes * threads,
                }
    return best


def estimate(backend: str, duration: float, quick: bool) -> float:
    """Seconds one round takes (for the ETA): its cells and its ceiling shapes, before and
    after (one shape, before only, when quick), each with its start-up."""
    cells = sum(1 for c in dict.fromkeys(t.cell for t in TARGETS) if c.backend == backend)
    shapes = 1 if quick else 8
    return cells * (duration + 2) + shapes * (duration + 1)


def run_round(
    backend: str, parent: Path, duration: float, quick: bool, step: Callable[[str], None]
) -> dict[str, Any]:
    """One round for one backend: its ceiling, every target cell of that backend, its ceiling
    again. The disk drifts within seconds, so the ratio uses the better of the two ceilings.
    Each shape of the ceiling runs as long as a cell: a shorter one would catch a luckier or
    unluckier moment of the disk than the cells it divides."""
    before = ceiling(backend, parent, duration, quick, step)
    cells = []
    for cell in dict.fromkeys(t.cell for t in TARGETS if t.cell.backend == backend):
        step(f"targets: {cell.name}")
        cells.append(suite_write.run(cell, parent, duration))
    after = before if quick else ceiling(backend, parent, duration, quick, step)
    raw = max(before, after, key=lambda c: c["mb_s"])
    for result in cells:
        result["pct_of_ceiling"] = round(100 * result["mb_s"] / raw["mb_s"], 1)
    return {
        "backend": backend,
        "ceiling": raw,
        "ceilings_mb_s": [before["mb_s"], after["mb_s"]],
        "cells": cells,
    }


def _value(cell: dict[str, Any], metric: str) -> float:
    if metric in ("p50_ms", "p99_ms"):
        return cell["latency"][metric]
    return cell[metric]


def judge(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per target from the median over the rounds that measured its cell."""
    out = []
    for t in TARGETS:
        values = [
            _value(c, t.metric)
            for r in rounds
            if "error" not in r
            for c in r["cells"]
            if (c["backend"], c["api"], c["entry_size"], c["producers"])
            == (t.cell.backend, t.cell.api, t.cell.entry_size, t.cell.producers)
        ]
        verdict: dict[str, Any] = {
            "target": t.name,
            "goal": t.goal,
            "metric": t.metric,
            "rounds": values,
        }
        if not values:
            out.append({**verdict, "value": None, "status": "not measured", "by": ""})
            continue
        value = statistics.median(values)
        ratio = value / t.goal
        met = value >= t.goal if t.higher_is_better else value <= t.goal
        if met:
            by = f"{ratio:.2f}x the goal"
        elif t.higher_is_better:
            by = f"{100 * (1 - ratio):.0f}% short ({ratio:.2f}x)"
        else:
            by = f"{100 * (ratio - 1):.0f}% over ({ratio:.2f}x)"
        out.append({**verdict, "value": value, "status": "met" if met else "missed", "by": by})
    return out


def steps(settings: RunSettings) -> list[Step]:
    """``ROUNDS`` rounds (one when quick), each over every backend in turn, so that a backend's
    rounds are spread over the run rather than caught in one moment of its disk."""
    return [
        Step(
            f"targets round {n} {backend}",
            estimate(backend, settings.duration, settings.quick),
            "target_rounds",
            lambda b=backend, n=n: {
                "round": n,
                **run_round(
                    b, settings.parent, settings.duration, settings.quick, settings.progress
                ),
            },
            {"backend": backend, "round": n},
            writes=True,
        )
        for n in range(1, (1 if settings.quick else ROUNDS) + 1)
        for backend in settings.backends
    ]
