"""A synchronous ``write`` of 1 KiB on the local backend, against its physical floor.

An ack needs the block on disk and its commit in etcd, one after the other, so the
floor of a synchronous append is one 1 KiB append + ``fdatasync`` (on the directory
the cell writes to) plus one etcd compare-and-put txn (on the etcd the cell commits
to), both measured right before the cell. Targets: p50 <= 2x the floor, p99 <= 3 ms.
"""

from __future__ import annotations

import os
import time
from typing import Any

import drivers
import harness
from goals import verdict
from plan import RunSettings, Step
from services import scratch
from stats import latency_ms

from woodpecker.meta.connection import EtcdConnection

KiB = 1 << 10
FLOOR_SAMPLES = 300
MAX_P50_OVER_FLOOR = 2.0
MAX_P99_MS = 3.0


def fdatasync_ms(directory: str) -> list[float]:
    """1 KiB appended and fdatasynced, ``FLOOR_SAMPLES`` times, to one file in ``directory``."""
    data = os.urandom(KiB)
    fd = os.open(os.path.join(directory, "floor"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    samples = []
    try:
        for _ in range(FLOOR_SAMPLES):
            start = time.perf_counter()
            os.write(fd, data)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    return samples


def _etcd_txn_ms(etcd: EtcdConnection, prefix: str) -> list[float]:
    """A compare-and-put txn (the shape of a commit), ``FLOOR_SAMPLES`` times."""
    ops, key = etcd.ops, f"{prefix}/floor"
    revision = 0
    samples = []
    for i in range(FLOOR_SAMPLES):
        start = time.perf_counter()
        ok, replies = etcd.txn(
            "bench_floor", [ops.mod(key) == revision], success=[ops.put(key, str(i))]
        )
        samples.append(time.perf_counter() - start)
        if not ok:
            raise RuntimeError("bench floor txn: the key changed under the bench")
        revision = replies[0].response_put.header.revision
    etcd.call("bench_floor", lambda c: c.delete(key))
    return samples


def run(settings: RunSettings) -> dict[str, Any]:
    """The floor's two parts, then the sync ``write`` cell; the verdicts."""
    with scratch("local", settings.parent) as space:
        config = space.config
        os.makedirs(config.storage.root, exist_ok=True)
        disk = latency_ms(fdatasync_ms(config.storage.root))
        etcd = EtcdConnection(config, list(config.etcd.endpoints))
        try:
            txn = latency_ms(_etcd_txn_ms(etcd, config.etcd.prefix))
        finally:
            etcd.close()
    write = drivers.WriteJob({}, "bench", "write", KiB, settings.duration)
    results, _, _ = harness.run_cell(
        "local", settings.parent, [write], timeout=settings.duration + 120
    )
    cell = harness.summarize(results)
    floor = disk["p50_ms"] + txn["p50_ms"]
    where = f"fdatasync 1 KiB p50 {disk['p50_ms']:.3f} ms + etcd txn p50 {txn['p50_ms']:.3f} ms"
    return {
        "fdatasync": disk,
        "etcd_txn": txn,
        "floor_ms": floor,
        "write": cell,
        "verdicts": [
            verdict(
                f"local sync write 1 KiB p50 <= {MAX_P50_OVER_FLOOR:g}x the floor (ms)",
                cell["latency"]["p50_ms"],
                MAX_P50_OVER_FLOOR * floor,
                where,
                higher_is_better=False,
            ),
            verdict(
                f"local sync write 1 KiB p99 <= {MAX_P99_MS:g} ms",
                cell["latency"]["p99_ms"],
                MAX_P99_MS,
                "absolute",
                higher_is_better=False,
            ),
        ],
    }


def steps(settings: RunSettings) -> list[Step]:
    return [
        Step(
            "sync write 1 KiB against its floor",
            settings.duration + 10,
            "sync",
            lambda: run(settings),
            {"backend": "local", "entry_size": KiB},
            writes=True,
        )
    ]
