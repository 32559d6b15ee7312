"""Throughput of the whole pipeline in pytest-benchmark's terms, on both backends.

producer (this process, the public API) -> shm -> logstore -> uploaders -> storage +
etcd commit -> ack, and sealed reads back with ``read_batch``. Each test times a fixed
workload in ``benchmark.pedantic`` rounds; starting the logstore, opening the log, the
warm-up write and preparing a read are done before or between the rounds, never in
them. After every timed round the raw ceiling of the same backend is measured for as
long as that round took (``PairedCeiling``), so ``extra_info`` holds MB/s and
entries/s with the ceiling of the same minutes beside them, and ``pct_of_ceiling``
(the median of the per-round ratios), which ``ratio_gate`` compares with a saved
baseline. Commands: docs/benchmarks.md. Nothing here asserts a speed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from host import Logstore
from paired_ceiling import PairedCeiling, Shape
from pytest_benchmark.fixture import BenchmarkFixture
from services import SERVICE_VARS, Scratch, scratch
from stats import MB, latency_ms
from suite_ceilings import drop_tree_cache

from woodpecker import EARLIEST, Client, LogWriter

KiB = 1 << 10
MiB = 1 << 20
ROUNDS = 5
ACK_TIMEOUT = 60.0
SEALED_ENTRIES = 250_000  # the sealed log: 250,000 x 1 KiB entries (rounds of ~0.5 s)
READ_BATCH = 10_000


@dataclass
class Workload:
    """A fixed amount of work: ``run`` does it once (timed); ``check`` verifies what it
    returned (untimed). ``prepare`` runs before each round (untimed); what it returns is
    passed to ``run``."""

    entries: int
    nbytes: int
    run: Callable[..., Any]
    check: Callable[[Any], None] = lambda _: None
    prepare: Callable[[], tuple[Any, ...]] = tuple
    latencies: list[float] = field(default_factory=list)  # per call, when ``run`` records them


@pytest.fixture(scope="module")
def parent() -> Iterator[Path]:
    """Scratch spaces live in /tmp: the logstore's AF_UNIX socket path must stay short."""
    missing = [v for v in SERVICE_VARS if not os.environ.get(v)]
    if missing:
        pytest.fail(f'{", ".join(missing)} unset; run: eval "$(scripts/services start)"')
    path = Path(tempfile.mkdtemp(prefix="wp-tput-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module", params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def ceiling_space(backend: str, parent: Path) -> Iterator[Scratch]:
    """Where the raw ceilings of a backend are measured (apart from any log's data)."""
    with scratch(backend, parent) as space:
        yield space


@dataclass
class Pipeline:
    """A running pipeline of one backend and the place its ceiling is measured."""

    client: Client
    space: Scratch
    ceiling_space: Scratch


@pytest.fixture
def pipeline(backend: str, parent: Path, ceiling_space: Scratch) -> Iterator[Pipeline]:
    """A logstore of its own for each benchmark (started before its rounds, stopped with
    SIGTERM after them, so no earlier benchmark's maintenance, such as compacting its
    sealed segments, runs during these rounds) and a Client attached to it, in a private
    storage root, etcd prefix and S3 prefix."""
    with (
        # the pipeline's mechanics, not the S3 default's cost policy (its linger would make
        # each synchronous write wait for it): suite_cost measures the policy
        scratch(backend, parent, uploader_linger_ms=0.0) as space,
        Logstore(space.config),
        Client(space.config) as client,
    ):
        yield Pipeline(client, space, ceiling_space)


def open_writer(pipeline: Pipeline, name: str) -> LogWriter:
    """A writer whose session and first segment exist already (one acked warm-up write)."""
    writer = pipeline.client.open_log(name, create=True).open_writer()
    writer.write(b"warm-up", timeout=ACK_TIMEOUT)
    return writer


def block_shape(pipeline: Pipeline) -> Shape:
    """The uploaders' shape at full load: block-sized objects, ``max_inflight`` in flight."""
    up = pipeline.space.config.uploader
    return Shape("write", up.max_block_bytes, up.processes, max(1, up.max_inflight // up.processes))


def measure(
    benchmark: BenchmarkFixture, workload: Workload, ceiling: PairedCeiling, what: str
) -> None:
    """``ROUNDS`` timed rounds (after one warm-up round), each followed by its ceiling slice;
    MB/s, entries/s, the ceiling and the ratio go to ``extra_info``."""
    durations: list[float] = []
    outcomes: list[Any] = []
    warm_up = 1

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return workload.prepare(), {}

    def target(*args: Any) -> None:
        began = time.perf_counter()
        outcomes.append(workload.run(*args))
        durations.append(time.perf_counter() - began)

    def teardown(*args: Any) -> None:
        nonlocal warm_up
        workload.check(outcomes.pop())
        if warm_up:  # nothing of the warm-up round is recorded
            warm_up -= 1
            durations.clear()
            workload.latencies.clear()
            return
        ceiling.pair(durations[-1], workload.nbytes)

    ceiling.prepare(1.0)
    benchmark.pedantic(target, setup=setup, teardown=teardown, rounds=ROUNDS, warmup_rounds=1)
    if not benchmark.stats:  # benchmarks disabled: the workload ran once, untimed
        workload.check(outcomes.pop())
        return
    seconds = sum(durations)
    benchmark.extra_info.update(
        {
            "workload": what,
            "entries_per_round": workload.entries,
            "bytes_per_round": workload.nbytes,
            "mb_s": round(workload.nbytes * len(durations) / seconds / MB, 2),
            "entries_s": round(workload.entries * len(durations) / seconds, 1),
            **ceiling.summary(),
        }
    )
    if workload.latencies:
        benchmark.extra_info["latency_ms"] = latency_ms(workload.latencies)


def check_futures(futures: list[Any]) -> None:
    failed = [e for e in (f.exception(ACK_TIMEOUT) for f in futures) if e is not None]
    if failed:
        raise AssertionError(f"{len(failed)} of {len(futures)} appends failed: {failed[0]!r}")


def async_workload(writer: LogWriter, entry_size: int, count: int) -> Workload:
    payload = os.urandom(entry_size)

    def run() -> list[Any]:
        submit = writer.write_async
        futures = [submit(payload) for _ in range(count)]
        writer.flush(ACK_TIMEOUT)
        futures[-1].result(ACK_TIMEOUT)  # resolved last: flush returns once acks are in
        return futures

    return Workload(count, count * entry_size, run, check_futures)


def test_write_async_1kib(benchmark: BenchmarkFixture, pipeline: Pipeline) -> None:
    """50,000 x 1 KiB ``write_async``, then ``flush``: every entry acked."""
    writer = open_writer(pipeline, "write-async-1kib")
    ceiling = PairedCeiling(pipeline.ceiling_space, block_shape(pipeline))
    measure(benchmark, async_workload(writer, KiB, 50_000), ceiling, "write_async 50,000 x 1 KiB")
    writer.close()


def test_write_async_1mib(benchmark: BenchmarkFixture, pipeline: Pipeline) -> None:
    """128 x 1 MiB ``write_async``, then ``flush``."""
    writer = open_writer(pipeline, "write-async-1mib")
    ceiling = PairedCeiling(pipeline.ceiling_space, block_shape(pipeline))
    measure(benchmark, async_workload(writer, MiB, 128), ceiling, "write_async 128 x 1 MiB")
    writer.close()


def test_write_batch_100b(benchmark: BenchmarkFixture, pipeline: Pipeline) -> None:
    """20 ``write_batch`` calls of 10,000 x 100 B, each durable on return."""
    writer = open_writer(pipeline, "write-batch-100b")
    batch = [os.urandom(100)] * 10_000
    calls = 20

    def run() -> int:
        return sum(len(writer.write_batch(batch, timeout=ACK_TIMEOUT)) for _ in range(calls))

    def check(acked: int) -> None:
        assert acked == calls * len(batch), f"{acked} ids for {calls * len(batch)} entries"

    workload = Workload(calls * len(batch), calls * len(batch) * 100, run, check)
    ceiling = PairedCeiling(pipeline.ceiling_space, block_shape(pipeline))
    measure(benchmark, workload, ceiling, "write_batch 20 x 10,000 x 100 B")
    writer.close()


def test_write_1kib_latency(benchmark: BenchmarkFixture, pipeline: Pipeline) -> None:
    """200 synchronous 1 KiB ``write`` calls, one at a time; the ceiling is one raw 1 KiB
    durable object at a time (the floor under a synchronous append)."""
    writer = open_writer(pipeline, "write-1kib")
    payload = os.urandom(KiB)
    count = 200
    workload = Workload(count, count * KiB, lambda: None)
    clock = time.perf_counter

    def run() -> None:
        for _ in range(count):
            began = clock()
            writer.write(payload, timeout=ACK_TIMEOUT)
            workload.latencies.append(clock() - began)

    workload.run = run
    ceiling = PairedCeiling(pipeline.ceiling_space, Shape("write", KiB))
    measure(benchmark, workload, ceiling, "write 200 x 1 KiB, one at a time")
    writer.close()


@pytest.fixture(scope="module")
def sealed_log(backend: str, parent: Path) -> Iterator[tuple[Client, Scratch]]:
    """250,000 x 1 KiB entries in a log whose segments are all sealed: written through its
    own logstore, which seals them when it is stopped (SIGTERM)."""
    with scratch(backend, parent) as space:
        with Logstore(space.config) as logstore, Client(space.config) as writer_client:
            writer = writer_client.open_log("sealed", create=True).open_writer()
            payload = os.urandom(KiB)
            for _ in range(SEALED_ENTRIES // READ_BATCH):
                writer.write_batch([payload] * READ_BATCH, timeout=ACK_TIMEOUT)
            writer.close()
            logstore.stop()
        with Client(space.config) as client:
            states = {s.state for s in client.open_log("sealed").segments()}
            assert states == {"SEALED"}, f"segments not sealed: {states}"
            yield client, space


def test_read_sealed_1kib(
    benchmark: BenchmarkFixture, ceiling_space: Scratch, sealed_log: tuple[Client, Scratch]
) -> None:
    """``read_batch`` from ``EARLIEST`` over a sealed log of 250,000 x 1 KiB entries; its local
    files are evicted from the page cache before each round. The ceiling reads block-sized
    objects ``reader.read_ahead`` wide, also from the device."""
    client, space = sealed_log
    log = client.open_log("sealed")
    count = SEALED_ENTRIES

    def prepare() -> tuple[Any, ...]:
        if space.backend == "local":
            drop_tree_cache(space.root)
        return (log.open_reader(EARLIEST),)

    def run(reader: Any) -> tuple[Any, int]:
        read = 0
        while read < count:
            batch = reader.read_batch(READ_BATCH, timeout=ACK_TIMEOUT)
            assert batch is not None, f"read_batch timed out after {read} entries"
            read += batch.num_rows
        return reader, read

    def check(outcome: tuple[Any, int]) -> None:
        reader, read = outcome
        reader.close()  # deregistering the reader is not part of reading
        assert read == count, f"read {read} of {count} entries"

    workload = Workload(count, count * KiB, run, check, prepare)
    config = space.config
    shape = Shape("read", config.uploader.max_block_bytes, 1, max(1, config.reader.read_ahead))
    ceiling = PairedCeiling(ceiling_space, shape, where="read-ceiling")
    measure(benchmark, workload, ceiling, "read_batch 250,000 x 1 KiB from a sealed log")
