"""1 KiB ``write_async`` through asyncio against the synchronous API, in the same run.

    python bench/asyncio_write.py [--backend local|s3] [--seconds 3] [--rounds 3]

One process, one client, one logstore: rounds alternate a synchronous writer
(``LogWriter.write_async`` in a loop, then ``flush``) and an asyncio writer
(``AsyncLogWriter.write_async`` in a coroutine, then ``await flush()``), each
appending as fast as it may for ``--seconds``; only acknowledged entries count.
The asyncio rate over the synchronous one (medians) is the figure to watch
(target: at least 70 %). The asyncio rounds also report how many times the
acks woke the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this checkout's woodpecker

import woodpecker as wp  # noqa: E402
from woodpecker.aio import AsyncLogHandle  # noqa: E402

ENTRY = 1024
CHUNK = 64  # appends submitted between two looks at the clock, in both loops


def sync_round(log: wp.LogHandle, seconds: float, payload: bytes) -> tuple[int, float]:
    with log.open_writer() as w:
        submit = w.write_async
        n = 0
        started = time.perf_counter()
        end = started + seconds
        while time.perf_counter() < end:
            for _ in range(CHUNK):
                submit(payload)
            n += CHUNK
        w.flush()
        return n, time.perf_counter() - started


async def async_round(
    log: AsyncLogHandle, seconds: float, payload: bytes
) -> tuple[int, float, int]:
    async with log.open_writer() as w:
        relay_before = w._relay.wakeups
        submit = w.write_async
        n = 0
        started = time.perf_counter()
        end = started + seconds
        while time.perf_counter() < end:
            for _ in range(CHUNK):
                submit(payload)
            n += CHUNK
            await asyncio.sleep(0)  # a coroutine among others: let the loop run
        await w.flush()
        return n, time.perf_counter() - started, w._relay.wakeups - relay_before


async def main_async(args: argparse.Namespace) -> int:
    root = tempfile.mkdtemp(prefix="wp-bench-aio-", dir="/tmp")
    config = wp.Config(
        storage_type=args.backend,
        storage_root=root,
        etcd_prefix=f"/wp-bench-aio/{uuid.uuid4().hex[:8]}",
        s3_prefix=f"wp-bench-aio/{uuid.uuid4().hex[:8]}",
    )
    payload = os.urandom(ENTRY)
    sync_rates: list[float] = []
    async_rates: list[float] = []
    async with wp.AsyncClient(config) as client:
        alog = await client.open_log("asyncio-vs-sync", create=True)
        slog = client._client.open_log("asyncio-vs-sync")
        await async_round(alog, 0.5, payload)  # warm-up: logstore, session, arena
        print(f"{'round':>5} {'api':8} {'entries':>9} {'entries/s':>11} {'MB/s':>7} wakeups")
        for r in range(1, args.rounds + 1):
            loop = asyncio.get_running_loop()
            n, s = await loop.run_in_executor(None, sync_round, slog, args.seconds, payload)
            sync_rates.append(n / s)
            print(f"{r:>5} {'sync':8} {n:>9} {n / s:>11.0f} {n * ENTRY / s / 1e6:>7.1f}")
            n, s, wakeups = await async_round(alog, args.seconds, payload)
            async_rates.append(n / s)
            print(
                f"{r:>5} {'asyncio':8} {n:>9} {n / s:>11.0f} {n * ENTRY / s / 1e6:>7.1f} {wakeups}"
            )
    ratio = statistics.median(async_rates) / statistics.median(sync_rates)
    print(
        f"asyncio / sync (medians): {ratio:.0%}  (target >= 70 %; backend {args.backend}, "
        f"1 KiB entries, {args.seconds:g} s x {args.rounds} rounds, load {os.getloadavg()[0]:.1f})"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("local", "s3"), default="local")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    ap.add_argument("--rounds", type=int, default=3, help="sync + asyncio pairs")
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
