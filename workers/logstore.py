"""The logstore: coordinator + uploader pool behind a Unix socket.

Producers (``woodpecker.Client``) on this host attach over ``logstore.socket``,
hand over their shared-memory arena once (a memfd over SCM_RIGHTS) and then send
batch descriptors. The logstore owns the writer sessions, supervises the
uploader processes (restarting a crashed one and re-dispatching its jobs) and
shuts down cleanly on SIGTERM: it drains, acks or fails every pending append,
seals its active segments and releases its sessions.

Embedded mode (the default) is exactly this code, launched in the background by
the first Client of a storage root; it exits ``logstore.idle_exit`` seconds after
its last producer detached. A lock file held for the logstore's lifetime tells
clients whether a socket on disk is live or the leftover of a killed logstore.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field

import orjson

from shm import Arena, FrameReader, FrameWriter, send_msg
from woodpecker import wire
from woodpecker.config import Config
from woodpecker.deployment import Deployment, verify_deployment
from woodpecker.errors import (
    ConfigError,
    LogstoreUnavailableError,
    WoodpeckerError,
    WriterClosedError,
    from_wire,
    to_wire,
)
from woodpecker.meta import MetaStore
from woodpecker.meta.embedded import EmbeddedEtcd
from woodpecker.private_files import make_private_dirs, private_opener
from woodpecker.storage import LocalObjectStore, open_store
from workers import metrics, protocol
from workers.coordinator import Coordinator, Outbox
from workers.logfile import configure_logging
from workers.maintenance import Maintenance

log = logging.getLogger("woodpecker.logstore")

REPLY_BACKLOG_LIMIT = 8 * 1024 * 1024
"""Bytes of acks and replies a producer may leave unread before it is disconnected.

A producer's unread replies are bounded by its batches in flight (tens of bytes
each), so only a producer that sends but never reads comes near this.
"""


@dataclass
class Producer:
    conn: socket.socket
    reader: FrameReader
    writer: FrameWriter
    arena_fd: int = -1
    arena_size: int = 0
    arena: Arena | None = None  # mapped here only to replicate its batches to quorum nodes
    gone: bool = False


@dataclass
class UploaderProc:
    proc: subprocess.Popen
    sock: socket.socket
    reader: FrameReader
    jobs: dict[int, bytes] = field(default_factory=dict)  # job id -> JOB frame


class Logstore:
    """One logstore process. ``run()`` serves until SIGTERM (or idleness when embedded)."""

    def __init__(self, config: Config, *, embedded: bool) -> None:
        self.config = config
        self.embedded = embedded
        self.socket_path = config.logstore_socket
        make_private_dirs(self.socket_path.parent)
        self._lock = open(config.logstore_lock, "a+", opener=private_opener)  # noqa: SIM115 - held for life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WoodpeckerError(f"a logstore already serves {self.socket_path}") from None
        self._etcd: EmbeddedEtcd | None = None
        endpoints = list(config.etcd.endpoints)
        if not endpoints:
            self._etcd = EmbeddedEtcd(config.storage.root, config.etcd.binary)
            endpoints = self._etcd.acquire()
        self.etcd_endpoints = endpoints
        self.meta = MetaStore(config, endpoints=endpoints)
        self.deployment = Deployment.of(config)
        store = open_store(config)
        try:
            verify_deployment(config, self.meta, store)  # before anything is written
        except BaseException:
            store.close()
            self.meta.close()
            if self._etcd is not None:
                self._etcd.release()
            self._lock.close()
            raise
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self.producers: dict[int, Producer] = {}
        self._next_producer = 1
        self.uploaders: list[UploaderProc] = []
        owner = f"{socket.gethostname()}:{os.getpid()}:{self.socket_path}"
        self.coordinator = Coordinator(
            config,
            self.meta,
            owner,
            Outbox(
                dispatch=self._dispatch,
                ack=self._ack,
                nack=self._nack,
                wake=self._wake,
                read_batch=self._read_batch,
            ),
        )
        # retention, GC and compaction run here whether or not any writer is open
        self.store = store
        self.maintenance = Maintenance(
            config, self.meta, metrics.MeteredStore(self.store, metrics.count_object_request)
        )
        self._stopping = False
        self._idle_since = time.monotonic()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a leftover of a killed logstore (we hold the lock)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)
        try:
            self.listener.bind(str(self.socket_path))
        finally:
            os.umask(old_umask)
        self.listener.listen(64)
        self.sel.register(self.listener, selectors.EVENT_READ, ("accept", None))
        self._remove_temp_files()  # left by the uploaders of a killed predecessor
        for _ in range(config.uploader.processes):
            self.uploaders.append(self._spawn_uploader())

    # ---- uploaders -------------------------------------------------------------------

    def _spawn_uploader(self) -> UploaderProc:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.uploader", str(child.fileno())],
            pass_fds=[child.fileno()],
            stdin=subprocess.PIPE,
        )
        assert proc.stdin is not None
        proc.stdin.write(orjson.dumps(self.config.overrides()))  # secrets stay off argv
        proc.stdin.close()
        child.close()
        up = UploaderProc(proc, parent, FrameReader())
        for producer, p in self.producers.items():
            if p.arena_fd >= 0:
                self._to_uploader(
                    up,
                    protocol.ARENA_FMT.pack(protocol.ARENA, producer, p.arena_size),
                    [p.arena_fd],
                )
        self.sel.register(parent, selectors.EVENT_READ, ("uploader", up))
        return up

    def _restart_uploader(self, up: UploaderProc) -> None:
        log.warning("uploader pid %s exited (%s); restarting it", up.proc.pid, up.proc.poll())
        metrics.uploader_restarts.inc()
        self.sel.unregister(up.sock)
        up.sock.close()
        with contextlib.suppress(ProcessLookupError):
            up.proc.kill()
        up.proc.wait()
        self._remove_temp_files()
        fresh = self._spawn_uploader()
        self.uploaders[self.uploaders.index(up)] = fresh
        for job, frame in up.jobs.items():
            fresh.jobs[job] = frame
            self._to_uploader(fresh, frame)

    @staticmethod
    def _to_uploader(up: UploaderProc, frame: bytes, fds: list[int] | None = None) -> None:
        """Send to an uploader; a dead one is noticed (EOF) and restarted by the loop,
        which re-dispatches every job recorded for it."""
        with contextlib.suppress(OSError):
            send_msg(up.sock, frame, fds or ())

    def _dispatch(self, job: int, key: str, parts: list[list[int]]) -> None:
        up = min(self.uploaders, key=lambda u: len(u.jobs))
        frame = wire.encode(protocol.JOB, {"job": job, "key": key, "parts": parts})
        up.jobs[job] = frame
        self._to_uploader(up, frame)

    def _on_uploader(self, up: UploaderProc) -> None:
        try:
            frames = up.reader.feed_from(up.sock)
        except (EOFError, ConnectionError):
            self._restart_uploader(up)
            return
        for frame, _ in frames:
            kind, body = wire.decode(frame)
            job = body["job"]
            metrics.add_object_requests(body.get("requests", {}))
            up.jobs.pop(job, None)
            if kind == protocol.DONE:
                self.coordinator.on_upload_done(
                    job, body["key"], body["offset"], body["size"], body["checksum"]
                )
            else:
                self.coordinator.on_upload_failed(job, from_wire(body))

    # ---- producers -------------------------------------------------------------------

    def _send(self, producer: int, frame: bytes) -> None:
        """Queue a reply; the loop never waits on one producer's socket."""
        p = self.producers.get(producer)
        if p is None or p.gone:
            return
        try:
            p.writer.push(p.conn, frame)
        except OverflowError as e:
            log.warning("producer %s: %s; disconnecting it", producer, e)
            self._producer_gone(producer)
            return
        except OSError:
            self._producer_gone(producer)
            return
        self._watch_writable(producer, p)

    def _flush(self, producer: int) -> None:
        p = self.producers[producer]
        try:
            p.writer.flush(p.conn)
        except OSError:
            self._producer_gone(producer)
            return
        self._watch_writable(producer, p)

    def _watch_writable(self, producer: int, p: Producer) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if p.writer.pending else 0)
        if self.sel.get_key(p.conn).events != events:
            self.sel.modify(p.conn, events, ("producer", producer))

    def _read_batch(self, producer: int, offset: int, length: int) -> bytes:
        p = self.producers[producer]
        if p.arena is None:
            p.arena = Arena.attach(os.dup(p.arena_fd), p.arena_size)
        return bytes(p.arena.view(offset, length))

    def _ack(self, producer: int, seq: int, segment_id: int, first_entry: int) -> None:
        self._send(producer, wire.ACK_FMT.pack(wire.ACK, seq, segment_id, first_entry))

    def _nack(self, producer: int, seq: int, error: WoodpeckerError) -> None:
        self._send(producer, wire.encode_nack(seq, error))

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        conn.setblocking(False)
        producer = self._next_producer
        self._next_producer += 1
        self.producers[producer] = Producer(conn, FrameReader(), FrameWriter(REPLY_BACKLOG_LIMIT))
        self.sel.register(conn, selectors.EVENT_READ, ("producer", producer))

    def _on_producer(self, producer: int) -> None:
        p = self.producers[producer]
        try:
            frames = p.reader.feed_from(p.conn)
        except (EOFError, ConnectionError, OSError):
            self._producer_gone(producer)
            return
        except ValueError as e:  # a frame length past the limit
            log.warning("producer %s broke the framing (%s); disconnecting it", producer, e)
            self._producer_gone(producer)
            return
        for frame, fds in frames:
            try:
                self._on_frame(producer, p, frame, fds)
            except (IndexError, KeyError, TypeError, ValueError, struct.error) as e:
                # one broken producer must never take the logstore (and everyone) down
                log.warning(
                    "producer %s sent a malformed %s; disconnecting it",
                    producer,
                    f"frame ({type(e).__name__}: {e})",
                )
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                self._producer_gone(producer)
                return

    def _on_frame(self, producer: int, p: Producer, frame: bytes, fds: list[int]) -> None:
        """Act on one producer frame; raises on anything malformed."""
        kind = frame[0]
        if kind == wire.BATCH:
            _, log_id, seq, offset, length, count = wire.BATCH_FMT.unpack(frame)
            if p.arena_fd < 0 or count < 1 or length < 1 or offset + length > p.arena_size:
                raise ValueError(
                    f"batch descriptor outside the arena or empty: {offset=} "
                    f"{length=} {count=} arena={p.arena_size}"
                )
            if self._stopping:
                self._nack(producer, seq, WriterClosedError("the logstore is shutting down"))
            else:
                self.coordinator.on_batch(producer, log_id, seq, offset, length, count)
        elif kind == wire.HELLO:
            self._hello(producer, p, frame, fds)
        elif kind in (wire.OPEN_LOG, wire.CLOSE_LOG):
            for fd in fds:
                os.close(fd)
            _, body = wire.decode(frame)
            if not isinstance(body, dict):
                raise TypeError("control message body is not an object")
            self._control(producer, kind, body)
        else:
            raise ValueError(f"unknown message type {kind}")

    def _hello(self, producer: int, p: Producer, frame: bytes, fds: list[int]) -> None:
        _, body = wire.decode(frame)
        if p.arena_fd >= 0 or len(fds) != 1 or not isinstance(body["arena_size"], int):
            raise ValueError("HELLO must come once, with exactly one arena fd and its size")
        if os.fstat(fds[0]).st_size < body["arena_size"]:
            os.close(fds[0])
            raise ValueError("the arena fd is smaller than the size the producer claims")
        refusal = self._refusal(body)
        if refusal is not None:
            os.close(fds[0])
            self._send(producer, wire.encode(wire.REFUSED, to_wire(refusal)))
            self._producer_gone(producer)
            return
        p.arena_size, p.arena_fd = body["arena_size"], fds[0]
        for up in self.uploaders:
            self._to_uploader(
                up, protocol.ARENA_FMT.pack(protocol.ARENA, producer, p.arena_size), [p.arena_fd]
            )
        self._send(
            producer,
            wire.encode(
                wire.WELCOME,
                {
                    "producer_id": producer,
                    "protocol": wire.VERSION,
                    "deployment": self.deployment.fingerprint,
                    "serves": str(self.deployment),
                    "pid": os.getpid(),
                },
            ),
        )

    def _refusal(self, hello: dict) -> WoodpeckerError | None:
        """Why a producer may not attach: another protocol version, or another deployment."""
        version = hello.get("protocol", 1)
        if version != wire.VERSION:
            return LogstoreUnavailableError(
                f"the logstore at {self.socket_path} (pid {os.getpid()}) speaks "
                f"protocol {wire.VERSION}, this client speaks {version}: run the same "
                "Woodpecker version on both sides (stop the logstore to upgrade it)"
            )
        if hello.get("deployment") != self.deployment.fingerprint:
            return ConfigError(
                f"the logstore at {self.socket_path} serves {self.deployment}, but "
                f"this client is configured for {hello.get('describes')}: set "
                "logstore.socket to the logstore of this client's deployment, or leave it "
                "empty to use the embedded one"
            )
        return None

    def _control(self, producer: int, kind: int, body: dict) -> None:
        req = body.get("req")

        def reply(error: WoodpeckerError | None) -> None:
            answer: dict = {"req": req, "ok": error is None}
            if error is not None:
                answer.update(to_wire(error))
            self._send(producer, wire.encode(wire.REPLY, answer))

        if kind == wire.OPEN_LOG:
            name, log_id = body["name"], body["log_id"]
            if not isinstance(name, str) or type(log_id) is not int:
                raise TypeError("OPEN_LOG needs a string name and an integer log_id")
            if self._stopping:
                reply(WoodpeckerError("the logstore is shutting down"))
            else:
                # answered once the session is open: etcd work runs off the loop
                self.coordinator.open_log(producer, name, log_id, reply)
        elif kind == wire.CLOSE_LOG:
            self.coordinator.close_log(producer, body["log_id"])
            reply(None)

    def _producer_gone(self, producer: int) -> None:
        p = self.producers.get(producer)
        if p is None or p.gone:
            return
        p.gone = True
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(p.conn)
        p.conn.close()
        self.coordinator.producer_gone(producer)

    def _live(self, producer: int) -> bool:
        return producer in self.producers and not self.producers[producer].gone

    def _reap_producers(self) -> None:
        """Unmap the arenas of departed producers once nothing of theirs is in flight."""
        for producer, p in list(self.producers.items()):
            if p.gone and self.coordinator.producer_batches.get(producer, 0) == 0:
                for up in self.uploaders:
                    self._to_uploader(up, protocol.DROP_FMT.pack(protocol.DROP_ARENA, producer))
                if p.arena_fd >= 0:
                    os.close(p.arena_fd)
                if p.arena is not None:
                    p.arena.close()
                del self.producers[producer]
                self.coordinator.producer_batches.pop(producer, None)

    # ---- loop ------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def request_stop(self, *_: object) -> None:
        self._stopping = True
        self._wake()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.maintenance.start()
        try:
            while not self._stopping:
                self._step(self._wait_time())
                if self.embedded and self._idle():
                    if time.monotonic() - self._idle_since >= self.config.logstore.idle_exit:
                        break
                else:
                    self._idle_since = time.monotonic()
            self._drain()
        finally:
            self._close()

    def _wait_time(self) -> float:
        """How long the loop may sleep: at most 0.5 s, less if a lingering block is due."""
        due = self.coordinator.next_deadline()
        return 0.5 if due is None else min(0.5, max(0.0, due - time.monotonic()))

    def _idle(self) -> bool:
        return not self.producers and self.coordinator.idle()

    def _step(self, timeout: float) -> None:
        for key, events in self.sel.select(timeout):
            kind, who = key.data
            if kind == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                self.coordinator.run_results()
            elif kind == "producer":
                if events & selectors.EVENT_WRITE and self._live(who):
                    self._flush(who)
                if events & selectors.EVENT_READ and self._live(who):
                    self._on_producer(who)
            elif kind == "uploader":
                self._on_uploader(who)
            elif kind == "accept" and not self._stopping:
                self._accept()
        self.coordinator.run_results()
        self.coordinator.tick()
        self._reap_producers()

    def _drain(self) -> None:
        """Finish what was accepted: upload, commit and ack it, or fail it past the deadline."""
        self.sel.unregister(self.listener)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        deadline = time.monotonic() + self.config.retry.deadline + 5.0
        self.coordinator.dispatch_waiting()
        self.coordinator.seal_all()
        while not self.coordinator.idle() and time.monotonic() < deadline:
            self._step(0.1)
            # a log that finished opening meanwhile may have started a segment
            self.coordinator.seal_all()
        if not self.coordinator.idle():
            self.coordinator.fail_all("the logstore stopped")
        # the last acks and NACKs must reach producers that still read
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(
            p.writer.pending for p in self.producers.values() if not p.gone
        ):
            self._step(0.05)

    def _remove_temp_files(self) -> None:
        """Local backend: delete temp files that dead processes left inside ``put``."""
        store = self.store
        if isinstance(store, LocalObjectStore):
            try:
                removed = store.remove_orphaned_temp_files()
            except OSError as e:
                log.warning("could not remove orphaned temp files: %s", e)
                return
            if removed:
                log.info("removed %d temp files left by killed processes", removed)

    def _close(self) -> None:
        self.maintenance.stop()
        self.coordinator.close()
        for up in self.uploaders:
            up.sock.close()
        for up in self.uploaders:
            try:
                up.proc.wait(5)
            except subprocess.TimeoutExpired:
                up.proc.kill()
                up.proc.wait()
        self._remove_temp_files()
        self.store.close()
        for producer in list(self.producers):
            self._producer_gone(producer)
        self.meta.close()
        if self._etcd is not None:
            self._etcd.release()
        with contextlib.suppress(FileNotFoundError):
            if self.listener.fileno() >= 0:
                self.socket_path.unlink()
        self._lock.close()


def serve(config: Config, *, embedded: bool) -> int:
    """Run a logstore until it is stopped (or, embedded, until it idles out)."""
    configure_logging(config, config.logstore_log if embedded else None)
    try:
        store = Logstore(config, embedded=embedded)
    except WoodpeckerError as e:
        log.error("%s", e)
        return 1
    try:
        port = metrics.serve_metrics(config)
    except WoodpeckerError as e:
        log.error("%s", e)
        store.request_stop()
        store.run()
        return 1
    if port:
        log.info("serving Prometheus metrics on http://%s:%d/metrics", config.metrics.host, port)
    log.info(
        "serving %s for %s (etcd at %s)",
        store.socket_path,
        store.deployment,
        ",".join(store.etcd_endpoints),
    )
    store.run()
    return 0


def main() -> None:
    """``python -m workers.logstore --embedded``: launched by a Client, config as JSON on stdin."""
    sys.exit(serve(Config(env={}, **orjson.loads(sys.stdin.buffer.read())), embedded=True))


if __name__ == "__main__":
    main()
