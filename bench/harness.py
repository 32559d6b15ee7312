"""One measurement = a logstore + producer / reader processes in a fresh scratch space.

``measure()`` starts the logstore, spawns the driver processes, releases them
together at a barrier, watches every process's CPU and memory, collects their
results within a deadline and always cleans up: processes ended, etcd keys,
objects and files deleted. Nothing of one measurement leaks into the next.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import drivers
from host import Logstore, node_processes, quorum_nodes
from services import Scratch, scratch
from stats import latency_ms, throughput
from usage import UsageMonitor, per_gb

from woodpecker.config import Config
from woodpecker.local_nodes import LocalNodes
from woodpecker.meta import MetaStore

READY_TIMEOUT = 90.0  # starting, importing and connecting several processes on 2 busy cores


def process_context() -> Any:
    """How the bench starts worker processes: forked from a clean server that has imported
    woodpecker once (milliseconds per process instead of a second of imports), never from
    this process's threads. Shared by every suite."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["drivers", "suite_ceilings"])
    return ctx


@dataclass
class Results:
    """What the driver processes reported, and the resources every process used."""

    writers: list[dict[str, Any]]
    readers: list[dict[str, Any]]
    usage: dict[str, dict[str, Any]]


def measure(
    space: Scratch,
    writes: list[drivers.WriteJob],
    reads: list[drivers.ReadJob] | None = None,
    *,
    timeout: float,
    logstore: Logstore | None = None,
    nodes: LocalNodes | None = None,
) -> Results:
    """Run the jobs against ``space`` (and its running ``logstore`` and quorum ``nodes``);
    raise on any failure."""
    ctx = process_context()
    jobs = [(drivers.produce, j) for j in writes] + [(drivers.read, j) for j in reads or []]
    barrier = ctx.Barrier(len(jobs) + 1)
    results: Any = ctx.Queue()
    procs = [ctx.Process(target=fn, args=(job, barrier, results), daemon=True) for fn, job in jobs]
    roles = {}
    try:
        for p, (fn, _) in zip(procs, jobs, strict=True):
            p.start()
            roles[p.pid] = "writer" if fn is drivers.produce else "reader"
        watched = node_processes(nodes)
        monitor = UsageMonitor(
            lambda: {**(logstore.processes() if logstore else {}), "nodes": watched}
        )
        try:
            barrier.wait(READY_TIMEOUT)
        except threading.BrokenBarrierError:
            raise RuntimeError(f"a driver failed to start: {_first_error(results)}") from None
        monitor.start()
        try:
            reports = _collect(results, len(procs), time.monotonic() + timeout)
        finally:
            usage = monitor.stop()
    finally:
        reap(procs, results)
    by_role: dict[str, list[dict[str, Any]]] = {"writer": [], "reader": []}
    for pid, report in reports:
        by_role[roles[pid]].append(report)
    for role, key in (("writer", "client"), ("reader", "reader")):
        if by_role[role]:
            usage[key] = {
                "processes": len(by_role[role]),
                "cpu_s": round(sum(r["cpu_s"] for r in by_role[role]), 3),
                "peak_rss_mib": max(r["rss_mib"] for r in by_role[role]),
            }
    return Results(by_role["writer"], by_role["reader"], usage)


def _collect(results: Any, count: int, deadline: float) -> list[tuple[int, dict[str, Any]]]:
    reports = []
    while len(reports) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"only {len(reports)} of {count} driver processes finished in time")
        try:
            status, pid, body = results.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if status != "ok":
            raise RuntimeError(f"driver process {pid} failed: {body}")
        reports.append((pid, body))
    return reports


def _first_error(results: Any) -> str:
    with contextlib.suppress(queue.Empty):
        _, pid, body = results.get(timeout=5)
        return f"process {pid}: {body}"
    return "no error reported (timed out)"


def count_blocks(config: Config) -> dict[str, Any]:
    """Blocks committed in this space, read back from etcd: what the uploaders PUT."""
    sizes: list[int] = []
    with MetaStore(config) as meta:
        for name in meta.list_logs():
            log_id = meta.get_log(name).log_id
            for segment in meta.list_segments(log_id):
                sizes.extend(b.size for b in meta.list_blocks(log_id, segment.segment_id))
    return {"blocks": len(sizes), "block_bytes": sum(sizes), "sizes": sizes}


def reap(procs: list[Any], results: Any) -> None:
    """Join the driver processes (killing any that hang) and close their result queue."""
    for p in procs:
        if p.pid is None:
            continue  # never started
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)
    results.close()


def summarize(results: Results, what: str = "writers") -> dict[str, Any]:
    """Throughput over the common wall time of all processes, merged latencies, resources."""
    reports = getattr(results, what)
    entries = sum(r["entries"] for r in reports)
    nbytes = sum(r["bytes"] for r in reports)
    failed = sum(r["failed"] for r in reports)
    if failed:
        raise RuntimeError(f"{failed} of {entries} appends failed")
    wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    latencies = [x for r in reports for x in r["latencies"]]
    return {
        **throughput(entries, nbytes, wall),
        "latency": latency_ms(latencies),
        "usage": per_gb(results.usage, nbytes),
    }


def run_cell(
    backend: str,
    parent: Path,
    writes: list[drivers.WriteJob],
    reads: list[drivers.ReadJob] | None = None,
    *,
    timeout: float,
    **overrides: Any,
) -> tuple[Results, dict[str, Any], Scratch]:
    """``measure`` inside a fresh scratch space with its own logstore (and quorum nodes, in
    ``buffer_mode="quorum"``); returns block counts too.

    The jobs' ``overrides`` are filled in from the space (pass them as ``{}``).
    """
    with scratch(backend, parent, **overrides) as space:
        with quorum_nodes(space.config) as nodes, Logstore(space.config) as logstore:
            for job in [*writes, *(reads or [])]:
                job.overrides = space.overrides
            results = measure(space, writes, reads, timeout=timeout, logstore=logstore, nodes=nodes)
            logstore.stop()
        blocks = count_blocks(space.config)  # quorum nodes have drained: all is flushed
    return results, blocks, space
