"""Deployment identity: a client never writes into another deployment, GC never deletes
another deployment's objects (docs/deployment.md).

Every scenario runs on the real etcd and S3 server; the storage roots are short
paths under /tmp because the default logstore socket lives in the root and
AF_UNIX paths are limited to 108 bytes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from chaos.processes import logstore_pid

import woodpecker as wp
from shm import FrameReader, send_msg
from woodpecker import cli, wire
from woodpecker.config import Config
from woodpecker.deployment import MARKER_KEY, Deployment, _Verifier, verify_deployment
from woodpecker.doctor import run_doctor
from woodpecker.errors import ConfigError, LogstoreUnavailableError
from woodpecker.meta import MetaStore
from woodpecker.storage import open_store


@pytest.fixture
def short_root(unique: str) -> Iterator[Path]:
    root = Path(f"/tmp/wp-test-{unique}/r")
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)


def embedded_env(root: Path) -> dict[str, str]:
    """The environment of an application with no configuration but its storage root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WOODPECKER_")}
    return env | {"WOODPECKER_STORAGE_ROOT": str(root), "WOODPECKER_LOGSTORE_IDLE_EXIT": "1"}


def write(client: wp.Client, name: str, payloads: list[bytes]) -> None:
    with client.open_log(name, create=True).open_writer() as writer:
        for future in [writer.write_async(p) for p in payloads]:
            future.result(30)


def payloads_of(client: wp.Client, name: str) -> list[bytes]:
    return client.open_log(name).read_table().column("payload").to_pylist()


def wait_gone(config: wp.Config, timeout: float = 30.0) -> None:
    """Until no logstore serves ``config``'s socket (an embedded one idles out)."""
    deadline = time.monotonic() + timeout
    while logstore_pid(config) is not None:
        assert time.monotonic() < deadline, f"the logstore of {config.logstore_socket} stayed"
        time.sleep(0.1)


def test_quickstart_after_an_s3_application_on_the_same_host(
    make_config: Callable[..., Config], short_root: Path
) -> None:
    """An S3 application's logstore keeps running while the embedded default's quickstart
    runs on the same storage root: each gets its own logstore, data stays in place."""
    s3_app = make_config("s3", storage_root=str(short_root), logstore_socket="")
    with wp.Client(s3_app) as client:
        write(client, "app-s3", [b"hello-s3"])
        s3_logstore = logstore_pid(s3_app)
        assert s3_logstore is not None
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "woodpecker.cli",
                "quickstart",
                "--small",
                "200",
                "--large",
                "2",
            ],
            env=embedded_env(short_root),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert "all 202 entries read back and verified" in run.stdout
        assert logstore_pid(s3_app) == s3_logstore, "the S3 application's logstore was disturbed"
        assert payloads_of(client, "app-s3") == [b"hello-s3"]
        assert client.list_logs() == ["app-s3"], "the quickstart's logs went to the S3 etcd"
    embedded = wp.Config(env=embedded_env(short_root))
    assert embedded.logstore_socket != s3_app.logstore_socket
    wait_gone(embedded)


def test_reading_never_launches_a_logstore(
    short_root: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture
) -> None:
    """Readers and the CLI's read commands reach the embedded etcd directly: no logstore,
    no write arena."""
    config = wp.Config(env=embedded_env(short_root))
    with wp.Client(config) as client:
        write(client, "orders", [b"a", b"b"])
    wait_gone(config)

    def no_writing(*_: object, **__: object) -> None:
        raise AssertionError("a reading client attached to a logstore")

    monkeypatch.setattr("woodpecker.client.ProducerLink", no_writing)
    with wp.Client(config) as client:
        assert payloads_of(client, "orders") == [b"a", b"b"]
        with client.open_log("orders").open_reader() as reader:
            assert reader.read_next(timeout=5).payload == b"a"
    monkeypatch.setenv("WOODPECKER_STORAGE_ROOT", str(short_root))
    for name in [n for n in os.environ if n.startswith("WOODPECKER_") and "ROOT" not in n]:
        monkeypatch.delenv(name)
    for argv in (["cat", "orders"], ["logs", "list"], ["segments", "orders"]):
        assert cli.main(argv) == 0, argv
    assert b"a\nb\n" in capsysbinary.readouterr().out
    assert not config.logstore_socket.exists()
    assert logstore_pid(config) is None


def test_applications_differing_only_in_s3_prefix(
    make_config: Callable[..., Config], short_root: Path, unique: str
) -> None:
    """One etcd prefix is one namespace of logs: a second storage prefix under it is
    refused; with its own etcd prefix it gets its own logstore and keeps its own data."""
    first = make_config("s3", storage_root=str(short_root), logstore_socket="")
    with wp.Client(first) as client_a:
        write(client_a, "shared-name", [b"from-a"])
        only_prefix = make_config(
            "s3", storage_root=str(short_root), logstore_socket="", s3_prefix=f"wp-test/{unique}-b"
        )
        assert only_prefix.logstore_socket != first.logstore_socket
        with wp.Client(only_prefix) as client_b, pytest.raises(ConfigError) as refused:
            write(client_b, "shared-name", [b"from-b"])
        message = str(refused.value)
        assert f"/wp-test/{unique}" in message  # the etcd side
        assert f"s3://{first.s3.bucket}/wp-test/{unique} " in message  # who owns it
        assert f"wp-test/{unique}-b" in message  # and this client's storage

        second = make_config(
            "s3",
            storage_root=str(short_root),
            logstore_socket="",
            s3_prefix=f"wp-test/{unique}-b",
            etcd_prefix=f"/wp-test/{unique}-b",
        )
        with wp.Client(second) as client_b:
            write(client_b, "shared-name", [b"from-b"])
            assert payloads_of(client_b, "shared-name") == [b"from-b"]
        assert payloads_of(client_a, "shared-name") == [b"from-a"]


def test_second_deployment_on_one_store_is_refused(
    make_config: Callable[..., Config], backend: str, unique: str
) -> None:
    """Two deployments on one storage location with different etcd prefixes: the second
    is refused before it writes, and the first one's acked entries stay readable."""
    a = make_config(backend)
    entries = [b"a-%d" % i for i in range(50)]
    with wp.Client(a) as client_a:
        write(client_a, "orders", entries)
    b = make_config(backend, etcd_prefix=f"/wp-b/{unique}", logstore_socket="")
    with wp.Client(b) as client_b:
        with pytest.raises(ConfigError) as refused:
            write(client_b, "orders", [b"b"])
        message = str(refused.value)
        assert a.etcd.prefix in message and b.etcd.prefix in message
        assert "etcd.prefix" in message  # how to fix it
        with pytest.raises(ConfigError):
            client_b.create_log("other")
    assert logstore_pid(b) is None, "a refused client launched a logstore"
    with wp.Client(a) as client_a:
        assert payloads_of(client_a, "orders") == entries


def test_gc_of_another_deployment_is_refused(
    make_config: Callable[..., Config],
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """``woodpecker gc`` of deployment B with no orphan grace, on A's store: refused with
    ConfigError, and every object of A is still there and readable."""
    a = make_config("s3")
    entries = [b"x" * 1000] * 20
    with wp.Client(a) as client_a:
        write(client_a, "orders", entries)
    with open_store(a) as store:
        before = sorted(o.key for o in store.list(""))
    b = make_config("s3", etcd_prefix=f"/wp-b/{unique}", retention_orphan_grace=0)
    for key, value in b.overrides().items():
        text = ",".join(value) if isinstance(value, list) else str(value)
        monkeypatch.setenv(f"WOODPECKER_{key.upper()}", text)
    assert cli.main(["gc"]) == 1
    assert "deployment mismatch" in capsys.readouterr().err
    with open_store(a) as store:
        assert sorted(o.key for o in store.list("")) == before
    with wp.Client(a) as client_a:
        assert payloads_of(client_a, "orders") == entries


def test_standalone_logstore_of_another_deployment_refuses_to_start(
    make_config: Callable[..., Config], unique: str
) -> None:
    """``woodpecker logstore`` whose etcd prefix points at another deployment's store
    exits at once with the mismatch, before it serves anything or runs maintenance."""
    a = make_config("local")
    with wp.Client(a) as client:
        write(client, "orders", [b"a"])
    b = make_config(
        "local",
        etcd_prefix=f"/wp-b/{unique}",
        retention_orphan_grace=0,
        logstore_socket=f"/tmp/wp-test-{unique}/b.sock",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WOODPECKER_")}
    for key, value in b.overrides().items():
        env[f"WOODPECKER_{key.upper()}"] = (
            ",".join(value) if isinstance(value, list) else str(value)
        )
    run = subprocess.run(
        [sys.executable, "-m", "woodpecker.cli", "logstore"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1
    assert "deployment mismatch" in run.stderr and f"/wp-b/{unique}" in run.stderr
    assert not b.logstore_socket.exists()
    with wp.Client(a) as client:
        assert payloads_of(client, "orders") == [b"a"]


def test_claims_agree_on_both_sides(make_config: Callable[..., Config], backend: str) -> None:
    """First use claims one id in etcd and in storage; later uses find and keep it."""
    config = make_config(backend)
    with MetaStore(config) as meta, open_store(config) as store:
        first = verify_deployment(config, meta, store)
        assert verify_deployment(config, meta, store) == first
        etcd_claim = orjson.loads(meta.etcd.get("t", meta.keys.deployment)[0])
        marker = orjson.loads(store.get(MARKER_KEY))
        here = Deployment.of(config)
        assert etcd_claim["id"] == marker["id"] == first
        assert etcd_claim["storage"] == marker["storage"] == here.storage
        assert etcd_claim["etcd"] == marker["etcd"] == here.etcd


def written_without_claims(config: wp.Config, payload: bytes) -> None:
    """A log ``orders`` holding ``payload``, as a version without claims leaves it."""
    with wp.Client(config) as client:
        write(client, "orders", [payload])
    with MetaStore(config) as meta, open_store(config) as store:
        meta.etcd.call("t", lambda c: c.delete(meta.keys.deployment))
        store.delete_many([MARKER_KEY])


def test_an_unclaimed_deployment_is_claimed_on_upgrade(
    make_config: Callable[..., Config], backend: str
) -> None:
    """Data written by a version without claims: the first use claims it, reads go on."""
    config = make_config(backend)
    written_without_claims(config, b"old")
    with wp.Client(config) as client:
        write(client, "orders", [b"new"])
        assert payloads_of(client, "orders") == [b"old", b"new"]
    with MetaStore(config) as meta, open_store(config) as store:
        assert meta.etcd.get("t", meta.keys.deployment) is not None
        store.stat(MARKER_KEY)


def test_foreign_unclaimed_data_is_refused(
    make_config: Callable[..., Config], backend: str, unique: str
) -> None:
    """A store holding objects, no claims, and an etcd prefix that never created a log:
    the data belongs to a deployment whose metadata lives elsewhere."""
    a = make_config(backend)
    written_without_claims(a, b"a")
    b = make_config(backend, etcd_prefix=f"/wp-b/{unique}")
    with MetaStore(b) as meta, open_store(b) as store:
        with pytest.raises(ConfigError, match="already holds objects"):
            verify_deployment(b, meta, store)
        assert meta.etcd.get("t", meta.keys.deployment) is None, "a refused run claimed etcd"
        with pytest.raises(wp.ObjectNotFoundError):
            store.stat(MARKER_KEY)


def test_processes_claiming_one_new_deployment_at_once_agree(
    make_config: Callable[..., Config], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes start on a new deployment together (the nodes of a fresh pool): one
    reads both claims absent, then finds the other's marker in the store; a claim, not
    foreign data, so both end with the one deployment id."""
    config = make_config(backend)
    with MetaStore(config) as meta, open_store(config) as store:
        first = verify_deployment(config, meta, store)  # the other process, a moment ahead
        reads: list[str] = []

        def stale(name: str) -> Callable[[object], object]:
            real = getattr(_Verifier, name)

            def read(self: object) -> object:
                reads.append(name)
                return None if reads.count(name) == 1 else real(self)

            return read

        monkeypatch.setattr(_Verifier, "_etcd_claim", stale("_etcd_claim"))
        monkeypatch.setattr(_Verifier, "_storage_claim", stale("_storage_claim"))
        assert verify_deployment(config, meta, store) == first
        assert reads.count("_storage_claim") == 2  # it did read both claims absent first


def test_explicit_socket_of_another_deployment_is_refused(
    make_config: Callable[..., Config], unique: str
) -> None:
    """``logstore.socket`` pointing at the logstore of another deployment: ConfigError
    naming both, and nothing reaches the other deployment."""
    a = make_config("s3")
    with wp.Client(a) as client_a:
        write(client_a, "orders", [b"a"])
        b = make_config(
            "s3",
            etcd_prefix=f"/wp-test/{unique}-b",
            s3_prefix=f"wp-test/{unique}-b",
            logstore_socket=str(a.logstore_socket),
        )
        with wp.Client(b) as client_b:
            log = client_b.open_log("orders", create=True)
            with pytest.raises(ConfigError) as refused:
                log.open_writer()
        message = str(refused.value)
        assert str(Deployment.of(a)) in message and str(Deployment.of(b)) in message
        assert "logstore.socket" in message
        assert payloads_of(client_a, "orders") == [b"a"]


def test_logstore_of_another_protocol_version_is_refused(
    make_config: Callable[..., Config],
) -> None:
    """A logstore of the previous (unversioned) protocol answers HELLO with a bare
    WELCOME: the client refuses it with a clear error instead of writing through it."""
    config = make_config("local")
    path = config.logstore_socket
    path.parent.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    hellos: list[dict] = []

    def old_logstore() -> None:
        conn, _ = listener.accept()
        with conn:
            for frame, fds in FrameReader().feed_from(conn):
                for fd in fds:
                    os.close(fd)
                hellos.append(wire.decode(frame)[1])
            send_msg(conn, wire.encode(wire.WELCOME, {"producer_id": 1, "etcd_endpoints": []}))
            conn.recv(1)  # until the client hangs up

    server = threading.Thread(target=old_logstore, daemon=True)
    server.start()
    try:
        with wp.Client(config) as client:
            log = client.open_log("orders", create=True)
            with pytest.raises(
                LogstoreUnavailableError,
                match=f"speaks protocol 1, this client speaks {wire.VERSION}",
            ):
                log.open_writer()
        server.join(10)
        assert hellos and hellos[0]["protocol"] == wire.VERSION
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def test_logstore_refuses_a_client_of_another_protocol_version(
    make_config: Callable[..., Config],
) -> None:
    """A producer of the previous protocol (a HELLO without version or deployment) is
    refused with a REFUSED frame, never served."""
    from shm import Arena

    config = make_config("local")
    with wp.Client(config) as client:
        write(client, "orders", [b"a"])
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(config.logstore_socket))
        sock.settimeout(10)
        arena = Arena.create(1 << 20)
        reader = FrameReader()
        try:
            old_hello = wire.encode(wire.HELLO, {"pid": 1, "arena_size": 1 << 20})
            send_msg(sock, old_hello, [arena.fd])
            frames: list = []
            while not frames:
                frames = reader.feed_from(sock)
            kind, body = wire.decode(frames[0][0])
        finally:
            sock.close()
            arena.close()
        assert kind == wire.REFUSED
        assert body["error"] == "LogstoreUnavailableError"
        assert f"speaks protocol {wire.VERSION}, this client speaks 1" in body["message"]
        assert payloads_of(client, "orders") == [b"a"]


def test_doctor_says_whether_the_claims_agree(
    make_config: Callable[..., Config], unique: str
) -> None:
    """``woodpecker doctor`` reports the deployment id, claims nothing, and fails naming
    both sides when etcd and storage belong to different deployments."""
    a = make_config("s3")
    assert run_doctor(a).facts["deployment"].startswith("not claimed yet")
    with MetaStore(a) as meta:
        assert meta.etcd.get("t", meta.keys.deployment) is None, "doctor claimed etcd"
    with wp.Client(a) as client:
        write(client, "orders", [b"a"])
        claimed = client.deployment_id()
    assert run_doctor(a).facts["deployment"] == f"{claimed} (etcd and storage claims agree)"
    other = run_doctor(make_config("s3", etcd_prefix=f"/wp-b/{unique}"))
    assert not other.ok
    assert other.error.startswith("deployment: deployment mismatch")
    assert a.etcd.prefix in other.error and f"/wp-b/{unique}" in other.error
