"""QuorumBuffer mode beside MemoryBuffer mode (and NATS), measured in the same run.

Every QuorumBuffer cell has its own scratch deployment on the run's etcd and S3 bucket,
three ``woodpecker node`` processes of it on loopback (``host.quorum_nodes``; in ``disk``
durability their files are in the cell's temporary root), a logstore and the producers;
at the end the logstore stops, then the nodes drain (SIGTERM: they flush what they hold
and deregister), so nothing is left running. The cells:

- **ack latency** of a synchronous 1 KiB ``write``: QuorumBuffer in ``memory`` and in
  ``disk`` durability (beside the 1 KiB ``fdatasync`` of that disk, measured right
  before: a ``disk`` node syncs before it answers, and all three share the disk),
  MemoryBuffer on the local backend and on S3 (with ``uploader.linger_ms`` 0, its
  low-latency setting: the S3 default lingers 250 ms), and NATS JetStream with
  ``sync_interval: always`` (``suite_nats``);
- **throughput** of ``write_async`` with 1 KiB and 1 MiB entries on S3, QuorumBuffer
  (``memory``) against MemoryBuffer, in alternating rounds (``ROUNDS``, one when quick):
  the ratio of the medians;
- **cost** at 10 MB/s of 16 KiB entries on S3 with default settings (``suite_cost``):
  PUTs per GB (the nodes' flushes) and ack p50, beside MemoryBuffer with the S3 default
  linger and with none.

Targets (docs/quorum.md): ack p50 <= 1.0 ms (memory) and <= 1.5 ms (disk), p99 <= 5 ms;
1 MiB throughput >= 80 % of MemoryBuffer's; <= 150 PUT/GB with ack p50 <= 2 ms.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import drivers
import harness
import suite_cost
import suite_nats
import suite_sync
from goals import verdict
from plan import RunSettings, Step
from stats import latency_ms

KiB = 1 << 10
MiB = 1 << 20
ROUNDS = 3  # alternating throughput rounds of a full run
MAX_P50_MS = {"memory": 1.0, "disk": 1.5}
MAX_P99_MS = 5.0
MIN_MIB_RATIO = 0.8
MAX_PUTS_PER_GB = 150
MAX_COST_ACK_P50_MS = 2.0
COST_SECONDS = 3.0  # at least: a shorter run is dominated by the drain's last, small flush

LATENCY_CELLS = {  # name -> (backend, settings of the space)
    "MemoryBuffer local": ("local", {}),
    "MemoryBuffer S3, linger 0": ("s3", {"uploader_linger_ms": 0.0}),
    "QuorumBuffer memory": ("s3", {"buffer_mode": "quorum", "quorum_durability": "memory"}),
    "QuorumBuffer disk": ("s3", {"buffer_mode": "quorum", "quorum_durability": "disk"}),
}
QUORUM_S3 = {"buffer_mode": "quorum", "quorum_durability": "memory"}


def write_cell(
    parent: Path, backend: str, api: str, size: int, duration: float, settings: dict[str, Any]
) -> dict[str, Any]:
    """One producer's cell (``harness.run_cell``: quorum nodes included when asked)."""
    job = drivers.WriteJob({}, "bench", api, size, duration)
    results, _, _ = harness.run_cell(backend, parent, [job], timeout=duration + 120, **settings)
    return harness.summarize(results)


def latency(name: str, parent: Path, duration: float) -> dict[str, Any]:
    """A synchronous 1 KiB ``write`` loop in one of ``LATENCY_CELLS``; quorum cells judged."""
    backend, settings = LATENCY_CELLS[name]
    durability = settings.get("quorum_durability")
    floor = {}
    if durability == "disk":  # what each node's group commit waits for, on the same disk
        floor = {"fdatasync": latency_ms(suite_sync.fdatasync_ms(str(parent)))}
        os.unlink(parent / "floor")
    cell = write_cell(parent, backend, "write", KiB, duration, settings)
    judged = []
    if durability:
        lat = cell["latency"]
        judged = [
            verdict(
                f"quorum {durability}: sync write 1 KiB ack p50 <= {MAX_P50_MS[durability]:g} ms",
                lat["p50_ms"],
                MAX_P50_MS[durability],
                "absolute (3 nodes, ack 2, loopback)",
                higher_is_better=False,
            ),
            verdict(
                f"quorum {durability}: sync write 1 KiB ack p99 <= {MAX_P99_MS:g} ms",
                lat["p99_ms"],
                MAX_P99_MS,
                "absolute (3 nodes, ack 2, loopback)",
                higher_is_better=False,
            ),
        ]
    return {
        "kind": "latency",
        "name": name,
        "backend": backend,
        **cell,
        **floor,
        "verdicts": judged,
    }


def nats_latency(parent: Path, duration: float) -> dict[str, Any]:
    """The peer's awaited ``publish`` of 1 KiB with ``sync_interval: always``."""
    cell = suite_nats.run(parent, "always", "publish", KiB, duration)
    return {"kind": "latency", "name": "NATS JetStream sync always", **cell, "verdicts": []}


def throughput(size: int, parent: Path, duration: float, rounds: int) -> dict[str, Any]:
    """``write_async`` on S3, MemoryBuffer then QuorumBuffer, ``rounds`` times; the ratio of
    the medians (MB/s), judged at 1 MiB."""
    memory, quorum = [], []
    for _ in range(rounds):
        memory.append(write_cell(parent, "s3", "write_async", size, duration, {}))
        quorum.append(write_cell(parent, "s3", "write_async", size, duration, QUORUM_S3))
    mem_mb_s = statistics.median(c["mb_s"] for c in memory)
    q_mb_s = statistics.median(c["mb_s"] for c in quorum)
    ratio = round(q_mb_s / mem_mb_s, 3) if mem_mb_s else 0.0
    judged = []
    if size == MiB:
        judged.append(
            verdict(
                f"S3 write_async 1 MiB: QuorumBuffer >= {MIN_MIB_RATIO:.0%} of MemoryBuffer",
                ratio,
                MIN_MIB_RATIO,
                f"median of {rounds} alternating rounds: {q_mb_s:.1f} against {mem_mb_s:.1f} MB/s",
            )
        )
    return {
        "kind": "throughput",
        "entry_size": size,
        "rounds": rounds,
        "memory": memory,
        "quorum": quorum,
        "memory_mb_s": mem_mb_s,
        "quorum_mb_s": q_mb_s,
        "ratio": ratio,
        "verdicts": judged,
    }


def cost(
    parent: Path, duration: float, durability: str | None, linger_ms: float | None
) -> dict[str, Any]:
    """``suite_cost`` at 10 MB/s of 16 KiB entries; the QuorumBuffer cell judged."""
    cell = suite_cost.run(suite_cost.TARGET_RATE_MB_S, parent, duration, linger_ms, durability)
    judged = []
    if durability is not None:
        where = f"{cell['achieved_mb_s']:.1f} MB/s achieved, {cell['put_requests']} PUTs"
        judged = [
            verdict(
                f"quorum, S3 default settings, 10 MB/s of 16 KiB: <= {MAX_PUTS_PER_GB} PUT/GB",
                cell["puts_per_gb"],
                MAX_PUTS_PER_GB,
                where,
                higher_is_better=False,
            ),
            verdict(
                f"quorum, S3 default settings, 10 MB/s of 16 KiB: ack p50 <= "
                f"{MAX_COST_ACK_P50_MS:g} ms",
                cell["ack_p50_ms"],
                MAX_COST_ACK_P50_MS,
                where,
                higher_is_better=False,
            ),
        ]
    return {"kind": "cost", "durability": durability, **cell, "verdicts": judged}


def steps(settings: RunSettings) -> list[Step]:
    """A quorum cell takes its duration and ~10 s to start and drain its nodes and logstore;
    a MemoryBuffer cell ~5 s."""
    d, parent = settings.duration, settings.parent
    rounds = 1 if settings.quick else ROUNDS
    cost_s = max(d, COST_SECONDS)
    plan = [
        Step(
            f"quorum: sync write 1 KiB, {name}",
            d + (10 if "Quorum" in name else 5),
            "quorum",
            lambda n=name: latency(n, parent, d),
            {"kind": "latency", "name": name},
        )
        for name in LATENCY_CELLS
    ]
    plan.append(
        Step(
            "quorum: NATS sync always publish 1 KiB",
            d + 1.5,
            "quorum",
            lambda: nats_latency(parent, d),
            {"kind": "latency", "name": "NATS JetStream sync always"},
        )
    )
    plan += [
        Step(
            f"quorum: S3 write_async {size // KiB} KiB, MemoryBuffer vs QuorumBuffer",
            rounds * (2 * d + 15),
            "quorum",
            lambda z=size: throughput(z, parent, d, rounds),
            {"kind": "throughput", "entry_size": size},
        )
        for size in (KiB, MiB)
    ]
    plan += [
        Step(
            f"quorum: cost S3 10 MB/s 16 KiB, {label}",
            cost_s + (14 if durability else 8),
            "quorum",
            lambda q=durability, g=linger: cost(parent, cost_s, q, g),
            {"kind": "cost", "durability": durability, "linger_ms": linger},
        )
        for label, durability, linger in (
            ("QuorumBuffer memory", "memory", None),
            ("MemoryBuffer S3 default linger", None, None),
            ("MemoryBuffer linger 0", None, 0.0),
        )
    ]
    return plan
