"""Read throughput (sealed and tailing) and tail latency, through the public ``LogReader``.

- **sealed**: a log is written and closed (its segment sealed), its files are
  evicted from the page cache (local backend), then one reader reads it all from
  ``EARLIEST``; latency is per ``read_next`` call. The reader's object-store
  requests are counted (what S3 would bill for reading).
- **tail**: a reader waits at the start of an empty log while a producer writes
  with ``write_async`` for ``duration`` seconds; how fast the reader keeps up, and
  how long after the last ack it has everything.
- **tail latency**: a producer ``write``s stamped entries at a steady pace while a
  reader waits for them: per entry, the time from the writer's ack (and from the
  append call) until the waiting reader has it. Whatever the reader's mechanism
  at run time (polling or push), this is what an application sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import drivers
import harness
from host import Logstore
from plan import RunSettings, Step
from services import scratch
from stats import human_size, latency_ms, throughput
from suite_ceilings import drop_tree_cache
from usage import per_gb

KiB = 1 << 10
MiB = 1 << 20
TAIL_LATENCY_RATE = 200  # entries per second for the tail-latency writer


@dataclass(frozen=True)
class ReadCell:
    backend: str
    mode: str  # "sealed" | "tail" | "tail_latency"
    entry_size: int

    @property
    def name(self) -> str:
        return f"{self.backend} read {self.mode} {human_size(self.entry_size)}"


def plan(quick: bool, backends: list[str]) -> list[ReadCell]:
    if quick:
        return [
            ReadCell(b, m, KiB)
            for b in backends
            if b == "local"
            for m in ("sealed", "tail_latency")
        ]
    cells = []
    for b in backends:
        cells += [ReadCell(b, "sealed", s) for s in (KiB, MiB)]
        cells += [ReadCell(b, "tail", s) for s in (KiB, MiB)]
        cells.append(ReadCell(b, "tail_latency", KiB))
    return cells


def sealed_bytes(entry_size: int, quick: bool) -> int:
    """How much a sealed-read measurement writes first."""
    if quick:
        return 8 * MiB if entry_size < MiB else 64 * MiB
    return 64 * MiB if entry_size < MiB else 512 * MiB


def run(cell: ReadCell, parent: Path, duration: float, quick: bool) -> dict[str, Any]:
    runner = {"sealed": _sealed, "tail": _tail, "tail_latency": _tail_latency}[cell.mode]
    result = runner(cell, parent, duration, quick)
    return {
        "suite": "read",
        "backend": cell.backend,
        "mode": cell.mode,
        "entry_size": cell.entry_size,
        **result,
    }


def _sealed(cell: ReadCell, parent: Path, duration: float, quick: bool) -> dict[str, Any]:
    count = sealed_bytes(cell.entry_size, quick) // cell.entry_size
    limit = 120.0
    with scratch(cell.backend, parent) as space:
        with Logstore(space.config) as logstore:
            write = drivers.WriteJob(
                space.overrides, "bench", "write_async", cell.entry_size, limit, count=count
            )
            written = harness.measure(space, [write], timeout=limit + 60, logstore=logstore)
        if cell.backend == "local":
            drop_tree_cache(space.root)
        read = drivers.ReadJob(space.overrides, "bench", limit, expect=count, count_requests=True)
        results = harness.measure(space, [], [read], timeout=limit + 60)
    report = results.readers[0]
    nbytes = report["bytes"]
    return {
        **throughput(report["entries"], nbytes, report["ended"] - report["started"]),
        "latency": latency_ms(report["latencies"]),
        "usage": per_gb(results.usage, nbytes),
        "requests": report["requests"],
        "requests_per_gb": {k: round(v / (nbytes / 1e9), 1) for k, v in report["requests"].items()},
        "written_mb_s": harness.summarize(written)["mb_s"],
    }


def _tail(cell: ReadCell, parent: Path, duration: float, quick: bool) -> dict[str, Any]:
    write = drivers.WriteJob({}, "bench", "write_async", cell.entry_size, duration, end_marker=True)
    read = drivers.ReadJob({}, "bench", duration + 120)
    results, _, _ = harness.run_cell(cell.backend, parent, [write], [read], timeout=duration + 150)
    w, r = results.writers[0], results.readers[0]
    if r["entries"] != w["entries"]:
        raise RuntimeError(f"the tail reader got {r['entries']} of {w['entries']} entries")
    return {
        **throughput(r["entries"], r["bytes"], r["ended"] - w["started"]),
        "latency": latency_ms(r["latencies"]),
        "writer_mb_s": throughput(w["entries"], w["bytes"], w["ended"] - w["started"])["mb_s"],
        "catch_up_ms": round((r["ended"] - w["ended"]) * 1e3, 1),
        "usage": per_gb(results.usage, r["bytes"]),
    }


def _tail_latency(cell: ReadCell, parent: Path, duration: float, quick: bool) -> dict[str, Any]:
    write = drivers.WriteJob(
        {},
        "bench",
        "write",
        cell.entry_size,
        duration,
        rate=TAIL_LATENCY_RATE * cell.entry_size,
        stamped=True,
        end_marker=True,
    )
    read = drivers.ReadJob({}, "bench", duration + 120, stamped=True)
    results, _, _ = harness.run_cell(cell.backend, parent, [write], [read], timeout=duration + 150)
    acks = results.writers[0]["stamps"]
    write_latencies = results.writers[0]["latencies"]  # in entry order
    seen = results.readers[0]["stamps"]
    missing = len(set(acks) - set(seen))
    if missing:
        raise RuntimeError(f"the waiting reader never got {missing} of {len(acks)} entries")
    ack_to_read = [seen[i] - acks[i] for i in acks]
    append_to_read = [seen[i] - (acks[i] - write_latencies[i]) for i in acks]
    return {
        "entries": len(acks),
        "rate_entries_s": TAIL_LATENCY_RATE,
        # negative: the reader had the entry before the writer's ack came back
        "ack_to_read": latency_ms([max(0.0, x) for x in ack_to_read]),
        "read_before_ack": sum(1 for x in ack_to_read if x < 0),
        "append_to_read": latency_ms(append_to_read),
        "write_latency": latency_ms(write_latencies),
    }


def steps(settings: RunSettings, backend: str) -> list[Step]:
    """A cell takes its duration and ~6 s to start its logstore and write what it reads."""
    return [
        Step(
            cell.name,
            settings.duration + 6,
            "read",
            lambda c=cell: run(c, settings.parent, settings.duration, settings.quick),
            {
                "suite": "read",
                "backend": cell.backend,
                "mode": cell.mode,
                "entry_size": cell.entry_size,
            },
        )
        for cell in plan(settings.quick, [backend])
    ]
