"""Ack latency of a 1 KiB batch replicated to three real ``woodpecker node`` processes.

    python bench/quorum_ack.py [--durability memory,disk] [--calls 2000] [--seconds 3]

For each durability: three nodes on loopback (etcd from ``WOODPECKER_ETCD_ENDPOINTS``,
else the embedded one of a temporary root), one ``SegmentReplicator`` with ``ack`` 2:

- **serial**: one append at a time, ``--calls`` times; ack latency p50/p99 (the time from
  ``append`` until 2 of 3 nodes hold it, measured in this process);
- **pipelined**: up to ``--inflight`` appends outstanding for ``--seconds``; acked per second.

This is the replication path alone (no producer, shared memory or coordinator in front
of it): the floor under QuorumBuffer mode's ack latency. Targets (docs/quorum.md): p50 <=
1.0 ms in memory durability, <= 1.5 ms in disk durability, p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this checkout's woodpecker

from woodpecker.config import Config  # noqa: E402
from woodpecker.deployment import Deployment  # noqa: E402
from woodpecker.format import encode_batch_message  # noqa: E402
from woodpecker.meta import MetaStore  # noqa: E402
from woodpecker.meta.nodes import registered_nodes  # noqa: E402
from woodpecker.quorum.client import (  # noqa: E402
    EnsembleMember,
    QuorumSegment,
    SegmentReplicator,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_nodes(config: Config, durability: str) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(3):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "WOODPECKER_STORAGE_ROOT": config.storage.root,
            "WOODPECKER_ETCD_PREFIX": config.etcd.prefix,
            "WOODPECKER_QUORUM_DURABILITY": durability,
            "WOODPECKER_NODE_LISTEN": f"127.0.0.1:{_free_port()}",
            "WOODPECKER_NODE_ID": f"bench-{durability}-{i}",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "woodpecker", "node"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


def _ensemble(config: Config, durability: str) -> list[EnsembleMember]:
    with MetaStore(config) as meta:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            nodes = [n for n in registered_nodes(meta) if n.durability == durability]
            if len(nodes) == 3:
                return [EnsembleMember(n.node_id, n.address, n.incarnation) for n in nodes]
            time.sleep(0.1)
    raise SystemExit("the nodes did not register within 60 s")


async def _measure(
    config: Config, members: list[EnsembleMember], args: argparse.Namespace, segment: QuorumSegment
) -> tuple[list[float], float]:
    replicator = await SegmentReplicator.open(members, Deployment.of(config), segment)
    message = encode_batch_message([os.urandom(1024)])
    for _ in range(200):  # warm up
        await replicator.append(message, 1, 5.0)
    times = []
    for _ in range(args.calls):
        t = time.perf_counter()
        await replicator.append(message, 1, 5.0)
        times.append(time.perf_counter() - t)
    inflight: set[asyncio.Future[int]] = set()
    acked = 0
    stop = time.perf_counter() + args.seconds
    while time.perf_counter() < stop:
        while len(inflight) < args.inflight:
            inflight.add(replicator.append(message, 1, 5.0))
        done, inflight = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
        acked += sum(1 for f in done if f.result() >= 0)
    await asyncio.gather(*inflight)
    acked += len(inflight)
    await replicator.close()
    return times, acked / args.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--durability", default="memory,disk")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--inflight", type=int, default=32)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="wp-bench-quorum-", dir="/tmp")
    config = Config(storage_root=root, etcd_prefix=f"/wp-bench-quorum/{uuid.uuid4().hex[:8]}")
    print(f"loadavg {os.getloadavg()[0]:.2f}; 1 KiB batches, 3 nodes, ack 2, loopback")
    print(f"{'durability':<11} {'ack p50 ms':>10} {'ack p99 ms':>10} {'pipelined acks/s':>17}")
    for durability in args.durability.split(","):
        procs = _start_nodes(config, durability)
        try:
            members = _ensemble(config, durability)
            with MetaStore(config) as meta:  # nodes flush and forget segments by their records
                log = meta.create_log(f"bench-{durability}", "quorum")
                session = meta.acquire_writer(log.log_id, "bench")
                try:
                    session.create_segment(0, ensemble=members, ack=2)
                    segment = QuorumSegment(log.log_id, 0, session.epoch, ack=2, node_timeout=5.0)
                    times, rate = asyncio.run(_measure(config, members, args, segment))
                finally:
                    session.release()
            q = statistics.quantiles(times, n=100)
            print(f"{durability:<11} {q[49] * 1e3:>10.3f} {q[98] * 1e3:>10.3f} {rate:>17,.0f}")
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
