"""``scripts/services`` runs three quorum nodes beside etcd and S3: start, status, stop.

The script runs with a state directory of this test whose pid files name the etcd and
SeaweedFS that already serve the suite, so it starts only the nodes (of a deployment
named after the test) and, since those pid files are removed before ``stop``, stops
only the nodes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

import woodpecker as wp
from woodpecker.config import Config
from woodpecker.meta import MetaStore
from woodpecker.meta.nodes import registered_nodes

SCRIPT = Path(wp.__file__).resolve().parent.parent / "scripts" / "services"


def listener(port: int) -> int:
    """The pid of the process listening on ``port`` of loopback."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    raise AssertionError(f"nothing listens on port {port}")


def running(pid: int) -> bool:
    """A process that runs (an exited one its parent has not reaped yet does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_services_start_status_and_stop_the_quorum_nodes(
    services: dict[str, str], tmp_path: Path, unique: str
) -> None:
    etcd_port = int(services["WOODPECKER_ETCD_ENDPOINTS"].split(",")[0].rpartition(":")[2])
    s3_port = int(services["WOODPECKER_S3_ENDPOINT"].rpartition(":")[2])
    etcd_pid = listener(etcd_port)
    state = tmp_path / "state"
    state.mkdir()
    (state / "etcd.pid").write_text(str(etcd_pid))
    (state / "etcd.port").write_text(str(etcd_port))
    (state / "weed.pid").write_text(str(listener(s3_port)))
    env = {**os.environ, "WOODPECKER_ETCD_BINARY": psutil.Process(etcd_pid).exe()}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(SCRIPT), *args, "--dir", str(state)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

    def node_pids() -> list[int]:
        return [int((state / f"node-{n}.pid").read_text()) for n in (1, 2, 3)]

    try:
        started = run("start", "--deployment", f"t{unique}")
        assert started.returncode == 0, started.stderr
        assert (
            f"WOODPECKER_ETCD_ENDPOINTS={services['WOODPECKER_ETCD_ENDPOINTS']}" in started.stdout
        )
        dev = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (state / "quorum.env").read_text().splitlines()
        )
        assert dev["WOODPECKER_ETCD_PREFIX"] == f"/t{unique}"
        with MetaStore(Config(env=dev)) as meta:
            records = registered_nodes(meta)
        pids = node_pids()
        assert sorted(r.pid for r in records) == sorted(pids)
        assert {(r.node_id, r.durability) for r in records} == {
            ("dev-1", "memory"),
            ("dev-2", "memory"),
            ("dev-3", "memory"),
        }

        status = run("status")
        assert status.returncode == 0, status.stdout
        node_lines = [line for line in status.stdout.splitlines() if line.startswith("node ")]
        assert len(node_lines) == 3 and all(" up " in line for line in node_lines)
        assert all(f"pid={pid}" in status.stdout for pid in pids)

        assert run("start", "--deployment", f"t{unique}").returncode == 0
        assert node_pids() == pids  # idempotent: the running nodes are kept

        psutil.Process(pids[1]).kill()
        psutil.Process(pids[1]).wait(10)
        down = run("status")
        assert down.returncode == 1
        assert "DOWN  dev-2 (not running" in down.stdout
        again = run("start", "--deployment", f"t{unique}")  # waits out the killed one's lease
        assert again.returncode == 0, again.stderr
        repaired = node_pids()
        assert repaired[0] == pids[0] and repaired[2] == pids[2] and repaired[1] != pids[1]
        assert run("status").returncode == 0
    finally:
        (state / "etcd.pid").unlink()  # stop must leave the suite's servers alone
        (state / "weed.pid").unlink()
        stopped = run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(map(running, repaired))
    with MetaStore(Config(env=dev)) as meta:
        assert registered_nodes(meta) == []  # drained and deregistered
    assert running(etcd_pid)
