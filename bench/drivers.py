"""The processes that drive Woodpecker in a measurement: producers and readers.

Each runs in its own (spawned) process with its own ``Client``, as a real
application would. It gets ready (connects, opens the log, one warm-up write so
that session and segment creation are not measured), waits at a barrier so that
every process starts together, runs its loop, and sends back one result dict:
counts, its own start / end on the system-wide monotonic clock, latency samples
and its own CPU seconds and peak RSS. Every loop is bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import resource
import struct
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc

from woodpecker import EARLIEST, Client, Config, LogWriter

WARM_UP = b"warm-up"
END = b"end-of-run"
STAMP = struct.Struct("<Qd")  # entry index, submit time (time.monotonic)
ACK_TIMEOUT = 60.0


@dataclass
class WriteJob:
    """What one producer process does."""

    overrides: dict[str, Any]
    log: str
    api: str  # "write" | "write_async" | "write_batch"
    entry_size: int
    duration: float  # the timed loop's length; with ``count`` the time limit instead
    count: int = 0  # write exactly this many entries (0: as many as fit in ``duration``)
    rate: float = 0.0  # bytes/s, write_async only; 0 means as fast as possible
    batch_entries: int = 1  # entries per write_batch call
    stamped: bool = False  # write / write_async: entries carry (index, submit time)
    end_marker: bool = False  # write an END entry after the loop (tells readers to stop)
    warm_up: bool = True


@dataclass
class ReadJob:
    """What one reader process does: read ``log`` from the start until END or ``expect``.

    ``api``: ``read_next`` (each call timed), ``read_next_untimed`` and ``iterate``
    (``for message in reader``), both untimed per entry: what a consumer loop costs;
    ``read_batch`` (10,000 at a time) or ``read_table`` (``read_until``: everything
    committed, as ``log.read_table()``). All but ``read_next`` read a sealed log only
    (``expect`` entries after the warm-up).
    """

    overrides: dict[str, Any]
    log: str
    duration: float  # time limit
    expect: int = 0  # stop after this many entries (0: stop at the END entry)
    stamped: bool = False  # entries carry (index, submit time): record when each arrived
    count_requests: bool = False
    api: str = "read_next"


@dataclass
class Outcome:
    """What a loop measured (times are ``time.monotonic`` seconds, latencies seconds)."""

    entries: int = 0
    bytes: int = 0
    started: float = 0.0
    ended: float = 0.0
    latencies: list[float] = field(default_factory=list)
    stamps: dict[int, float] = field(default_factory=dict)  # entry index -> ack / receive time
    failed: int = 0
    requests: dict[str, int] = field(default_factory=dict)


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _fail(e: BaseException, barrier: Any, results: Any) -> None:
    """Report an error and release everyone waiting at the barrier."""
    with contextlib.suppress(Exception):
        barrier.abort()
    results.put(("error", os.getpid(), f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def _run(body: Callable[[], Outcome], barrier: Any, results: Any) -> None:
    """Run a prepared loop after the barrier and report its outcome (or its error)."""
    try:
        barrier.wait(ACK_TIMEOUT)
        cpu = _cpu_seconds()
        outcome = body()
        report = dict(vars(outcome), cpu_s=round(_cpu_seconds() - cpu, 3), rss_mib=_peak_rss_mib())
        results.put(("ok", os.getpid(), report))
    except BaseException as e:
        _fail(e, barrier, results)


def produce(job: WriteJob, barrier: Any, results: Any) -> None:
    """Producer process entry point."""
    try:
        client = Client(Config(env={}, **job.overrides))
        writer = client.open_log(job.log, create=True).open_writer()
        if job.warm_up:
            writer.write(WARM_UP, timeout=ACK_TIMEOUT)
    except BaseException as e:
        _fail(e, barrier, results)
        return
    try:
        loop = {"write": _sync_loop, "write_async": _async_loop, "write_batch": _batch_loop}
        _run(lambda: _finish(writer, job, loop[job.api](writer, job)), barrier, results)
    finally:
        with contextlib.suppress(Exception):
            writer.close()
        client.close()


def _finish(writer: LogWriter, job: WriteJob, outcome: Outcome) -> Outcome:
    if job.end_marker:
        writer.write(END, timeout=ACK_TIMEOUT)
    return outcome


def _payload(job: WriteJob, index: int, filler: bytes) -> bytes:
    if not job.stamped:
        return filler
    return STAMP.pack(index, time.monotonic()) + filler[STAMP.size :]


def _sync_loop(writer: LogWriter, job: WriteJob) -> Outcome:
    filler = os.urandom(max(job.entry_size, STAMP.size if job.stamped else 0))
    out = Outcome(started=time.monotonic())
    end = out.started + job.duration
    clock = time.perf_counter
    while time.monotonic() < end and (not job.count or out.entries < job.count):
        payload = _payload(job, out.entries, filler)
        t = clock()
        writer.write(payload, timeout=ACK_TIMEOUT)
        out.latencies.append(clock() - t)
        if job.stamped:
            out.stamps[out.entries] = time.monotonic()
        out.entries += 1
        if job.rate:
            _pace(out.started, out.entries * len(filler) / job.rate)
    out.ended = time.monotonic()
    out.bytes = out.entries * len(filler)
    return out


def _pace(started: float, due: float) -> None:
    """Sleep until ``due`` seconds after ``started`` (no-op when already late)."""
    left = started + due - time.monotonic()
    if left > 0:
        time.sleep(left)


def _async_loop(writer: LogWriter, job: WriteJob) -> Outcome:
    """write_async as fast as allowed (or paced at ``job.rate``), then flush.

    One append in each chunk carries a callback that records its submit-to-ack
    latency; every future is kept and checked after the flush.
    """
    payload = os.urandom(job.entry_size)
    chunk = max(1, min(64, (256 * 1024) // job.entry_size))
    submit = writer.write_async
    clock = time.perf_counter
    futures: list[Any] = []
    keep = futures.append
    out = Outcome(started=time.monotonic())
    lat = out.latencies
    end = out.started + job.duration
    tick = 0.001
    n = 0
    while time.monotonic() < end and (not job.count or n < job.count):
        if job.rate:
            due = int((time.monotonic() - out.started) * job.rate / job.entry_size) + 1
            todo = due - n
            if todo <= 0:
                time.sleep(tick)
                continue
        else:
            todo = chunk
        if job.count:
            todo = min(todo, job.count - n)
        t = clock()
        first = submit(payload)
        first.add_done_callback(lambda f, t=t: lat.append(clock() - t))
        keep(first)
        for _ in range(todo - 1):
            keep(submit(payload))
        n += todo
    writer.flush(ACK_TIMEOUT)
    out.ended = time.monotonic()
    out.failed = sum(1 for f in futures if f.exception(ACK_TIMEOUT) is not None)
    out.entries = n
    out.bytes = n * job.entry_size
    return out


def _batch_loop(writer: LogWriter, job: WriteJob) -> Outcome:
    batch = [os.urandom(job.entry_size)] * job.batch_entries
    out = Outcome(started=time.monotonic())
    end = out.started + job.duration
    clock = time.perf_counter
    while time.monotonic() < end and (not job.count or out.entries < job.count):
        t = clock()
        writer.write_batch(batch, timeout=ACK_TIMEOUT)
        out.latencies.append(clock() - t)
        out.entries += len(batch)
    out.ended = time.monotonic()
    out.bytes = out.entries * job.entry_size
    return out


class CountingStore:
    """Wraps the reader's object store to count the requests S3 would bill."""

    def __init__(self, store: Any, counts: dict[str, int]) -> None:
        self._store = store
        self._counts = counts

    def _count(self, kind: str) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + 1

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self._count("GET")
        return self._store.get(*args, **kwargs)

    def stat(self, *args: Any, **kwargs: Any) -> Any:
        self._count("HEAD")
        return self._store.stat(*args, **kwargs)

    def list(self, *args: Any, **kwargs: Any) -> Any:
        self._count("LIST")
        return self._store.list(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _count_store_requests(counts: dict[str, int]) -> None:
    """Make the Clients of this process wrap their object store in a ``CountingStore``."""
    import woodpecker.client as client_module

    opener = client_module.open_store
    client_module.open_store = lambda config: CountingStore(opener(config), counts)


def read(job: ReadJob, barrier: Any, results: Any) -> None:
    """Reader process entry point: read from EARLIEST, timing every ``read_next``."""
    counts: dict[str, int] = {}
    if job.count_requests:
        _count_store_requests(counts)
    try:
        client = Client(Config(env={}, **job.overrides))
        reader = client.open_log(job.log, create=True).open_reader(EARLIEST)
    except BaseException as e:
        _fail(e, barrier, results)
        return
    loop = {
        "read_next": _read_loop,
        "read_next_untimed": _iterate_loop,
        "iterate": _iterate_loop,
        "read_batch": _arrow_loop,
        "read_table": _arrow_loop,
    }[job.api]
    try:
        _run(lambda: loop(reader, job, counts), barrier, results)
    finally:
        reader.close()
        client.close()


def _read_loop(reader: Any, job: ReadJob, counts: dict[str, int]) -> Outcome:
    out = Outcome(started=time.monotonic(), requests=counts)
    end = out.started + job.duration
    clock = time.perf_counter
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"read {out.entries} entries, then nothing for {job.duration:.0f}s")
        t = clock()
        message = reader.read_next(timeout=min(left, 1.0))
        if message is None:
            continue
        now = time.monotonic()
        out.latencies.append(clock() - t)
        payload = message.payload
        if payload == END:
            break
        if payload != WARM_UP:
            out.entries += 1
            out.bytes += len(payload)
            if job.stamped:
                index, _ = STAMP.unpack_from(payload)
                out.stamps[index] = now
        if job.expect and out.entries >= job.expect:
            break
    out.ended = time.monotonic()
    return out


def _iterate_loop(reader: Any, job: ReadJob, counts: dict[str, int]) -> Outcome:
    """``for message in reader`` (or ``read_next`` calls) over a sealed log: entries and
    payload bytes, nothing timed per entry (the time limit is checked every 4,096 entries)."""
    out = Outcome(started=time.monotonic(), requests=counts)
    end = out.started + job.duration
    entries = nbytes = 0
    if job.api == "iterate":
        messages = iter(reader)
    else:
        messages = iter(lambda: reader.read_next(timeout=job.duration), None)
    for message in messages:
        entries += 1
        nbytes += len(message.payload)
        if entries > job.expect:  # the warm-up entry comes first
            break
        if not entries & 4095 and time.monotonic() > end:
            raise TimeoutError(f"iterated {entries} entries in {job.duration:.0f}s")
    out.ended = time.monotonic()
    out.entries, out.bytes = entries - 1, nbytes - len(WARM_UP)
    return out


def _arrow_loop(reader: Any, job: ReadJob, counts: dict[str, int]) -> Outcome:
    """``read_batch`` (10,000 entries a call) or one ``read_until`` over a sealed log; bytes are
    the payload lengths summed by Arrow (no copy of the payloads is made)."""
    out = Outcome(started=time.monotonic(), requests=counts)
    end = out.started + job.duration
    entries = nbytes = 0
    while entries <= job.expect:  # the warm-up entry comes first
        if job.api == "read_table":
            got = reader.read_until(None)
        else:
            got = reader.read_batch(10_000, timeout=max(0.0, end - time.monotonic()))
        if got is None or not got.num_rows:
            raise TimeoutError(f"read {entries} of {job.expect + 1} entries in {job.duration}s")
        entries += got.num_rows
        nbytes += pc.sum(pc.binary_length(got.column("payload"))).as_py()
    out.ended = time.monotonic()
    out.entries, out.bytes = entries - 1, nbytes - len(WARM_UP)
    return out
