"""Quorum node processes for tests: ``woodpecker node`` started for real, and a raw,
blocking connection that speaks the wire (``woodpecker.quorum.wire``) request by request."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import pytest
import xxhash

from woodpecker.config import Config
from woodpecker.deployment import Deployment
from woodpecker.format import decode_messages, encode_batch_message, iter_payloads
from woodpecker.meta import MetaStore
from woodpecker.meta.nodes import NodeRecord, registered_nodes
from woodpecker.quorum import wire
from woodpecker.quorum.client import EnsembleMember
from woodpecker.quorum.wire import Batch, Reply, Status

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeProcess:
    def __init__(
        self, proc: subprocess.Popen[bytes], config: Config, env: dict[str, str], port: int
    ) -> None:
        self.proc, self.config, self.env, self.port = proc, config, env, port
        self.meta = MetaStore(config)

    def registered(self) -> list[NodeRecord]:
        return registered_nodes(self.meta)

    def wait_registered(self) -> NodeRecord:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"node exited with {self.proc.returncode}: {self.stderr()}")
            found = [n for n in self.registered() if n.address == f"127.0.0.1:{self.port}"]
            if found:
                return found[0]
            time.sleep(0.05)
        pytest.fail("node did not register")

    def stderr(self) -> str:
        return self.proc.stderr.read().decode() if self.proc.stderr else ""


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


def start_ensemble(
    start_node: Callable[..., NodeProcess], n: int = 3
) -> tuple[list[NodeProcess], list[EnsembleMember]]:
    """``n`` nodes started at once, then their ensemble as the registry lists it."""
    nodes = [start_node(f"q{i}") for i in range(n)]
    members = []
    for node in nodes:
        record = node.wait_registered()
        members.append(EnsembleMember(record.node_id, record.address, record.incarnation))
    return nodes, members


def held(node: NodeProcess, seg: int) -> int:
    """The last entry a node holds of a segment of log 1 (a LAC request that only asks)."""
    return Connection(node.port, node.config).call(wire.LAC, seg, 1, wire.LAC_BODY.pack(-1)).last
