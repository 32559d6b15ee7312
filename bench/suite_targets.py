"""The write-pipeline targets, measured in paired rounds and judged: met, or missed by how much.

On a shared 2-core VM one measurement of the disk can differ from the next by 2x,
so a target that is a ratio to the raw ceiling is measured in rounds: each round
measures the raw ceiling (best block-sized shape) right before and right after
the Woodpecker cells, divides by the better of the two, and the verdict uses the
median of the per-round ratios. Small ``write_async`` appends are judged against
the bare Python floor measured right before and right after their cell (``mmap_floor``:
copy the same payloads into an mmap and record their offsets; the better of the two).
The other targets use the median of their rounds too.
"""

from __future__ import annotations

import mmap
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import suite_write
from goals import by_how_much
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
    # "pct_of_ceiling" | "pct_of_floor" | "entries_s" | "client_cpu_s_per_gb" | "p50_ms" | "p99_ms"
    metric: str
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
        "one producer, local write_async 1 KiB >= 40% of the bare mmap copy loop",
        WriteCell("local", "write_async", KiB, 1),
        "pct_of_floor",
        40,
    ),
    Target(
        "local write_batch 100 B >= 3,000,000 entries/s",
        WriteCell("local", "write_batch", 100, 1),
        "entries_s",
        3_000_000,
    ),
    Target(
        "producer CPU, local write_async 1 KiB <= 4 s/GB (half of 8)",
        WriteCell("local", "write_async", KiB, 1),
        "client_cpu_s_per_gb",
        4.0,
        higher_is_better=False,
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


def mmap_floor(entry_size: int, duration: float) -> dict[str, Any]:
    """The bare Python loop under ``write_async``: copy the same payload into an mmap and
    record each offset, for ``duration`` seconds (no encoding, lock, syscall or ack)."""
    payload = os.urandom(entry_size)
    arena = mmap.mmap(-1, 64 * MiB)
    offsets: list[int] = []
    keep = offsets.append
    size, pos, n = len(arena), 0, 0
    started = time.perf_counter()
    end = started + duration
    while time.perf_counter() < end:
        for _ in range(1024):
            if pos + entry_size > size:
                pos = 0
            arena[pos : pos + entry_size] = payload
            keep(pos)
            pos += entry_size
        n += 1024
    elapsed = time.perf_counter() - started
    arena.close()
    return {"entry_size": entry_size, "entries_s": round(n / elapsed)}


def estimate(backend: str, duration: float, quick: bool) -> float:
    """Seconds one round takes (for the ETA): its cells and its ceiling shapes, before and
    after (one shape, before only, when quick), each with its start-up, and the bare loops
    around the small write_async cells."""
    cells = {c for c in dict.fromkeys(t.cell for t in TARGETS) if c.backend == backend}
    floored = sum(1 for c in cells if c.api == "write_async" and c.entry_size < MiB)
    shapes = 1 if quick else 8
    return len(cells) * (duration + 2) + shapes * (duration + 1) + 2 * floored * duration


def run_round(
    backend: str, parent: Path, duration: float, quick: bool, step: Callable[[str], None]
) -> dict[str, Any]:
    """One round for one backend: its ceiling, every target cell of that backend, its ceiling
    again. The disk drifts within seconds, so the ratio uses the better of the two ceilings.
    Each shape of the ceiling runs as long as a cell: a shorter one would catch a luckier or
    unluckier moment of the disk than the cells it divides."""
    before = ceiling(backend, parent, duration, quick, step)
    cells = []
    floors: dict[int, dict[str, Any]] = {}
    for cell in dict.fromkeys(t.cell for t in TARGETS if t.cell.backend == backend):
        floored = cell.api == "write_async" and cell.entry_size < MiB
        if floored:
            step(f"targets: bare mmap loop {cell.entry_size} B")
            floor = mmap_floor(cell.entry_size, duration)
        step(f"targets: {cell.name}")
        cells.append(suite_write.run(cell, parent, duration))
        if floored:  # the loop drifts with the load as the disk does: the better of two
            floors[cell.entry_size] = max(
                floor, mmap_floor(cell.entry_size, duration), key=lambda f: f["entries_s"]
            )
    after = before if quick else ceiling(backend, parent, duration, quick, step)
    raw = max(before, after, key=lambda c: c["mb_s"])
    for result in cells:
        result["pct_of_ceiling"] = round(100 * result["mb_s"] / raw["mb_s"], 1)
        floor = floors.get(result["entry_size"]) if result["api"] == "write_async" else None
        if floor:
            result["floor_entries_s"] = floor["entries_s"]
            result["pct_of_floor"] = round(100 * result["entries_s"] / floor["entries_s"], 1)
    return {
        "backend": backend,
        "ceiling": raw,
        "ceilings_mb_s": [before["mb_s"], after["mb_s"]],
        "mmap_floors": list(floors.values()),
        "cells": cells,
    }


def _value(cell: dict[str, Any], metric: str) -> float:
    if metric in ("p50_ms", "p99_ms"):
        return cell["latency"][metric]
    if metric == "client_cpu_s_per_gb":
        return cell["usage"]["client"]["cpu_s_per_gb"]
    return cell[metric]


def _floor(t: Target, cells: list[dict[str, Any]], rounds: list[dict[str, Any]]) -> str:
    """What the goal of ``t`` was derived from in this run (medians over its rounds)."""
    if t.metric == "pct_of_floor" and cells:
        floor = statistics.median(c["floor_entries_s"] for c in cells)
        return f"bare mmap copy loop {floor:,.0f} entries/s: goal {floor * t.goal / 100:,.0f}/s"
    if t.metric == "pct_of_ceiling":
        raw = [r["ceiling"]["mb_s"] for r in rounds if r["backend"] == t.cell.backend]
        return f"raw write ceiling {statistics.median(raw):,.1f} MB/s" if raw else "-"
    if t.metric == "client_cpu_s_per_gb" and cells:
        rate = statistics.median(c["entries_s"] for c in cells)
        return f"fixed goal (measured at {rate:,.0f} entries/s)"
    return "fixed goal"


def judge(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per target from the median over the rounds that measured its cell."""
    out = []
    measured = [r for r in rounds if "error" not in r]
    for t in TARGETS:
        cells = [
            c
            for r in measured
            for c in r["cells"]
            if (c["backend"], c["api"], c["entry_size"], c["producers"])
            == (t.cell.backend, t.cell.api, t.cell.entry_size, t.cell.producers)
        ]
        values = [_value(c, t.metric) for c in cells]
        verdict: dict[str, Any] = {
            "target": t.name,
            "goal": t.goal,
            "metric": t.metric,
            "rounds": values,
            "floor": _floor(t, cells, measured),
        }
        if not values:
            out.append({**verdict, "value": None, "status": "not measured", "by": ""})
            continue
        value = statistics.median(values)
        met, by = by_how_much(value, t.goal, t.higher_is_better)
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
