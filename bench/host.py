"""The logstore under test (and a QuorumBuffer space's nodes), started by the benchmark so
it can watch and stop them.

The logstore is the very code a ``Client`` launches in embedded mode (``python -m
workers.logstore --embedded``, config as JSON on stdin), started ahead of the
producers so that its start-up is never part of a measurement, and stopped with
SIGTERM (drain) at the end. Its uploader processes are its children. Quorum nodes are
``woodpecker node`` processes of the space's deployment (``woodpecker.local_nodes``),
started before its logstore and drained (SIGTERM: they flush what they hold to object
storage and deregister) after it has stopped, so that what they acked is counted.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import orjson
import psutil
from services import REPO

from woodpecker.client import Client
from woodpecker.config import Config
from woodpecker.local_nodes import LocalNodes

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def child_env() -> dict[str, str]:
    """The environment of every process the bench starts: the repository importable."""
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{path}" if path else str(REPO))


class Logstore:
    """A running logstore: its process, its uploaders, its log file."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.socket_path = config.logstore_socket
        self.log_path = self.socket_path.parent / "logstore.log"
        self._watched: dict[str, list[psutil.Process]] = {"logstore": [], "uploaders": []}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.logstore", "--embedded"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=child_env(),
            )
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(config.overrides()))
        self.proc.stdin.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"logstore exited at start-up: {self.tail()}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.socket_path))
                    probe.shutdown(socket.SHUT_RDWR)  # the logstore drops a silent producer
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"logstore not ready after {START_TIMEOUT:.0f}s: {self.tail()}")
            time.sleep(0.02)
        want = self.config.uploader.processes
        while len(self.uploaders()) < want and time.monotonic() < deadline:
            time.sleep(0.02)

    def uploaders(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.proc.pid).children()
        return []

    def processes(self) -> dict[str, list[psutil.Process]]:
        """The processes to watch, by role. Listing children scans all of /proc, which costs
        CPU the pipeline needs: the list is kept and refreshed only when an uploader ended."""
        stale = not self._watched["logstore"] or any(
            not p.is_running() for p in self._watched["uploaders"]
        )
        if stale:
            with contextlib.suppress(psutil.Error):
                self._watched = {
                    "logstore": [psutil.Process(self.proc.pid)],
                    "uploaders": self.uploaders(),
                }
        return self._watched

    def tail(self, chars: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        """SIGTERM (drain and seal), then SIGKILL past the timeout; uploaders included."""
        children = self.uploaders()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _, alive = psutil.wait_procs(children, timeout=5)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()

    def __enter__(self) -> Logstore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def quorum_nodes(config: Config) -> Iterator[LocalNodes | None]:
    """In a QuorumBuffer space (``buffer.mode: quorum``), three registered nodes of its
    deployment (its ``quorum.durability``; in disk durability their files are under its
    storage root), drained on exit; in a MemoryBuffer space, None."""
    if config.buffer.mode != "quorum":
        yield None
        return
    with Client(config) as client, LocalNodes(client, name="bench", env=child_env()) as nodes:
        yield nodes


def node_processes(nodes: LocalNodes | None) -> list[psutil.Process]:
    """The nodes' processes, for the usage monitor (none for a MemoryBuffer space)."""
    found = []
    for proc in nodes.procs if nodes else []:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(proc.pid))
    return found
