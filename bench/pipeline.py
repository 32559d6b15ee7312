"""End-to-end write-pipeline benchmark: raw ceilings vs. Woodpecker, in one run.

Usage: ``python bench/pipeline.py [--quick]``. Reads etcd / S3 from the
``WOODPECKER_*`` environment (``eval "$(scripts/services start)"``) and prints a
Markdown table to stdout. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import woodpecker as wp
from woodpecker.config import Config
from woodpecker.storage import open_store

MiB = 1024 * 1024
KiB = 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_config(kind: str, root: str, run: str) -> Config:
    env = os.environ
    kw: dict[str, Any] = {
        "storage_type": kind,
        "storage_root": root,
        "etcd_endpoints": env["WOODPECKER_ETCD_ENDPOINTS"],
        "etcd_prefix": f"/bench/{run}",
        "logstore_socket": os.path.join(root, "ls.sock"),
        "logstore_idle_exit": 1.0,
    }
    if kind == "s3":
        kw.update(
            s3_endpoint=env["WOODPECKER_S3_ENDPOINT"],
            s3_bucket=env["WOODPECKER_S3_BUCKET"],
            s3_access_key=env["WOODPECKER_S3_ACCESS_KEY"],
            s3_secret_key=env["WOODPECKER_S3_SECRET_KEY"],
            s3_secure=env.get("WOODPECKER_S3_SECURE", "0") not in ("0", "", "false"),
            s3_prefix=f"bench/{run}",
        )
    return Config(env={}, **kw)


class Fresh:
    """Hands out a fresh log name per measurement."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, what: str) -> str:
        self.n += 1
        return f"bench-{what}-{self.n}"


def warm_up(client: wp.Client, name: str) -> None:
    """One write so logstore start-up is not part of any measurement."""
    with client.open_log(name, create=True).open_writer() as w:
        w.write(b"warm-up")
        w.flush()


# --- 1 / 3: raw ceilings ------------------------------------------------------


def raw_local(directory: str, seconds: float) -> float:
    os.makedirs(directory, exist_ok=True)
    buf = os.urandom(MiB)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fd = os.open(os.path.join(directory, f"f{n}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            os.write(fd, buf)
            os.fsync(fd)
        finally:
            os.close(fd)
        n += 1
    elapsed = time.perf_counter() - t0
    shutil.rmtree(directory, ignore_errors=True)
    return n * MiB / elapsed / 1e6


def raw_s3(config: Config, seconds: float) -> float:
    store = open_store(config)
    buf = os.urandom(MiB)
    workers = config.uploader.max_inflight
    deadline = time.perf_counter() + seconds
    counts = [0] * workers

    def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            store.put(f"raw-ceiling/{i}/{counts[i]}", buf)
            counts[i] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(worker, i) for i in range(workers)]:
            f.result()
    elapsed = time.perf_counter() - t0
    try:
        keys = [o.key for o in store.list("raw-ceiling/")]
        store.delete_many(keys)
    finally:
        store.close()
    return sum(counts) * MiB / elapsed / 1e6


# --- 2 / 4 / 5: write_async / write_batch throughput --------------------------


def async_throughput(client: wp.Client, name: str, size: int, seconds: float) -> tuple[float, int]:
    """Returns (entries/s, entries) for write_async of `size`-byte entries + flush."""
    payload = os.urandom(size)
    futures = []
    with client.open_log(name, create=True).open_writer() as w:
        t0 = time.perf_counter()
        n = 0
        while True:
            for _ in range(64):
                futures.append(w.write_async(payload))
            n += 64
            if time.perf_counter() - t0 >= seconds:
                break
        w.flush()
        elapsed = time.perf_counter() - t0
    failed = sum(1 for f in futures if f.exception() is not None)
    if failed:
        raise RuntimeError(f"{failed} of {n} write_async futures failed")
    return n / elapsed, n


def batch_throughput(client: wp.Client, name: str, seconds: float) -> tuple[float, int]:
    batch = [os.urandom(100)] * 10_000
    with client.open_log(name, create=True).open_writer() as w:
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds:
            w.write_batch(batch)
            n += len(batch)
        w.flush()
        elapsed = time.perf_counter() - t0
    return n / elapsed, n


# --- 6: sync write latency ----------------------------------------------------


def sync_latency(client: wp.Client, name: str, count: int) -> tuple[float, float]:
    payload = os.urandom(KiB)
    lat = []
    with client.open_log(name, create=True).open_writer() as w:
        for _ in range(count):
            t0 = time.perf_counter()
            w.write(payload)
            lat.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return q[49], q[98]


# --- main ---------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~1-2 s per measurement")
    args = ap.parse_args()
    secs = 1.5 if args.quick else 5.0
    sync_n = 300 if args.quick else 2000
    run = uuid.uuid4().hex[:12]
    fresh = Fresh()
    rows: list[tuple[str, str, str]] = []

    # Short socket path: keep the temp dirs under /tmp (AF_UNIX path limit).
    local_root = tempfile.mkdtemp(prefix=f"wp-bench-{run}-local-", dir="/tmp")
    s3_root = tempfile.mkdtemp(prefix=f"wp-bench-{run}-s3-", dir="/tmp")
    try:
        local_cfg = make_config("local", local_root, run + "l")
        s3_cfg = make_config("s3", s3_root, run + "s")

        log("1. raw local write+fsync ...")
        raw_l = raw_local(os.path.join(local_root, "raw-ceiling"), secs)
        rows.append(("1. raw ceiling local: 1 MiB write+fsync per file", f"{raw_l:,.1f} MB/s", "-"))

        with wp.Client(local_cfg) as c:
            warm_up(c, fresh("warmup"))
            log("2. woodpecker local 1 MiB write_async ...")
            eps, _ = async_throughput(c, fresh("local-1m"), MiB, secs)
            mbs = eps * MiB / 1e6
            rows.append(
                (
                    "2. Woodpecker local: 1 MiB write_async + flush",
                    f"{mbs:,.1f} MB/s",
                    f"{100 * mbs / raw_l:.0f}% of (1)",
                )
            )
            log("5a. woodpecker local 1 KiB write_async ...")
            eps, _ = async_throughput(c, fresh("local-1k"), KiB, secs)
            rows.append(
                (
                    "5a. local: 1 KiB write_async + flush",
                    f"{eps:,.0f} entries/s",
                    f"target 200,000: {verdict(eps >= 200_000)}",
                )
            )
            log("5b. woodpecker local write_batch ...")
            eps, _ = batch_throughput(c, fresh("local-batch"), secs)
            rows.append(
                (
                    "5b. local: write_batch, 10,000 x 100 B",
                    f"{eps:,.0f} entries/s",
                    f"target 1,000,000: {verdict(eps >= 1_000_000)}",
                )
            )
            log("6. woodpecker local sync write latency ...")
            p50, p99 = sync_latency(c, fresh("local-sync"), sync_n)
            rows.append(
                (
                    f"6. local: sync write 1 KiB, {sync_n:,} writes, p50",
                    f"{p50:.3f} ms",
                    f"target <= 1.5 ms: {verdict(p50 <= 1.5)}",
                )
            )
            rows.append(
                (
                    f"6. local: sync write 1 KiB, {sync_n:,} writes, p99",
                    f"{p99:.3f} ms",
                    f"target <= 5 ms: {verdict(p99 <= 5.0)}",
                )
            )

        log("3. raw S3 PUT ceiling ...")
        raw_s = raw_s3(s3_cfg, secs)
        rows.insert(
            2,
            (
                f"3. raw ceiling S3: 1 MiB PUT, {s3_cfg.uploader.max_inflight} threads",
                f"{raw_s:,.1f} MB/s",
                "-",
            ),
        )
        with wp.Client(s3_cfg) as c:
            warm_up(c, fresh("warmup-s3"))
            log("4. woodpecker S3 1 MiB write_async ...")
            eps, _ = async_throughput(c, fresh("s3-1m"), MiB, secs)
            mbs = eps * MiB / 1e6
            rows.insert(
                3,
                (
                    "4. Woodpecker S3: 1 MiB write_async + flush",
                    f"{mbs:,.1f} MB/s",
                    f"{100 * mbs / raw_s:.0f}% of (3)",
                ),
            )
        # Remove what this run wrote to the bucket.
        store = open_store(s3_cfg)
        try:
            store.delete_many([o.key for o in store.list("")])
        finally:
            store.close()
    finally:
        shutil.rmtree(local_root, ignore_errors=True)
        shutil.rmtree(s3_root, ignore_errors=True)

    mode = "quick" if args.quick else "full"
    print(f"| Measurement ({mode}, {secs:g} s each) | Result | vs ceiling / target |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
