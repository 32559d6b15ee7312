"""A private etcd for the embedded default: started on demand, shared per storage root.

With no ``etcd.endpoints`` configured, every process using the same storage root
shares one etcd (the executable ``etcd_release.embedded_binary`` chooses) whose data lives under
``<root>/etcd``. Sharing works through files guarded by an ``flock``:

- ``state.json``: pid and client endpoint of the running etcd;
- ``users/<pid>-<token>``: one file per user; a user whose pid is dead is stale.

The last user to release stops etcd. A stale ``state.json`` (etcd killed, or its
pid reused by another program) is detected and a fresh etcd replaces it. Data
survives restarts: the same data directory is reused.

etcd listens only on Unix sockets inside ``<root>/etcd`` (``0700``), for its
clients and for its peer port alike (etcd 3.5 serves its client API on the peer
listener too), so only the owner of the storage root can reach it: no TCP port,
no password to keep. etcd names a Unix socket by a ``host:port`` relative to its
working directory, hence the socket names ``client.sock:0`` and ``peer.sock:0``.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil

from woodpecker.config import MAX_SOCKET_PATH, UNIX_SCHEME
from woodpecker.errors import MetadataUnavailableError
from woodpecker.meta.etcd_release import embedded_binary
from woodpecker.private_files import FILE_MODE, make_private_dirs, private_opener

START_TIMEOUT = 30.0
CLIENT_SOCKET = "client.sock:0"
PEER_SOCKET = "peer.sock:0"

AUTO_COMPACTION = ("--auto-compaction-mode", "periodic", "--auto-compaction-retention", "10m")
"""etcd keeps 10 minutes of revision history; maintenance compacts too (``etcd.history_retention``),
this covers an etcd whose logstores are all gone. Sizing: ``docs/metadata.md``."""


def _last_fatal_line(log: Path) -> str:
    """``: <reason>`` from etcd's last critical log line (e.g. a data directory written by a
    newer release, which etcd refuses), or nothing."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-50:]
    except OSError:
        return ""
    fatal = [line for line in lines if " C | " in line or '"level":"fatal"' in line]
    return f": {fatal[-1].split(' C | ', 1)[-1].strip()}" if fatal else ""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP to a Unix socket (etcd serves ``/health`` and ``/metrics`` on its client socket)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _healthy(endpoint: str) -> bool:
    """Does the etcd at ``unix:///path`` answer its health check?"""
    conn = UnixHTTPConnection(endpoint.removeprefix(UNIX_SCHEME), timeout=1)
    try:
        conn.request("GET", "/health")
        return b'"health":"true"' in conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


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

    def __init__(self, root: str | os.PathLike[str], binary: str = "") -> None:
        self.dir = Path(os.path.abspath(root)) / "etcd"
        self.binary = binary  # etcd.binary; empty: see embedded_binary
        self.data_dir = self.dir / "data"
        self._user_file: Path | None = None
        # known before etcd runs: a client may reach an etcd that another process started
        self.endpoint = f"{UNIX_SCHEME}{self.dir / CLIENT_SOCKET}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        make_private_dirs(self.dir)
        with open(self.dir / "lock", "a+", opener=private_opener) as lock:
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
        if not isinstance(state, dict) or not isinstance(state.get("pid"), int):
            return None
        return state

    def _live_users(self) -> list[Path]:
        users = self.dir / "users"
        make_private_dirs(users)
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
            ours = state is not None and _is_our_etcd(state["pid"], self.data_dir)
            if not (ours and _healthy(self.endpoint)):
                if ours:
                    # hung, or an etcd of an older version listening on TCP
                    _terminate(state["pid"])  # type: ignore[index]
                self._start()
            self._user_file = self.dir / "users" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._live_users()
            self._user_file.touch(mode=FILE_MODE)
        return [self.endpoint]

    def _start(self) -> None:
        socket_path = self.dir / CLIENT_SOCKET
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            raise MetadataUnavailableError(
                f"embedded etcd: the socket path {socket_path} is longer than "
                f"{MAX_SOCKET_PATH} bytes; choose a shorter storage.root"
            )
        for name in (CLIENT_SOCKET, PEER_SOCKET):  # left by a killed etcd
            (self.dir / name).unlink(missing_ok=True)
        make_private_dirs(self.data_dir)
        client_url, peer_url = f"unix://{CLIENT_SOCKET}", f"unix://{PEER_SOCKET}"
        log = open(self.dir / "etcd.log", "ab", opener=private_opener)  # noqa: SIM115 - handed to the child
        with log:
            proc = subprocess.Popen(
                [
                    embedded_binary(self.dir, self.binary),
                    "--name",
                    "embedded",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen-client-urls",
                    client_url,
                    "--advertise-client-urls",
                    client_url,
                    "--listen-peer-urls",
                    peer_url,
                    "--initial-advertise-peer-urls",
                    peer_url,
                    "--initial-cluster",
                    f"embedded={peer_url}",
                    "--force-new-cluster",
                    *AUTO_COMPACTION,
                    "--log-level",
                    "error",
                ],
                cwd=self.dir,  # where etcd creates its sockets
                umask=0o077,  # and whatever else etcd creates: owner-only
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the process that started it
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(self.endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise MetadataUnavailableError(
                    f"embedded etcd did not start{_last_fatal_line(self.dir / 'etcd.log')} "
                    f"(see {self.dir / 'etcd.log'})"
                )
            time.sleep(0.05)
        state = orjson.dumps({"pid": proc.pid, "endpoint": self.endpoint})
        with open(self.dir / "state.json", "wb", opener=private_opener) as f:
            f.write(state)

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
