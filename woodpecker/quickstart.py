"""``woodpecker quickstart``: the main job end to end on the configured (default: embedded) setup.

Writes entries through the full pipeline (shared memory → logstore → storage +
etcd), reads every one back, verifies it byte for byte, and reports throughput
and acknowledgement latency — a first run that proves the install works and
shows what the machine does.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from dataclasses import dataclass

from woodpecker.client import Client
from woodpecker.config import Config
from woodpecker.errors import WoodpeckerError
from woodpecker.message import EARLIEST
from woodpecker.producer import AppendFuture


@dataclass
class PhaseResult:
    label: str
    entries: int
    bytes: int
    seconds: float
    latencies_ms: list[float]

    def line(self) -> str:
        lat = sorted(self.latencies_ms) or [0.0]
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        mb_s = self.bytes / self.seconds / 1e6
        return (
            f"{self.label:24} {self.entries:>8} entries  {mb_s:8.1f} MB/s"
            f"  {self.entries / self.seconds:10.0f} entries/s  ack p50 {p50:6.2f} ms"
            f"  p99 {p99:7.2f} ms"
        )


def _progress(label: str, done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r{label:24} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _payload(size: int, i: int) -> bytes:
    head = i.to_bytes(8, "little")
    return (head * (size // 8 + 1))[:size]


def _write_phase(client: Client, log_name: str, label: str, count: int, size: int) -> PhaseResult:
    log = client.open_log(log_name, create=True)
    latencies: list[float] = []
    step = max(count // 50, 1)
    with log.open_writer() as writer:
        start = time.perf_counter()
        futures: list[AppendFuture] = []
        for i in range(count):
            sent = time.perf_counter()
            fut = writer.write_async(_payload(size, i))
            fut.add_done_callback(
                lambda _f, t=sent: latencies.append((time.perf_counter() - t) * 1000)
            )
            futures.append(fut)
            if i % step == 0:
                _progress(label, i, count)
        writer.flush()
        for fut in futures:
            fut.result()
        seconds = time.perf_counter() - start
    _progress(label, count, count)
    return PhaseResult(label, count, count * size, seconds, latencies)


def _verify(client: Client, log_name: str, count: int, size: int) -> float:
    log = client.open_log(log_name)
    start = time.perf_counter()
    with log.open_reader(EARLIEST) as reader:
        for i in range(count):
            message = reader.read_next(timeout=30)
            if message is None:
                raise WoodpeckerError(f"{log_name}: entry {i} missing after 30 s")
            if message.payload != _payload(size, i):
                raise WoodpeckerError(f"{log_name}: entry {i} ({message.id}) read back wrong")
            if i % max(count // 50, 1) == 0:
                _progress(f"verify {log_name[-6:]}", i, count)
    _progress(f"verify {log_name[-6:]}", count, count)
    return time.perf_counter() - start


def run_quickstart(config: Config, small: int, large: int) -> int:
    """Write, read back and verify; print a report. Returns a process exit code."""
    suffix = uuid.uuid4().hex[:6]
    phases = [
        ("quickstart-1k-" + suffix, "1 KiB entries", small, 1024),
        ("quickstart-1m-" + suffix, "1 MiB entries", large, 1024 * 1024),
    ]
    with Client(config) as client:
        results = []
        for name, label, count, size in phases:
            if count:
                results.append(_write_phase(client, name, f"write {label}", count, size))
        read_lines = []
        for name, label, count, size in phases:
            if count:
                seconds = _verify(client, name, count, size)
                read_lines.append(
                    f"read+verify {label:13} {count * size / seconds / 1e6:8.1f} MB/s"
                    f"  {count / seconds:10.0f} entries/s"
                )
    where = config.storage.root if config.storage.type == "local" else config.s3.endpoint
    etcd = ",".join(config.etcd.endpoints) or f"embedded, data under {config.storage.root}/etcd"
    print(f"storage: {config.storage.type} ({where})")
    print(f"etcd:    {etcd}")
    for r in results:
        print(r.line())
    for line in read_lines:
        print(line)
    print("all entries read back and verified")
    return 0
