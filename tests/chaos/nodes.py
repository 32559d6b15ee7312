"""Quorum node processes for tests: ``woodpecker node`` started for real, a pool of them
shared by the tests of one deployment, and a raw, blocking connection that speaks the wire
(``woodpecker.quorum.wire``) request by request."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
import pytest
import xxhash

from woodpecker.config import Config
from woodpecker.deployment import Deployment
from woodpecker.format import decode_messages, encode_batch_message, iter_payloads
from woodpecker.local_nodes import free_port
from woodpecker.meta import MetaStore
from woodpecker.meta.nodes import NodeRecord, registered_nodes
from woodpecker.meta.records import SegmentRecord, SegmentState, now_ms
from woodpecker.quorum import wire
from woodpecker.quorum.client import EnsembleMember
from woodpecker.quorum.wire import Batch, Reply, Status

START_TIMEOUT = 30.0


class NodeProcess:
    """A ``woodpecker node`` on ``config`` (its ``node.listen`` and ``node.id``), its stderr
    in ``log`` (a file, never a pipe: a node that nobody reads must not block logging)."""

    def __init__(self, config: Config, env: dict[str, str], log: Path) -> None:
        self.config, self.env, self.log = config, env, log
        self.port = config.node_listen[1]
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "woodpecker", "node"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.meta = MetaStore(config)

    def registered(self) -> list[NodeRecord]:
        return registered_nodes(self.meta)

    def wait_registered(self) -> NodeRecord:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"node exited with {self.proc.returncode}: {self.stderr()}")
            found = [n for n in self.registered() if n.pid == self.proc.pid]
            if found:
                return found[0]
            time.sleep(0.05)
        pytest.fail("node did not register")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Send ``sig`` (SIGTERM: drain) and reap the process; SIGKILL past ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Connection:
    """A writer's side of one connection, blocking, with a deadline on every call."""

    def __init__(self, port: int, config: Config) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self.send(wire.hello(Deployment.of(config)))
        kind, self.welcome = wire.decode_control(self.recv())
        assert kind == wire.WELCOME, self.welcome
        self.request_id = 0

    def send(self, *parts: bytes | memoryview) -> None:
        self.sock.sendall(b"".join(wire.frame(*parts)))

    def recv(self) -> bytes:
        (size,) = wire.LENGTH.unpack(self._exactly(wire.LENGTH.size))
        return self._exactly(size)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the node")
            data += chunk
        return data

    def call(self, kind: int, seg: int, epoch: int, body: bytes = b"") -> Reply:
        self.request_id += 1
        self.send(wire.request(kind, self.request_id, 1, seg, epoch) + body)
        reply = wire.decode_reply(self.recv())
        assert reply.request_id == self.request_id
        return reply

    def append(self, seg: int, epoch: int, first: int, payloads: list[bytes], lac: int) -> Reply:
        data = encode_batch_message(payloads)
        self.request_id += 1
        digest = xxhash.xxh3_64_intdigest(data)
        batch = Batch(first, len(payloads), data)
        self.sock.sendall(b"".join(wire.append(self.request_id, 1, seg, epoch, batch, lac, digest)))
        return wire.decode_reply(self.recv())

    def read(self, seg: int, epoch: int, start: int) -> list[bytes]:
        reply = self.call(wire.READ, seg, epoch, wire.READ_BODY.pack(start, 1 << 20, 0))
        assert reply.status == Status.OK
        return [p for b in reply.batches for p in iter_payloads(decode_messages(b.data))]

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def declare_segments(
    meta: MetaStore,
    members: list[EnsembleMember],
    segment_ids: Iterable[int],
    *,
    ack: int = 2,
    sealed_at: int | None = None,
) -> None:
    """Put records of quorum segments of log 1 on ``members``, as a writer's create would
    (ACTIVE; or SEALED at entry ``sealed_at``, as its seal would): a node forgets a segment
    whose record it does not find in etcd."""
    for segment_id in segment_ids:
        record = SegmentRecord(
            log_id=1,
            segment_id=segment_id,
            state=SegmentState.ACTIVE if sealed_at is None else SegmentState.SEALED,
            epoch=1,
            lac=-1 if sealed_at is None else sealed_at,
            size=0,
            block_count=0,
            created_ms=now_ms(),
            sealed_ms=None if sealed_at is None else now_ms(),
            ensemble=members,
            ack=ack,
        )
        key = meta.keys.segment(1, segment_id)
        meta.etcd.txn("declare_segment", [], [meta.etcd.ops.put(key, record.to_bytes())])


def start_ensemble(
    start_node: Callable[..., NodeProcess], n: int = 3, segments: int = 4
) -> tuple[list[NodeProcess], list[EnsembleMember]]:
    """``n`` nodes started at once, then their ensemble as the registry lists it, with
    ``segments`` segments of log 1 declared on it."""
    nodes = [start_node(f"q{i}") for i in range(n)]
    members = []
    for node in nodes:
        record = node.wait_registered()
        members.append(EnsembleMember(record.node_id, record.address, record.incarnation))
    declare_segments(nodes[0].meta, members, range(segments))
    return nodes, members


def held(node: NodeProcess, seg: int) -> int:
    """The last entry a node holds of a segment of log 1 (a LAC request that only asks)."""
    return Connection(node.port, node.config).call(wire.LAC, seg, 1, wire.lac_body(-1)).last


class NodePool:
    """``size`` quorum nodes serving one deployment, shared by the tests that use it.

    A node serves one deployment only (it refuses a HELLO of another fingerprint), so the
    tests of a pool write in its deployment: ``config()`` gives them its settings. A test
    may kill, stop, restart or add nodes; ``intact()`` then says no, and the caller starts
    a fresh pool (on a fresh deployment) for the next test instead of repairing this one.
    """

    def __init__(
        self,
        settings: dict[str, object],
        env_of: Callable[[Config], dict[str, str]],
        logs: Path,
        size: int = 3,
    ) -> None:
        self.settings, self.env_of, self.logs = settings, env_of, logs
        self.logstore_socket = ""  # each test's own logstore (its settings are the test's)
        self.nodes: list[NodeProcess] = []
        self.changed = False
        try:
            for _ in range(size):
                self.nodes.append(self._launch(f"p{len(self.nodes)}", free_port()))
            for node in self.nodes:
                node.wait_registered()
        except BaseException:
            self.close(drain=False)
            raise
        self.changed = False

    def config(self, **overrides: object) -> Config:
        """A configuration of the pool's deployment (quorum mode), ``overrides`` on top."""
        settings = {**self.settings, "logstore_socket": self.logstore_socket, **overrides}
        return Config(env={}, **settings)

    def _launch(self, node_id: str, port: int) -> NodeProcess:
        config = Config(env={}, **self.settings, node_listen=f"127.0.0.1:{port}", node_id=node_id)
        self.changed = True
        return NodeProcess(config, self.env_of(config), self.logs / f"node-{node_id}.log")

    def kill(self, index: int) -> NodeProcess:
        """``kill -9`` node ``index``; its registration stays until its lease expires."""
        self.changed = True
        self.nodes[index].stop(signal.SIGKILL)
        return self.nodes[index]

    def terminate(self, index: int) -> NodeProcess:
        """SIGTERM node ``index`` and wait for its drain (flush, deregister, exit)."""
        self.changed = True
        self.nodes[index].stop(signal.SIGTERM, timeout=30.0)
        return self.nodes[index]

    def restart(self, index: int) -> NodeProcess:
        """Node ``index`` stopped (killed if running) and started again on its port.

        A new id: the killed node's registration may still hold the old one. In memory
        durability the new process is a new incarnation that knows no segment.
        """
        old = self.kill(index)
        node_id = f"{old.config.node.id}r"
        self.nodes[index] = self._launch(node_id, old.port)
        self.nodes[index].wait_registered()
        return self.nodes[index]

    def spare(self) -> NodeProcess:
        """One more node of the deployment, registered."""
        node = self._launch(f"p{len(self.nodes)}", free_port())
        self.nodes.append(node)
        node.wait_registered()
        return node

    def intact(self) -> bool:
        """Only the pool's first nodes, running (not paused) and the only ones registered."""
        if self.changed or not all(map(_running, self.nodes)):
            return False
        registered = {n.address for n in self.nodes[0].registered()}
        return registered == {f"127.0.0.1:{n.port}" for n in self.nodes}

    def close(self, drain: bool = True) -> None:
        """Stop every node (SIGTERM and wait for the drains, or ``kill -9``)."""
        sig = signal.SIGTERM if drain else signal.SIGKILL
        for node in self.nodes:
            if node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGCONT)  # a paused node must hear the signal
                    node.proc.send_signal(sig)
        for node in self.nodes:
            node.stop(signal.SIGKILL, timeout=30.0)
            node.meta.close()


class NodePools:
    """One ``NodePool`` per storage backend, started when a test first asks for it and
    replaced by a fresh one (a new deployment) after a test that changed it."""

    def __init__(
        self,
        settings_of: Callable[[str, Path, str], dict[str, object]],
        config_env: Callable[[Config], dict[str, str]],
        tmp: pytest.TempPathFactory,
    ) -> None:
        """``settings_of(backend, storage root, name)``: the settings of a test deployment."""
        self.settings_of, self.config_env, self.tmp = settings_of, config_env, tmp
        self.pools: dict[str, NodePool] = {}

    def get(self, backend: str) -> NodePool:
        if backend not in self.pools:
            name = f"pool-{backend}-{uuid.uuid4().hex[:8]}"
            home = self.tmp.mktemp(name)
            settings = self.settings_of(backend, home / "root", name)
            settings["buffer_mode"] = "quorum"
            self.pools[backend] = NodePool(settings, self.config_env, home)
        return self.pools[backend]

    def release(self, backend: str) -> None:
        """After a test: a pool it changed is stopped, and the next test gets a new one."""
        pool = self.pools[backend]
        if not pool.intact():
            del self.pools[backend]
            pool.close(drain=False)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


def _running(node: NodeProcess) -> bool:
    if node.proc.poll() is not None:
        return False
    try:
        status = psutil.Process(node.proc.pid).status()
    except psutil.Error:
        return False
    return status not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
