"""Object-store requests per GB and what they cost per month at S3 list prices.

The request count depends on the write rate: without a linger the pipeline cuts
small blocks at a low rate (it uploads as soon as it has room, so as not to delay
acks), so each paced run writes at the rate it prices, once with the S3 default
``uploader.linger_ms`` (blocks wait to fill) and once with 0 (latency first). PUTs are
counted from the blocks committed in etcd (one PUT per block, CreateMultipartUpload
+ parts + Complete above ``uploader.multipart_threshold``); in QuorumBuffer mode the nodes
make the PUTs (one per flushed range), counted once they have drained, from the committed
blocks and the objects stored, whichever is more; GETs and LISTs by
wrapping the store of a reader that then reads everything back once. Storage
(GB-month) is not priced: it depends on retention, not on Woodpecker.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import drivers
import harness
from goals import verdict
from host import Logstore, quorum_nodes
from plan import RunSettings, Step
from services import scratch

from woodpecker.config import Config
from woodpecker.storage import open_store

PUT_PRICE = 0.005 / 1000  # $ per PUT / COPY / POST / LIST request (S3 Standard list price)
GET_PRICE = 0.0004 / 1000  # $ per GET / SELECT and all other requests
SECONDS_PER_MONTH = 30 * 24 * 3600
RATES_MB_S = (1, 10, 100)
ENTRY_SIZE = 16 * 1024
TARGET_RATE_MB_S = 10
MAX_PUTS_PER_GB = 700  # with default settings, at TARGET_RATE_MB_S


def put_requests(sizes: list[int], config: Config) -> int:
    """The PUT-class requests the uploaders made for blocks of these sizes."""
    threshold, part = config.uploader.multipart_threshold, config.uploader.part_size
    return sum(1 if s <= threshold else 2 + math.ceil(s / part) for s in sizes)


def flushed_objects(config: Config) -> int:
    """The objects the quorum nodes stored (``.arrow``, committed or not): one PUT each."""
    with open_store(config) as store:
        return sum(1 for o in store.list("") if o.key.endswith(".arrow"))


def monthly_cost(rate_mb_s: float, puts_per_gb: float, gets_per_gb: float) -> dict[str, float]:
    """$ per month for a log written at ``rate_mb_s`` and read back once."""
    gb = rate_mb_s * 1e6 * SECONDS_PER_MONTH / 1e9
    put = puts_per_gb * gb * PUT_PRICE
    get = gets_per_gb * gb * GET_PRICE
    return {
        "gb_per_month": round(gb),
        "put_usd": round(put, 2),
        "get_usd": round(get, 2),
        "total_usd": round(put + get, 2),
    }


def run(
    rate_mb_s: float,
    parent: Path,
    duration: float,
    linger_ms: float | None = None,
    durability: str | None = None,
) -> dict[str, Any]:
    """Write at ``rate_mb_s`` (S3 backend, 16 KiB entries), read it all back, count requests.

    ``linger_ms=None``: the S3 default of ``uploader.linger_ms``. ``durability``: a
    QuorumBuffer log on three nodes of that ``quorum.durability`` (their flushes are the
    PUTs, counted once they have drained); None: MemoryBuffer."""
    limit = duration + 120
    settings: dict[str, Any] = {} if linger_ms is None else {"uploader_linger_ms": linger_ms}
    if durability is not None:
        settings.update(buffer_mode="quorum", quorum_durability=durability)
    with scratch("s3", parent, **settings) as space:
        with quorum_nodes(space.config) as nodes, Logstore(space.config) as logstore:
            write = drivers.WriteJob(
                space.overrides, "bench", "write_async", ENTRY_SIZE, duration, rate=rate_mb_s * 1e6
            )
            written = harness.measure(space, [write], timeout=limit, logstore=logstore, nodes=nodes)
            logstore.stop()
        blocks = harness.count_blocks(space.config)
        puts = put_requests(blocks["sizes"], space.config)
        if durability is not None:
            # a node flush is one PUT (never multipart); one whose commit lost leaves an orphan
            puts = max(puts, flushed_objects(space.config))
        read = drivers.ReadJob(
            space.overrides,
            "bench",
            limit,
            expect=written.writers[0]["entries"],
            count_requests=True,
        )
        got = harness.measure(space, [], [read], timeout=limit)
    w = harness.summarize(written)
    gb = w["bytes"] / 1e9
    requests = got.readers[0]["requests"]
    puts_per_gb = puts / gb
    gets_per_gb = requests.get("GET", 0) / gb
    judged = []
    if linger_ms is None and durability is None and rate_mb_s == TARGET_RATE_MB_S:
        judged.append(
            verdict(
                f"S3 default settings, {TARGET_RATE_MB_S} MB/s of 16 KiB entries: "
                f"<= {MAX_PUTS_PER_GB} PUT/GB",
                round(puts_per_gb, 1),
                MAX_PUTS_PER_GB,
                f"ack p50 {w['latency']['p50_ms']:.1f} ms at {w['mb_s']:.1f} MB/s achieved",
                higher_is_better=False,
            )
        )
    return {
        "suite": "cost",
        "buffer_mode": space.config.buffer.mode,
        "target_mb_s": rate_mb_s,
        "linger_ms": space.config.uploader.linger_ms,
        "default": linger_ms is None,
        "verdicts": judged,
        "achieved_mb_s": w["mb_s"],
        "ack_p50_ms": w["latency"]["p50_ms"],
        "ack_p99_ms": w["latency"]["p99_ms"],
        "entry_size": ENTRY_SIZE,
        "blocks": blocks["blocks"],
        "mean_block_bytes": round(blocks["block_bytes"] / max(1, blocks["blocks"])),
        "put_requests": puts,
        "read_requests": requests,
        "puts_per_gb": round(puts_per_gb, 1),
        "gets_per_gb": round(gets_per_gb, 1),
        "lists_per_gb": round(requests.get("LIST", 0) / gb, 1),
        # priced at the target rate, with the request density measured at that rate
        "monthly": monthly_cost(rate_mb_s, puts_per_gb, gets_per_gb),
    }


def steps(settings: RunSettings) -> list[Step]:
    """Every rate (10 MB/s only when quick), with the default linger and with none; a cell
    takes its duration and ~8 s to start its logstore and count its requests."""
    rates = (TARGET_RATE_MB_S,) if settings.quick else RATES_MB_S
    return [
        Step(
            f"cost s3 at {rate} MB/s, linger {'default' if linger is None else '0'}",
            settings.duration + 8,
            "cost",
            lambda r=rate, g=linger: run(r, settings.parent, settings.duration, g),
            {"suite": "cost", "target_mb_s": rate, "linger_ms": linger},
        )
        for rate in rates
        for linger in (None, 0.0)
    ]
