"""Read throughput (sealed and tailing) and tail latency, through the public ``LogReader``.

- **sealed**: a log is written and closed (its segment sealed), its files are
  evicted from the page cache (local backend), then one reader reads it all from
  ``EARLIEST``; latency is per ``read_next`` call. The reader's object-store
  requests are counted (what S3 would bill for reading). The same log is then read
  again, cache evicted each time, by iteration, ``read_batch`` and ``read_table``,
  and its objects raw (plain reads / GETs, ``reader.read_ahead`` wide): the raw
  read ceiling of the very same bytes, measured right there, that the Arrow
  APIs are judged against.
- **tail**: a reader waits at the start of an empty log while a producer writes
  with ``write_async`` for ``duration`` seconds; how fast the reader keeps up, and
  how long after the last ack it has everything.
- **tail latency**: a producer ``write``s stamped entries at a steady pace while a
  reader waits for them: per entry, the time from the writer's ack (and from the
  append call) until the waiting reader has it. Whatever the reader's mechanism
  at run time (polling or push), this is what an application sees.

Targets (``verdicts``, local 1 KiB): ``read_batch`` / ``read_table`` >= 60 % of the
raw read of the same objects; ``read_next`` and iteration >= 800,000 entries/s;
ack-to-read p50 <= 1 ms and p99 <= 5 ms.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import drivers
import harness
from goals import verdict
from host import Logstore
from plan import RunSettings, Step
from services import Scratch, scratch
from stats import human_size, latency_ms, throughput
from suite_ceilings import drop_tree_cache
from usage import per_gb

from woodpecker.storage import open_store

KiB = 1 << 10
MiB = 1 << 20
TAIL_LATENCY_RATE = 200  # entries per second for the tail-latency writer
ARROW_APIS = ("read_batch", "read_table")
MESSAGE_APIS = ("read_next_untimed", "iterate")  # the cell's own read_next times each call
MIN_PCT_OF_RAW = 60.0
MIN_ENTRIES_S = 800_000
MAX_ACK_TO_READ_MS = {"p50_ms": 1.0, "p99_ms": 5.0}


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
        return 32 * MiB if entry_size < MiB else 64 * MiB
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
        results = _read_sealed(space, "read_next", count, limit)
        apis = {}
        if cell.entry_size < MiB:
            for api in (*MESSAGE_APIS, *ARROW_APIS):
                got = _read_sealed(space, api, count, limit).readers[0]
                apis[api] = throughput(got["entries"], got["bytes"], got["ended"] - got["started"])
            raw = _raw_read(space)
            for api in ARROW_APIS:
                apis[api]["pct_of_raw"] = round(100 * apis[api]["mb_s"] / raw["mb_s"], 1)
    report = results.readers[0]
    nbytes = report["bytes"]
    result = {
        **throughput(report["entries"], nbytes, report["ended"] - report["started"]),
        "latency": latency_ms(report["latencies"]),
        "usage": per_gb(results.usage, nbytes),
        "requests": report["requests"],
        "requests_per_gb": {k: round(v / (nbytes / 1e9), 1) for k, v in report["requests"].items()},
        "written_mb_s": harness.summarize(written)["mb_s"],
    }
    if apis:
        result.update(apis=apis, raw_read=raw)
        result["verdicts"] = _sealed_verdicts(cell, result)
    return result


def _read_sealed(space: Scratch, api: str, count: int, limit: float) -> harness.Results:
    """One reader over the whole sealed log with ``api``, the page cache evicted first."""
    if space.backend == "local":
        drop_tree_cache(space.root)
    read = drivers.ReadJob(
        space.overrides, "bench", limit, expect=count, count_requests=api == "read_next", api=api
    )
    return harness.measure(space, [], [read], timeout=limit + 60)


def _raw_read(space: Scratch) -> dict[str, Any]:
    """Read every object of the scratch store once, whole, ``reader.read_ahead`` at a time
    (local: plain ``read`` of the evicted files; S3: GETs): the same bytes the reader read."""
    config = space.config
    threads = max(1, config.reader.read_ahead)
    if space.backend == "local":
        drop_tree_cache(space.root)
        files = [p for p in (space.root / "data").rglob("*") if p.is_file()]

        def read(i: int) -> int:
            with open(files[i], "rb", buffering=0) as f:
                return len(f.read())

        count = len(files)
        store = None
    else:
        store = open_store(config)
        keys = [o.key for o in store.list()]
        count = len(keys)

        def read(i: int) -> int:
            return len(store.get(keys[i]))

    nbytes, lock, nxt = [0], threading.Lock(), iter(range(count))

    def worker() -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            size = read(i)
            with lock:
                nbytes[0] += size

    started = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    ended = time.monotonic()
    if store is not None:
        store.close()
    return {
        **throughput(count, nbytes[0], ended - started),
        "objects": count,
        "threads": threads,
    }


def _sealed_verdicts(cell: ReadCell, result: dict[str, Any]) -> list[dict[str, Any]]:
    raw = result["raw_read"]
    floor = f"raw read of the same {raw['objects']} objects: {raw['mb_s']:.0f} MB/s"
    name = f"{cell.backend} sealed {human_size(cell.entry_size)}"
    out = [
        verdict(
            f"{name} {api} >= {MIN_PCT_OF_RAW:.0f}% of raw read",
            result["apis"][api]["pct_of_raw"],
            MIN_PCT_OF_RAW,
            f"{floor}; {result['apis'][api]['mb_s']:.0f} MB/s",
        )
        for api in ARROW_APIS
    ]
    rates = {api: result["apis"][api]["entries_s"] for api in MESSAGE_APIS}
    out += [
        verdict(
            f"{name} {api.removesuffix('_untimed')} >= {MIN_ENTRIES_S:,} entries/s",
            rate,
            MIN_ENTRIES_S,
            f"absolute; read_next with each call timed: {result['entries_s']:,} entries/s",
        )
        for api, rate in rates.items()
    ]
    return out


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
    ack_latency = latency_ms([max(0.0, x) for x in ack_to_read])
    write_latency = latency_ms(write_latencies)
    name = f"{cell.backend} ack-to-read {human_size(cell.entry_size)}"
    judged = [
        verdict(
            f"{name} {q[:3]} <= {goal:g} ms",
            ack_latency[q],
            goal,
            f"the sync write's own {q[:3]}: {write_latency[q]:.2f} ms",
            higher_is_better=False,
        )
        for q, goal in MAX_ACK_TO_READ_MS.items()
    ]
    return {
        "verdicts": judged if cell.backend == "local" else [],
        "entries": len(acks),
        "rate_entries_s": TAIL_LATENCY_RATE,
        # negative: the reader had the entry before the writer's ack came back
        "ack_to_read": ack_latency,
        "read_before_ack": sum(1 for x in ack_to_read if x < 0),
        "append_to_read": latency_ms(append_to_read),
        "write_latency": write_latency,
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
