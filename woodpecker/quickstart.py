"""``woodpecker quickstart``: the main job end to end on the configured (default: embedded) setup.

Writes entries through the full pipeline (shared memory → logstore → storage +
etcd), reads every one back, verifies it byte for byte, and reports throughput
and acknowledgement latency — a first run that proves the install works and
shows what the machine does. Progress goes to stderr; the report to stdout is
plain text, so ``woodpecker quickstart > out.txt`` keeps a readable record.

``--mode quorum`` starts three quorum nodes of the same deployment
(``woodpecker.local_nodes``), runs the job in memory mode and then in quorum mode, drains
the nodes (so what they held is in object storage) and sets ack latency and PUTs per GB of
both modes side by side.
"""

from __future__ import annotations

import contextlib
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
from woodpecker.errors import ConfigError, WoodpeckerError
from woodpecker.local_nodes import LocalNodes
from woodpecker.log import LogHandle
from woodpecker.message import EARLIEST, LogMessageId
from woodpecker.meta.flush import flush_cursor
from woodpecker.producer import AppendFuture
from woodpecker.progress import Progress

UPDATES_PER_PHASE = 200  # progress updates per phase: often enough, never per entry
MODES = ("memory", "quorum")
QUORUM_NODES = 3


@dataclass
class Phase:
    log_name: str
    label: str
    count: int
    size: int
    mode: str = "memory"

    @property
    def gigabytes(self) -> float:
        return self.count * self.size / 1e9


@dataclass
class WriteResult:
    phase: Phase
    seconds: float
    latencies_ms: list[float]

    def percentiles(self) -> tuple[float, float, float]:
        """Ack latency p50, p99 and max, in ms."""
        lat = sorted(self.latencies_ms) or [0.0]
        return statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))], lat[-1]

    def row(self) -> str:
        p50, p99, top = self.percentiles()
        n, size = self.phase.count, self.phase.size
        return (
            f"  {self.phase.label:14} {n:>8} {n * size / self.seconds / 1e6:9.1f} "
            f"{n / self.seconds:11.0f} {p50:9.2f} {p99:9.2f} {top:9.2f}"
        )


def comparison_lines(writes: list[WriteResult], blocks: dict[str, int]) -> list[str]:
    """Memory and quorum mode side by side per entry size: ack p50/p99 and PUTs per GB.

    ``blocks``: the blocks stored for each log; each one was one PUT (or one append of a
    local file) of an uploader or, in quorum mode, of the flushing node.
    """
    by_size: dict[int, dict[str, WriteResult]] = {}
    for w in writes:
        by_size.setdefault(w.phase.size, {})[w.phase.mode] = w
    lines = [
        "memory vs quorum mode (same job; ack in ms; PUT/GB: blocks stored per GB of entries)",
        f"  {'entries':14} {'memory p50':>10} {'p99':>8} {'PUT/GB':>9}   "
        f"{'quorum p50':>10} {'p99':>8} {'PUT/GB':>9}",
    ]
    for size, pair in by_size.items():
        cells = []
        for mode in MODES:
            w = pair[mode]
            p50, p99, _ = w.percentiles()
            per_gb = blocks[w.phase.log_name] / w.phase.gigabytes
            cells.append(f"{p50:10.2f} {p99:8.2f} {per_gb:9,.0f}")
        lines.append(f"  {_size_label(size) + ' entries':14} {cells[0]}   {cells[1]}")
    return lines


def _size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size < 1024 * 1024 else f"{size // (1024 * 1024)} MiB"


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


def _stored_blocks(client: Client, log: LogHandle) -> tuple[int, int]:
    """Segments of a log and the blocks stored for it, one PUT each: a memory-mode segment
    counts its blocks in its record, a quorum segment's flush cursor those its nodes flushed."""
    meta = client.meta_store()
    segments = log.segments()
    blocks = sum(
        flush_cursor(meta, log.log_id, s.segment_id).cursor.next_block
        if s.quorum
        else s.block_count
        for s in segments
    )
    return len(segments), blocks


def _where(log: LogHandle, segments: int, blocks: int) -> str:
    return f"  {log.name:28} {segments} segment(s), {blocks} block(s)"


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


def _phases(small: int, large: int, mode: str, compared: bool) -> list[Phase]:
    suffix = uuid.uuid4().hex[:6]
    prefix = "quickstart-" if mode == "memory" else f"quickstart-{mode}-"
    sizes = [("1k", 1024, small), ("1m", 1024 * 1024, large)]
    return [
        Phase(
            f"{prefix}{short}-{suffix}",
            f"{_size_label(size)} {mode if compared else 'entries'}",
            count,
            size,
            mode,
        )
        for short, size, count in sizes
        if count
    ]


def _in_mode(config: Config, mode: str) -> Config:
    return Config(env={}, **{**config.overrides(), "buffer_mode": mode})


def run_quickstart(
    config: Config,
    small: int,
    large: int,
    *,
    mode: str = "memory",
    quiet: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """Write, read back and verify; print a report. Returns a process exit code.

    ``mode="quorum"``: the job in memory mode, then in quorum mode on three nodes this
    function starts and stops, with both modes compared.
    """
    import woodpecker

    if mode not in MODES:
        raise ConfigError(f"quickstart mode {mode!r}: must be one of {', '.join(MODES)}")
    compared = mode == "quorum"
    modes = MODES if compared else ("memory",)
    began = time.perf_counter()
    with Client(config) as client:
        nodes = LocalNodes(client, QUORUM_NODES) if compared else contextlib.nullcontext()
        with nodes:
            runs = []
            for m in modes:
                phases = _phases(small, large, m, compared)
                with Client(_in_mode(config, m)) as mode_client:
                    writes = [_write_phase(mode_client, p, quiet) for p in phases]
                    reads = [(p, _verify(mode_client, p, quiet)) for p in phases]
                runs.append((writes, reads))
        # the nodes have drained: every entry they held is in object storage now
        writes = [w for ws, _ in runs for w in ws]
        reads = [r for _, rs in runs for r in rs]
        logs = [client.open_log(w.phase.log_name) for w in writes]
        stored = [_stored_blocks(client, log) for log in logs]
    where = [_where(log, *counts) for log, counts in zip(logs, stored, strict=True)]
    blocks = {log.name: counts[1] for log, counts in zip(logs, stored, strict=True)}
    total = sum(w.phase.count for w in writes)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    acked = (
        "acknowledged = durable in storage and committed in etcd"
        if not compared
        else f"memory: acknowledged once in storage and etcd; quorum: once {config.quorum.ack} "
        f"of {QUORUM_NODES} nodes hold it"
    )
    lines = [
        f"woodpecker quickstart, {now}",
        f"woodpecker {woodpecker.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs",
        "",
        *_setup_lines(config),
        *(
            [
                f"  nodes      {QUORUM_NODES} quorum nodes on loopback, "
                f"{config.quorum.durability} durability (started and drained by quickstart)"
            ]
            if compared
            else []
        ),
        "",
        f"write ({acked})",
        f"  {'phase':14} {'entries':>8} {'MB/s':>9} {'entries/s':>11} {'ack p50':>9} "
        f"{'p99':>9} {'max':>9}",
        *(w.row() for w in writes),
        "  (ack latencies in ms, from write_async to the acknowledgement)",
        "",
        *([*comparison_lines(writes, blocks), ""] if compared else []),
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
    if writes:
        name = writes[0].phase.log_name
        lines += [
            f"  woodpecker segments {name}",
            f"  woodpecker cat {name} --format jsonl | head -3",
            f"  woodpecker tail {name} --from earliest --format jsonl --seconds 1",
        ]
    for line in lines:
        out(line)
    return 0
