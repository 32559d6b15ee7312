"""``woodpecker quickstart``: the main job end to end on the configured (default: embedded) setup.

Writes entries through the full pipeline (shared memory → logstore → storage +
etcd), reads every one back, verifies it byte for byte, and reports throughput
and acknowledgement latency — a first run that proves the install works and
shows what the machine does. Progress goes to stderr; the report to stdout is
plain text, so ``woodpecker quickstart > out.txt`` keeps a readable record.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from woodpecker.client import Client
from woodpecker.config import Config
from woodpecker.errors import WoodpeckerError
from woodpecker.log import LogHandle
from woodpecker.message import EARLIEST, LogMessageId
from woodpecker.producer import AppendFuture
from woodpecker.progress import Progress

UPDATES_PER_PHASE = 200  # progress updates per phase: often enough, never per entry


@dataclass
class Phase:
    log_name: str
    label: str
    count: int
    size: int


@dataclass
class WriteResult:
    phase: Phase
    seconds: float
    latencies_ms: list[float]

    def row(self) -> str:
        lat = sorted(self.latencies_ms) or [0.0]
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        n, size = self.phase.count, self.phase.size
        return (
            f"  {self.phase.label:14} {n:>8} {n * size / self.seconds / 1e6:9.1f} "
            f"{n / self.seconds:11.0f} {p50:9.2f} {p99:9.2f} {lat[-1]:9.2f}"
        )


def _payload(size: int, i: int) -> bytes:
    head = i.to_bytes(8, "little")
    return (head * (size // 8 + 1))[:size]


def _write_phase(client: Client, phase: Phase, quiet: bool) -> WriteResult:
    log = client.open_log(phase.log_name, create=True)
    latencies: list[float] = []
    step = max(phase.count // UPDATES_PER_PHASE, 1)
    label = f"write {phase.label}"
    with log.open_writer() as w, Progress(label, phase.count, unit="entries", quiet=quiet) as bar:
        start = time.perf_counter()
        futures: list[AppendFuture[LogMessageId]] = []
        for i in range(phase.count):
            sent = time.perf_counter()
            fut = w.write_async(_payload(phase.size, i))
            fut.add_done_callback(
                lambda _f, t=sent: latencies.append((time.perf_counter() - t) * 1000)
            )
            futures.append(fut)
        for i, fut in enumerate(futures):  # the bar counts acknowledged entries
            fut.result()
            if (i + 1) % step == 0:
                bar.update(step)
        seconds = time.perf_counter() - start
        bar.update(phase.count - bar.done)
    return WriteResult(phase, seconds, latencies)


def _verify(client: Client, phase: Phase, quiet: bool) -> float:
    log = client.open_log(phase.log_name)
    step = max(phase.count // UPDATES_PER_PHASE, 1)
    start = time.perf_counter()
    label = f"verify {phase.label}"
    with Progress(label, phase.count, unit="entries", quiet=quiet) as bar:
        with log.open_reader(EARLIEST) as reader:
            for i in range(phase.count):
                message = reader.read_next(timeout=30)
                if message is None:
                    raise WoodpeckerError(f"{phase.log_name}: entry {i} missing after 30 s")
                if message.payload != _payload(phase.size, i):
                    raise WoodpeckerError(
                        f"{phase.log_name}: entry {i} ({message.id}) read back wrong"
                    )
                if (i + 1) % step == 0:
                    bar.update(step)
        bar.update(phase.count - bar.done)
    return time.perf_counter() - start


def _where(log: LogHandle) -> str:
    segments = log.segments()
    blocks = sum(s.block_count for s in segments)
    return f"  {log.name:26} {len(segments)} segment(s), {blocks} block(s)"


def _setup_lines(config: Config) -> list[str]:
    where = config.storage.root if config.storage.type == "local" else config.s3.endpoint
    etcd = ",".join(config.etcd.endpoints) or f"embedded, data under {config.storage.root}/etcd"
    up = config.uploader
    return [
        "setup",
        f"  storage    {config.storage.type} ({where})",
        f"  etcd       {etcd}",
        f"  logstore   {config.logstore_socket} (log: {config.logstore_log})",
        f"  uploaders  {up.processes} processes, {up.max_inflight} uploads in flight, "
        f"blocks up to {up.max_block_bytes // (1024 * 1024)} MiB",
    ]


def run_quickstart(
    config: Config,
    small: int,
    large: int,
    *,
    quiet: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """Write, read back and verify; print a report. Returns a process exit code."""
    import woodpecker

    suffix = uuid.uuid4().hex[:6]
    phases = [
        Phase("quickstart-1k-" + suffix, "1 KiB entries", small, 1024),
        Phase("quickstart-1m-" + suffix, "1 MiB entries", large, 1024 * 1024),
    ]
    phases = [p for p in phases if p.count]
    began = time.perf_counter()
    with Client(config) as client:
        writes = [_write_phase(client, p, quiet) for p in phases]
        reads = [(p, _verify(client, p, quiet)) for p in phases]
        where = [_where(client.open_log(p.log_name)) for p in phases]
    total = sum(p.count for p in phases)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"woodpecker quickstart, {now}",
        f"woodpecker {woodpecker.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs",
        "",
        *_setup_lines(config),
        "",
        "write (acknowledged = durable in storage and committed in etcd)",
        f"  {'phase':14} {'entries':>8} {'MB/s':>9} {'entries/s':>11} {'ack p50':>9} "
        f"{'p99':>9} {'max':>9}",
        *(w.row() for w in writes),
        "  (ack latencies in ms, from write_async to the acknowledgement)",
        "",
        "read back and verify (byte for byte)",
        f"  {'phase':14} {'entries':>8} {'MB/s':>9} {'entries/s':>11}",
        *(
            f"  {p.label:14} {p.count:>8} {p.count * p.size / s / 1e6:9.1f} {p.count / s:11.0f}"
            for p, s in reads
        ),
        "",
        "where the data is",
        *where,
        "",
        f"all {total} entries read back and verified ({time.perf_counter() - began:.1f} s)",
        "",
        "next",
        "  woodpecker logs list",
    ]
    if phases:
        name = phases[0].log_name
        lines += [
            f"  woodpecker segments {name}",
            f"  woodpecker cat {name} --format jsonl | head -3",
            f"  woodpecker tail {name} --from earliest --format jsonl --seconds 1",
        ]
    for line in lines:
        out(line)
    return 0
