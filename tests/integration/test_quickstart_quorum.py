"""``woodpecker quickstart --mode quorum``: its own three quorum nodes, gone when it ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import pytest

from woodpecker.client import Client
from woodpecker.config import Config
from woodpecker.errors import WoodpeckerError
from woodpecker.local_nodes import LocalNodes
from woodpecker.meta.nodes import registered_nodes


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
