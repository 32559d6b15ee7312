"""Resource bounds: a producer far faster than the backend keeps memory flat.

The backend is S3 behind the fault proxy throttled to a slow drip; a producer
process offers 64 KiB entries as fast as it can. The shared-memory arena bounds
what is in flight, backpressure blocks appends (failing them with
BackpressureTimeout past writer.append_timeout: those must never become
readable), so the producer offers about the backend's rate; the resident memory
of the producer, the logstore and its uploaders is sampled throughout: after a
warm-up quarter it may grow by the arena's pages and noise, never with the data
offered. CI soaks 8 s; ``--long`` 10 minutes.
"""

from __future__ import annotations

import time

import psutil

import woodpecker as wp
from chaos.faultproxy import FaultProxy
from chaos.history import assert_valid, check, read_back
from chaos.processes import uploader_pids, wait_logstore, wait_until
from chaos.scale import pick
from chaos.workload import Plan

MiB = 1 << 20
ARENA = 16 * MiB
DRIP = 2 * MiB  # bytes per second the "backend" accepts
# growth allowed after the warm-up: the arena's pages (touched as the ring allocator first
# goes round, which at the drip rate outlasts a short soak) plus allocator noise
RSS_SLACK = ARENA + 16 * MiB


def rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def test_a_producer_faster_than_the_backend_keeps_memory_flat(make_config, services, fleet_factory):
    soak = pick(8, 600)
    host, port = services["WOODPECKER_S3_ENDPOINT"].split(":")
    with FaultProxy(host, int(port)) as proxy:
        proxy.set(drip=DRIP)
        config = make_config(
            "s3",
            s3_endpoint=proxy.endpoint,
            writer_arena_size=ARENA,
            writer_append_timeout=1.0,
            uploader_processes=1,
            uploader_max_inflight=1,  # one upload, one connection: the drip is the backend rate
            s3_timeout=30.0,
            retry_deadline=60.0,
        )
        with wp.Client(config) as client:
            client.create_log("flood")
        fleet = fleet_factory(config, "flood", Plan(sizes=(64 * 1024,), big=64 * 1024, window=4096))
        fleet.start_process("flood")
        producer = fleet.processes["flood"].pid
        store = wait_logstore(config)
        wait_until(lambda: uploader_pids(store), 30, "the logstore started no uploader")
        watched = {"producer": producer, "logstore": store}
        watched |= {f"uploader{i}": p for i, p in enumerate(uploader_pids(store))}
        samples: dict[str, list[int]] = {name: [] for name in watched}
        started = time.monotonic()
        while time.monotonic() - started < soak:
            for name, pid in watched.items():
                samples[name].append(rss(pid))
            time.sleep(0.5)
        offered = sum(len(op.payload) for op in fleet.ops())
        proxy.heal()  # let the backlog drain so the producer can stop
        fleet.stop()
    with wp.Client(make_config("s3")) as client:  # same log, read without the proxy
        report = check(fleet.ops(), read_back(client.open_log("flood")))
    assert_valid(report)
    refused = sum("BackpressureTimeout" in op.error for op in fleet.ops())
    lines = []
    for name, values in samples.items():
        values = [v for v in values if v] or [0]
        warm = max(1, len(values) // 4)  # the arena is mapped and touched in the first quarter
        baseline, peak = max(values[:warm]), max(values[warm:] or values)
        growth = peak - baseline
        lines.append(f"{name} {baseline / MiB:.0f}->{peak / MiB:.0f} MiB")
        assert growth < RSS_SLACK, f"{name} RSS grew by {growth / MiB:.0f} MiB: {lines[-1]}"
    print(
        f"\nflood for {soak}s at {DRIP / MiB:.0f} MiB/s backend: offered {offered / MiB:.0f} MiB, "
        f"{refused} appends refused by backpressure; RSS {', '.join(lines)}; {report.summary()}"
    )
    # unthrottled, the producer would offer hundreds of MiB/s: backpressure held it to about
    # the backend's rate plus what the arena holds
    assert offered <= DRIP * soak + 2 * ARENA, "backpressure did not hold the producer back"
