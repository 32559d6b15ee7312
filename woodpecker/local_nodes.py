"""Quorum nodes run as child processes of this one, for as long as a ``with`` block lasts.

``woodpecker quickstart --mode quorum`` and the benchmark's ``quorum`` suite need a pool of
nodes of their own deployment on this host and must leave nothing running: each node is
``woodpecker node`` on a free loopback port, given the configuration as ``WOODPECKER_*``
variables, awaited until it is registered, and on exit (Ctrl-C included) sent SIGTERM,
which makes it flush what it holds to object storage and deregister; one still running
after the drain timeout is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from woodpecker.client import Client
from woodpecker.errors import WoodpeckerError
from woodpecker.meta.nodes import NodeRecord, registered_nodes

START_TIMEOUT = 30.0
DRAIN_TIMEOUT = 60.0
"""Seconds a node may take to flush and deregister once told to stop; then it is killed."""


class LocalNodes:
    """``count`` quorum nodes of ``client``'s deployment (its config, memory or disk durability
    as ``quorum.durability`` says), started by ``__enter__`` and drained by ``__exit__``.

    ``name`` starts the node ids; ``env`` is the environment the nodes inherit (this
    process's by default), before the configuration's ``WOODPECKER_*`` variables."""

    def __init__(
        self,
        client: Client,
        count: int = 3,
        *,
        name: str = "quickstart",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.count = count
        self.name = name
        self.env = os.environ if env is None else env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.records: list[NodeRecord] = []
        self._logs = tempfile.TemporaryDirectory(prefix="woodpecker-nodes-")
        self._run = uuid.uuid4().hex[:6]  # a killed run's ids stay registered for a lease TTL

    def __enter__(self) -> LocalNodes:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        env = {k: v for k, v in self.env.items() if not k.startswith("WOODPECKER_")}
        env.update(self.client.config.environment())
        for n in range(1, self.count + 1):
            node_id = f"{self.name}-{n}-{self._run}"
            with open(self._log(node_id), "wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "woodpecker", "node", "--node-id", node_id,
                         "--listen", f"127.0.0.1:{free_port()}"],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )  # fmt: skip
        self.records = [self._registered(proc) for proc in self.procs]

    def _log(self, node_id: str) -> Path:
        return Path(self._logs.name) / f"{node_id}.log"

    def _registered(self, proc: subprocess.Popen[bytes]) -> NodeRecord:
        """The registration of the node ``proc`` runs, once it serves."""
        meta = self.client.meta_store()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for record in registered_nodes(meta):
                if record.pid == proc.pid:
                    return record
            if proc.poll() is not None:
                raise WoodpeckerError(f"a quorum node exited during start-up: {self._said(proc)}")
            time.sleep(0.05)
        raise WoodpeckerError(f"a quorum node did not register in {START_TIMEOUT:.0f} s")

    def _said(self, proc: subprocess.Popen[bytes]) -> str:
        """The last line a node wrote to its log (its reason to exit)."""
        node_id = proc.args[proc.args.index("--node-id") + 1]  # type: ignore[union-attr]
        lines = self._log(node_id).read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {proc.returncode}"

    def stop(self) -> None:
        """SIGTERM every node (each drains: flush, deregister, exit); SIGKILL what is left
        after ``DRAIN_TIMEOUT``, or at once on a second Ctrl-C."""
        try:
            for proc in self.procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + DRAIN_TIMEOUT
            for proc in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(deadline - time.monotonic(), 0))
        finally:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            self._logs.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
