"""``woodpecker quickstart --mode quorum``: its own three quorum nodes, gone when it ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import woodpecker as wp
from woodpecker.client import Client
from woodpecker.config import Config
from woodpecker.errors import WoodpeckerError
from woodpecker.local_nodes import LocalNodes
from woodpecker.meta.nodes import registered_nodes

ROOT = Path(wp.__file__).resolve().parent.parent


def node_children(pid: int) -> list[psutil.Process]:
    """The running ``woodpecker node`` processes that ``pid`` started."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "node" in c.cmdline() and c.status() != psutil.STATUS_ZOMBIE]


def test_local_nodes_register_and_drain_on_exit(make_config: Callable[..., Config]) -> None:
    with Client(make_config("local")) as client:
        with LocalNodes(client) as nodes:
            registered = {r.pid: r for r in registered_nodes(client.meta_store())}
            assert sorted(registered) == sorted(p.pid for p in nodes.procs)
            assert {r.state for r in registered.values()} == {"serving"}
            assert all(r.address.startswith("127.0.0.1:") for r in registered.values())
        assert [p.returncode for p in nodes.procs] == [0, 0, 0]  # drained, not killed
        assert registered_nodes(client.meta_store()) == []  # deregistered at once


def test_a_node_that_cannot_start_is_named_and_the_others_stopped(
    make_config: Callable[..., Config],
) -> None:
    # a node that verifies the deployment finds its storage claimed by another etcd prefix
    taken = make_config("local", etcd_prefix="/wp-test/elsewhere-" + str(time.time_ns()))
    with Client(make_config("local")) as owner:
        owner.create_log("claims-the-storage")
    with Client(taken) as client:
        nodes = LocalNodes(client)
        exited = r"a quorum node exited during start-up: .*deployment mismatch"
        with pytest.raises(WoodpeckerError, match=exited):
            nodes.__enter__()
        assert all(p.poll() is not None for p in nodes.procs)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_stops_the_nodes_it_started(
    make_config: Callable[..., Config],
    config_env: Callable[[Config], dict[str, str]],
    sig: int,
    status: int,
) -> None:
    argv = [sys.executable, "-m", "woodpecker", "quickstart", "--mode", "quorum", "--quiet"]
    proc = subprocess.Popen(
        [*argv, "--small", "2000000", "--large", "0"],
        env=config_env(make_config("local")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while len(nodes := node_children(proc.pid)) < 3:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "quickstart started no nodes"
        time.sleep(0.05)
    time.sleep(1.0)  # the nodes register, the memory-mode job writes
    proc.send_signal(sig)
    assert proc.wait(timeout=90) == status
    assert not [n for n in nodes if n.is_running() and n.status() != psutil.STATUS_ZOMBIE]


def processes_of(root: Path) -> list[str]:
    """Running processes of the deployment under ``root``: launched with it in their
    environment (the nodes, the logstore) or naming it (the embedded etcd)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(root) in cmdline or proc.environ().get("WOODPECKER_STORAGE_ROOT") == str(root):
                found.append(f"{proc.pid} {cmdline}")
    return found


def test_quickstart_in_quorum_mode_sets_both_modes_side_by_side_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    root = tmp_path / "wp"  # the embedded default: its own etcd and local storage
    env = {k: v for k, v in os.environ.items() if not k.startswith("WOODPECKER_")}
    env.update(
        WOODPECKER_STORAGE_ROOT=str(root),
        WOODPECKER_LOGSTORE_IDLE_EXIT="1",
        WOODPECKER_QUORUM_FLUSH_INTERVAL="0.5",
        PYTHONPATH=str(ROOT),
    )
    if os.environ.get("WOODPECKER_ETCD_BINARY"):
        env["WOODPECKER_ETCD_BINARY"] = os.environ["WOODPECKER_ETCD_BINARY"]
    argv = [sys.executable, "-m", "woodpecker", "quickstart", "--mode", "quorum", "--quiet"]
    done = subprocess.run(
        [*argv, "--small", "2000", "--large", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "all 4006 entries read back and verified" in done.stdout
    for label in ("1 KiB memory", "1 KiB quorum", "1 MiB memory", "1 MiB quorum"):
        assert sum(line.startswith(f"  {label}") for line in lines) == 2  # write and read rows
    table = lines.index(next(line for line in lines if line.startswith("memory vs quorum")))
    small, large = lines[table + 2].split(), lines[table + 3].split()
    assert small[:3] == ["1", "KiB", "entries"] and large[:3] == ["1", "MiB", "entries"]
    memory_puts, quorum_puts = (float(small[i].replace(",", "")) for i in (5, 8))
    assert quorum_puts > 0 and memory_puts > 0
    deadline = time.monotonic() + 30  # the logstore lingers 1 s, then the etcd is released
    while left := processes_of(root):
        assert time.monotonic() < deadline, f"still running: {left}"
        time.sleep(0.2)
