"""Raw backend ceilings, measured in the same run, on the same directory and bucket.

Local: plain ``write`` + ``fsync`` of whole files (what the local store does, minus
its temp-file rename and directory fsync), then sequential ``read`` of them after
dropping them from the page cache (``posix_fadvise DONTNEED``). S3: PUT / GET
with the very client Woodpecker uses (``open_store(config)``). Objects have the
uploaders' block size and the pipeline's concurrency, so the ceiling is the best
the raw backend does under the same shape of load; the 1 MiB serial figure (one
file or object at a time) is reported beside it, labelled, as a familiar scale,
and the 1 KiB serial one as the latency floor of a synchronous append.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import process_context, reap
from plan import RunSettings, Step
from services import Scratch, scratch
from stats import human_size, latency_ms, throughput

from woodpecker.config import Config
from woodpecker.storage import open_store

MiB = 1 << 20
KiB = 1 << 10


def _run_ops(
    op: Callable[[int], int], threads: int, duration: float, first: int = 0
) -> dict[str, Any]:
    """Call ``op(i)`` (returns bytes moved) from ``threads`` threads for ``duration`` s.

    Calls are numbered from ``first``.
    """
    lock = threading.Lock()
    state = {"next": 0, "bytes": 0}
    latencies: list[float] = []
    errors: list[BaseException] = []
    start = time.monotonic()
    end = start + duration

    def worker() -> None:
        while time.monotonic() < end and not errors:
            with lock:
                i = state["next"]
                state["next"] += 1
            t = time.perf_counter()
            try:
                n = op(first + i)
            except BaseException as e:
                errors.append(e)
                return
            lat = time.perf_counter() - t
            with lock:
                state["bytes"] += n
                latencies.append(lat)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(duration + 120)
    if errors:
        raise errors[0]
    return {
        "ops": len(latencies),
        "bytes": state["bytes"],
        "started": start,
        "ended": time.monotonic(),
        "latencies": latencies,
    }


def _in_process(task: str, args: tuple[Any, ...], barrier: Any, results: Any) -> None:
    """One process of a parallel raw measurement (spawned: it opens its own store)."""
    try:
        barrier.wait(60)
        results.put(("ok", TASKS[task](*args)))
    except BaseException as e:
        with contextlib.suppress(Exception):
            barrier.abort()
        results.put(("error", f"{type(e).__name__}: {e}"))


def _parallel(task: str, per_process: list[tuple[Any, ...]], duration: float) -> dict[str, Any]:
    """Run ``TASKS[task]`` in one spawned process per argument tuple, started together."""
    ctx = process_context()
    barrier = ctx.Barrier(len(per_process) + 1)
    results: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_in_process, args=(task, a, barrier, results), daemon=True)
        for a in per_process
    ]
    reports = []
    try:
        for p in procs:
            p.start()
        barrier.wait(60)
        deadline = time.monotonic() + duration + 180
        while len(reports) < len(procs):
            status, body = results.get(timeout=max(0.1, deadline - time.monotonic()))
            if status != "ok":
                raise RuntimeError(body)
            reports.append(body)
    finally:
        reap(procs, results)
    wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    latencies = [x for r in reports for x in r["latencies"]]
    nbytes = sum(r["bytes"] for r in reports)
    return {**throughput(len(latencies), nbytes, wall), "latency": latency_ms(latencies)}


def _drop_cache(path: Path) -> None:
    """Evict a file from the page cache so that reading it goes to the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_tree_cache(root: Path) -> None:
    """``_drop_cache`` for every file under ``root``."""
    for path in root.rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                _drop_cache(path)


def _local_write(directory: str, size: int, threads: int, duration: float, first: int) -> Any:
    data = os.urandom(size)
    os.makedirs(directory, exist_ok=True)

    def op(i: int) -> int:
        fd = os.open(os.path.join(directory, f"{i:08d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        return size

    return _run_ops(op, threads, duration, first)


def _local_read(directory: str, threads: int, duration: float) -> dict[str, Any]:
    """Read the files round and round for ``duration``, each evicted from the page cache first
    (a ceiling lasts as long as the figures divided by it, however few files there are)."""
    files = sorted(Path(directory).iterdir())

    def op(i: int) -> int:
        path = files[i % len(files)]
        _drop_cache(path)
        with open(path, "rb", buffering=0) as f:
            return len(f.read())

    return _run_ops(op, threads, duration)


def _s3_put(
    overrides: dict[str, Any], prefix: str, size: int, threads: int, duration: float, first: int
) -> dict[str, Any]:
    data = os.urandom(size)
    with open_store(Config(env={}, **overrides)) as store:

        def op(i: int) -> int:
            store.put(f"{prefix}/{i:08d}", data)
            return size

        return _run_ops(op, threads, duration, first)


def _s3_get(overrides: dict[str, Any], prefix: str, threads: int, duration: float) -> Any:
    """GET the objects round and round for ``duration``."""
    with open_store(Config(env={}, **overrides)) as store:
        keys = [o.key for o in store.list(prefix + "/")]
        return _run_ops(lambda i: len(store.get(keys[i % len(keys)])), threads, duration)


TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    "local_write": _local_write,
    "local_read": _local_read,
    "s3_put": _s3_put,
    "s3_get": _s3_get,
}


def raw_write(
    space: Scratch, where: str, size: int, processes: int, threads: int, duration: float
) -> dict[str, Any]:
    """Write / PUT ``size``-byte objects from ``processes`` x ``threads`` writers."""
    spread = 10**6  # each process numbers its objects from its own range
    if space.backend == "local":
        args = [
            (str(space.root / where), size, threads, duration, p * spread) for p in range(processes)
        ]
        return _parallel("local_write", args, duration)
    args = [(space.overrides, where, size, threads, duration, p * spread) for p in range(processes)]
    return _parallel("s3_put", args, duration)


def raw_read(space: Scratch, where: str, threads: int, duration: float) -> dict[str, Any]:
    """Read / GET back what ``raw_write`` wrote under ``where``, from one process, cycling
    through it for ``duration``."""
    if space.backend == "local":
        return _parallel("local_read", [(str(space.root / where), threads, duration)], duration)
    return _parallel("s3_get", [(space.overrides, where, threads, duration)], duration)


def discard(space: Scratch, where: str) -> None:
    """Delete what ``raw_write`` wrote under ``where`` (a long run would fill the disk)."""
    if space.backend == "local":
        shutil.rmtree(space.root / where, ignore_errors=True)
        return
    with open_store(space.config) as store:
        store.delete_many([o.key for o in store.list(where + "/")])


def measure_ceilings(
    backend: str, parent: Path, duration: float, quick: bool, step: Callable[[str], None]
) -> dict[str, Any]:
    """Every raw figure of one backend, in the uploaders' shape: objects of the batch and the
    block size from ``uploader.processes`` processes, one each and then ``max_inflight`` in
    flight in total; the 1 MiB and 1 KiB serial figures; then read / GET of the block-sized
    objects from one process, serially and ``read_ahead`` wide. The ceiling is the best."""
    out: dict[str, Any] = {"backend": backend, "cases": []}
    verb = "write+fsync" if backend == "local" else "PUT"
    with scratch(backend, parent) as space:
        config = space.config
        block = config.uploader.max_block_bytes
        sizes = sorted({config.writer.max_batch_bytes, block})
        procs = config.uploader.processes
        wide = max(1, config.uploader.max_inflight // procs)
        out["object_bytes"] = sizes
        if quick:
            cases = [(block, procs, wide), (MiB, 1, 1)]
            read_threads = [max(1, config.reader.read_ahead)]
        else:
            cases = [(s, procs, t) for s in sizes for t in sorted({1, wide})]
            cases += [(MiB, 1, 1), (KiB, 1, 1)]
            read_threads = sorted({1, max(1, config.reader.read_ahead)})
        for size, processes, threads in cases:
            step(f"raw {backend} {verb} {human_size(size)} {processes}x{threads}")
            where = f"w-{size}-{processes}-{threads}"
            result = raw_write(space, where, size, processes, threads, duration)
            out["cases"].append(
                {
                    "op": "write",
                    "object_bytes": size,
                    "processes": processes,
                    "concurrency": processes * threads,
                    **result,
                }
            )
        source = f"w-{block}-{procs}-{wide}"
        for threads in read_threads:
            step(f"raw {backend} {'read' if backend == 'local' else 'GET'} 1x{threads}")
            result = raw_read(space, source, threads, duration)
            out["cases"].append(
                {
                    "op": "read",
                    "object_bytes": block,
                    "processes": 1,
                    "concurrency": threads,
                    **result,
                }
            )
    for op in ("write", "read"):
        best = max(
            (c for c in out["cases"] if c["op"] == op and c["object_bytes"] in sizes),
            key=lambda c: c["mb_s"],
        )
        out[f"{op}_ceiling_mb_s"] = best["mb_s"]
        out[f"{op}_ceiling_case"] = (
            f"{human_size(best['object_bytes'])} objects, {best['processes']} processes, "
            f"{best['concurrency']} in flight"
        )
    serial = next(c for c in out["cases"] if c["object_bytes"] == MiB)
    out["write_1mib_serial_mb_s"] = serial["mb_s"]
    small = next((c for c in out["cases"] if c["object_bytes"] == KiB), None)
    out["write_1kib_serial_latency"] = small and small["latency"]
    return out


def steps(settings: RunSettings, backend: str) -> list[Step]:
    """One step per backend; it runs five shapes of ``settings.duration``, each with ~1.5 s of
    set-up (creating and discarding its objects)."""
    return [
        Step(
            f"ceilings {backend}",
            5 * (settings.duration + 1.5),
            f"ceilings.{backend}",
            lambda: measure_ceilings(
                backend, settings.parent, settings.duration, settings.quick, settings.progress
            ),
            {"backend": backend},
        )
    ]
