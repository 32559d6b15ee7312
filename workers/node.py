"""``woodpecker node``: a quorum node, serving append, fence, read and LAC over TCP.

One asyncio event loop serves every connection: a writer's handshake, then its requests,
answered in order by ``NodeState``; the replies go out together once the loop has handled
every request it had read, after one sync (in ``disk`` durability, one fdatasync per file
for all of them: a group commit). A frame that does not parse, or one over
``node.max_request_bytes``, drops that connection only. The node registers in etcd
(``woodpecker.meta.nodes``) once it listens, and on SIGTERM or SIGINT it stops accepting,
says it is draining, finishes the requests it is answering, flushes what it holds at or
below the LAC (``workers.node_flush``), deregisters and exits. The protocol: docs/quorum.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import sys
from pathlib import Path

from woodpecker.config import Config
from woodpecker.deployment import Deployment, verify_deployment
from woodpecker.meta import MetaStore
from woodpecker.meta.embedded import EmbeddedEtcd
from woodpecker.meta.nodes import NodeRecord, NodeRegistration
from woodpecker.meta.records import now_ms
from woodpecker.quorum import wire
from woodpecker.storage import ObjectStore, open_store
from workers.node_flush import Flusher
from workers.node_state import NodeState

log = logging.getLogger("woodpecker.node")

HELLO_MAX_BYTES = 64 * 1024
"""A handshake frame larger than this is not a HELLO."""

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a new connection has to send its HELLO."""

REPLY_BUFFER_BYTES = 8 * 1024 * 1024
"""Replies queued to one writer before the node waits for it to read them."""

MAX_READ_WAIT = 30.0
"""Longest long-poll of a READ, whatever it asks for."""

FAIR_SHARE = 64
"""Requests one connection has answered in a row before the others get their turn."""

SUMMARY_INTERVAL = 1.0
"""Seconds between refreshes of what the registration says the node holds."""


class Node:
    """The daemon: one state, one listening socket, one registration."""

    def __init__(
        self, config: Config, meta: MetaStore, store: ObjectStore, state: NodeState, node_id: str
    ) -> None:
        self.config = config
        self.meta = meta
        self.store = store
        self.state = state
        self.node_id = node_id
        self.deployment = Deployment.of(config)
        self.host, self.port = config.node_listen
        self.registration: NodeRegistration | None = None
        self.started_ms = now_ms()
        self.draining = False
        self._connections: set[asyncio.Task[None]] = set()
        self._unsent: list[tuple[asyncio.StreamWriter, list[bytes | memoryview]]] = []
        self._readers_waiting: dict[tuple[int, int], list[tuple[int, asyncio.Future[None]]]] = {}

    @property
    def address(self) -> str:
        """Where writers reach this node: ``node.advertise``, else the listen address (a
        wildcard listen is reached by host name)."""
        if self.config.node.advertise:
            return self.config.node.advertise
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.port}"

    def record(self) -> NodeRecord:
        return NodeRecord(
            node_id=self.node_id,
            address=self.address,
            incarnation=self.state.incarnation,
            durability=self.config.quorum.durability,
            state="draining" if self.draining else "serving",
            started_ms=self.started_ms,
            pid=os.getpid(),
            buffered_bytes=self.state.buffered_bytes,
            segments=[list(s) for s in self.state.segments()],
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        server = await asyncio.start_server(
            self._connection,
            self.host,
            self.port,
            limit=self.config.node.max_request_bytes,
            reuse_address=True,
        )
        self.registration = await asyncio.to_thread(NodeRegistration, self.meta, self.record())
        log.info(
            "node %s (incarnation %d, %s durability) serves %s",
            self.node_id,
            self.state.incarnation,
            self.config.quorum.durability,
            self.address,
        )
        registration = self.registration
        flusher = Flusher(
            self.config,
            self.node_id,
            self.state,
            self.meta,
            self.store,
            lambda: registration.lease_id,
        )
        background = [
            asyncio.create_task(self._summarize()),
            asyncio.create_task(flusher.run()),
        ]
        await stop.wait()
        log.info("node %s: draining", self.node_id)
        self.draining = True
        server.close()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        registration.update(self.record())
        with contextlib.suppress(Exception):
            await asyncio.to_thread(registration.write_now)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()
        try:  # what is at or below the LAC goes to object storage before the node leaves
            await asyncio.wait_for(flusher.flush(force=True), self.config.retry.deadline)
        except Exception as e:
            log.warning("node %s: drain could not flush everything: %s", self.node_id, e)
        await asyncio.to_thread(registration.close)
        log.info("node %s: deregistered, exiting", self.node_id)

    async def _summarize(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_INTERVAL)
            assert self.registration is not None
            self.registration.update(self.record())

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            if await self._handshake(reader, writer, peer):
                await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the writer went away (or never said HELLO): nothing to answer
        except (wire.MalformedFrame, struct.error, ValueError) as e:
            log.warning("node %s: dropping connection from %s: %s", self.node_id, peer, e)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object
    ) -> bool:
        """Answer a HELLO: WELCOME, or REFUSED naming what differs (then the caller closes)."""
        data = await asyncio.wait_for(wire.read_frame(reader, HELLO_MAX_BYTES), HANDSHAKE_TIMEOUT)
        kind, body = wire.decode_control(data)
        if kind != wire.HELLO:
            raise wire.MalformedFrame(f"expected HELLO, got a frame of type {kind}")
        refusal = None
        if body.get("protocol") != wire.VERSION:
            refusal = (
                "QuorumUnavailableError",
                f"node {self.node_id} at {self.address} speaks quorum protocol {wire.VERSION}, "
                f"the writer {body.get('protocol')}: run the same Woodpecker version on both",
            )
        elif body.get("deployment") != self.deployment.fingerprint:
            refusal = (
                "ConfigError",
                f"node {self.node_id} at {self.address} serves {self.deployment}, not "
                f"{body.get('describes')!s}: check etcd.prefix and the storage settings",
            )
        if refusal is not None:
            log.warning("node %s: refused %s: %s", self.node_id, peer, refusal[1])
            reply = wire.encode_control(wire.REFUSED, {"error": refusal[0], "message": refusal[1]})
            writer.writelines(wire.frame(reply))
            await writer.drain()
            return False
        welcome = {
            "protocol": wire.VERSION,
            "deployment": self.deployment.fingerprint,
            "node_id": self.node_id,
            "incarnation": self.state.incarnation,
        }
        writer.writelines(wire.frame(wire.encode_control(wire.WELCOME, welcome)))
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limit = self.config.node.max_request_bytes
        loop = asyncio.get_running_loop()
        handled = 0
        while True:
            handled += 1
            if handled % FAIR_SHARE == 0:
                await asyncio.sleep(0)  # frames already buffered never make the loop yield
            data = await wire.read_frame(reader, limit)
            request, body = wire.decode_request(data)
            key = (request.log_id, request.segment_id)
            if request.kind == wire.READ:
                start, _, wait_ms = wire.READ_BODY.unpack(body)
                if wait_ms and self.state.would_wait(key, start):
                    await self._wait_for_lac(key, start, min(wait_ms / 1000, MAX_READ_WAIT))
            if not self._unsent:
                loop.call_soon(self._send_replies)
            self._unsent.append((writer, wire.encode_reply(self.state.handle(request, body))))
            if request.kind in (wire.APPEND, wire.LAC):
                self._wake_readers(key)
            if writer.transport.get_write_buffer_size() > REPLY_BUFFER_BYTES:
                await writer.drain()

    async def _wait_for_lac(self, key: tuple[int, int], start: int, timeout: float) -> None:
        """A long-poll READ: return once the segment's LAC reaches ``start``, or at ``timeout``.

        The connection's later requests wait behind it (replies keep their order): a
        reader polls on a connection of its own.
        """
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._readers_waiting.setdefault(key, [])
        waiters.append((start, woken))
        try:
            await asyncio.wait_for(woken, timeout)
        except TimeoutError:
            pass
        finally:
            waiters.remove((start, woken))
            if not waiters:
                del self._readers_waiting[key]

    def _wake_readers(self, key: tuple[int, int]) -> None:
        """The LAC of ``key`` may have moved: wake every READ now answerable (a push)."""
        lac = self.state.acked_through(key)
        for start, woken in self._readers_waiting.get(key, ()):
            if start <= lac and not woken.done():
                woken.set_result(None)

    def _send_replies(self) -> None:
        """Group commit: one sync for every request handled since the last, then the replies.

        Runs once the loop has handled every request already read, from every connection,
        so one fdatasync (disk durability) covers them all; no reply leaves before it.
        """
        self.state.sync()
        unsent, self._unsent = self._unsent, []
        for writer, reply in unsent:
            if not writer.is_closing():
                writer.writelines(reply)


def _node_id(config: Config) -> str:
    if config.node.id:
        return config.node.id
    return f"{socket.gethostname()}-{config.node_listen[1]}"


def serve(config: Config) -> int:
    """Run a node until SIGTERM/SIGINT; the exit status of ``woodpecker node``."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    node_id = _node_id(config)
    embedded = None
    endpoints = list(config.etcd.endpoints)
    if not endpoints:
        embedded = EmbeddedEtcd(config.storage.root, config.etcd.binary)
        endpoints = embedded.acquire()
    meta = MetaStore(config, endpoints=endpoints)
    state: NodeState | None = None
    store = None
    try:
        store = open_store(config)
        verify_deployment(config, meta, store)  # before anything is written
        if config.quorum.durability == "disk":
            data_dir = Path(config.node.data_dir or Path(config.storage.root) / f"node-{node_id}")
            state = NodeState.on_disk(data_dir, config.node.max_buffer_bytes)
        else:
            state = NodeState.in_memory(config.node.max_buffer_bytes)
        asyncio.run(Node(config, meta, store, state, node_id).run())
        return 0
    finally:
        if state is not None:
            state.close()
        if store is not None:
            store.close()
        meta.close()
        if embedded is not None:
            embedded.release()
