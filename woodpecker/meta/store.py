"""``MetaStore``: logs, segments and blocks in etcd, and the door to writer sessions.

Every etcd call goes through ``EtcdConnection.call``: one request timeout
(``etcd.timeout``), bounded attempts with exponential backoff inside
``retry.deadline``, failover to the next endpoint on a transient failure, and
``MetadataUnavailableError`` naming the operation (never a credential) when
etcd stays unreachable. Transactions that change state compare first and read
back in their failure branch, so a retry of a request whose reply was lost can
recognise its own earlier success instead of reporting a conflict.

The protocol (keys, fencing, invariants) is described in ``docs/fencing.md``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pyetcd
from pyetcd import exceptions as etcd_errors
from pyetcd import utils as etcd_utils

from woodpecker.config import Config, grpc_target
from woodpecker.errors import (
    ConfigError,
    LogExistsError,
    LogNotFoundError,
    MetadataUnavailableError,
)
from woodpecker.meta.keys import Keys
from woodpecker.meta.records import (
    BlockRecord,
    LogRecord,
    SegmentIndex,
    SegmentRecord,
    TruncationPoint,
    decode_counter,
)
from woodpecker.naming import validate_log_name

if TYPE_CHECKING:
    from woodpecker.meta.session import WriterSession

log = logging.getLogger(__name__)

T = TypeVar("T")

KV = tuple[bytes, Any]  # (value, pyetcd KVMetadata)

# Compare-and-swap conflicts are not failures (another client won a race), so
# they are retried immediately; this bounds a pathological livelock.
CAS_ATTEMPTS = 64

# etcd's --max-txn-ops default; a transaction with more operations is refused.
MAX_TXN_OPS = 128

# A segment may hold up to segment.max_blocks block records; one range reply
# must fit them (gRPC's default limit is 4 MiB).
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    # keepalive pings detect a half-open connection, which would otherwise silence watches;
    # only while a call (a watch, a lease keepalive) is open: etcd answers pings on an idle
    # connection with GOAWAY "too_many_pings", which drops the connection
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
]

_TRANSIENT_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_TRANSIENT_ERRORS = (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def first(kvs: Sequence[KV]) -> KV | None:
    """The single key-value of a Get response inside a transaction, if any."""
    return kvs[0] if kvs else None


class _Endpoint(pyetcd.Endpoint):
    """A pyetcd endpoint for any gRPC target: pyetcd itself only builds ``host:port``."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        self._target = target
        super().__init__(target, 0, **kwargs)  # host and port only name the endpoint
        self.netloc = target

    def _mkchannel(self, opts: Any) -> grpc.Channel:
        if self.secure:
            return grpc.secure_channel(self._target, self.credentials, options=opts)
        return grpc.insecure_channel(self._target, options=opts)


def _grpc_code(e: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of an error raised by pyetcd (which wraps some codes)."""
    for err in (e, e.__context__):
        if isinstance(err, grpc.RpcError) and callable(getattr(err, "code", None)):
            return err.code()
    return None


def _describe(e: BaseException) -> str:
    for err in (e, e.__context__):
        if isinstance(err, grpc.RpcError) and callable(getattr(err, "details", None)):
            return f"{err.code().name}: {err.details()}"
    return str(e) or type(e).__name__


class EtcdConnection:
    """Clients for the configured endpoints and the bounded retry of every call."""

    def __init__(self, config: Config, endpoints: list[str]) -> None:
        if not endpoints:
            raise ConfigError("etcd.endpoints is empty")
        self.config = config
        self.targets = [grpc_target(e) for e in endpoints]
        self._label = ",".join(e.strip() for e in endpoints)
        self._credentials = self._tls_credentials()
        self._clients: list[pyetcd.MultiEndpointEtcd3Client | None] = [None] * len(endpoints)
        # replaced clients stay open until close(): other threads may be mid-call on them
        self._retired: list[pyetcd.MultiEndpointEtcd3Client] = []
        self._current = 0
        self._lock = threading.Lock()
        self._closed = False
        self.ops = pyetcd.Transactions()  # builders of compares and txn operations

    @property
    def target(self) -> str:
        """The gRPC target calls go to now: ``host:port`` or ``unix:/path``."""
        return self.targets[self._current]

    def _tls_credentials(self) -> grpc.ChannelCredentials | None:
        etcd = self.config.etcd
        if not (etcd.ca_file or etcd.cert_file or etcd.key_file):
            return None
        if bool(etcd.cert_file) != bool(etcd.key_file):
            raise ConfigError("etcd.cert_file and etcd.key_file must be set together")

        def read(path: str, what: str) -> bytes | None:
            if not path:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise ConfigError(f"etcd.{what}: cannot read {path} ({e.strerror})") from None

        return grpc.ssl_channel_credentials(
            read(etcd.ca_file, "ca_file"),
            read(etcd.key_file, "key_file"),
            read(etcd.cert_file, "cert_file"),
        )

    def _client(self, index: int) -> pyetcd.MultiEndpointEtcd3Client:
        """The client of an endpoint, connecting (and authenticating) on first use."""
        with self._lock:
            if self._closed:
                raise MetadataUnavailableError("the metadata store is closed")
            client = self._clients[index]
            if client is None:
                # time_retry=0: pyetcd would otherwise refuse the endpoint for 300 s
                # after one failure; failover and backoff are done here instead.
                endpoint = _Endpoint(
                    self.targets[index],
                    secure=self._credentials is not None,
                    creds=self._credentials,
                    time_retry=0,
                    opts=_GRPC_OPTIONS,
                )
                etcd = self.config.etcd
                client = pyetcd.MultiEndpointEtcd3Client(
                    endpoints=[endpoint],
                    timeout=etcd.timeout,
                    user=etcd.user or None,
                    password=etcd.password if etcd.user else None,
                )
                if self._credentials is None:
                    # pyetcd sends the auth token twice: as call credentials, which gRPC
                    # refuses on a plaintext channel, and as plain call metadata, which
                    # etcd accepts. Keep the metadata only (before any watcher copies it).
                    client.call_credentials = None
                self._clients[index] = client
            return client

    def _failed(self, index: int, *, reconnect: bool) -> None:
        """Move on to the next endpoint; drop the client when it must re-authenticate."""
        with self._lock:
            client = self._clients[index]
            if reconnect and client is not None:
                self._clients[index] = None
                self._retired.append(client)
            if self._current == index:
                self._current = (index + 1) % len(self.targets)

    def call(
        self,
        op: str,
        fn: Callable[[pyetcd.MultiEndpointEtcd3Client], T],
        *,
        deadline: float | None = None,
    ) -> T:
        """Run ``fn(client)``, retrying transient failures until the retry deadline.

        ``fn`` must be safe to repeat: a transient failure may hide a success.
        """
        retry = self.config.retry
        start = time.monotonic()
        limit = start + (retry.deadline if deadline is None else deadline)
        delay = retry.backoff_initial
        attempt = 0
        while True:
            attempt += 1
            index = self._current
            client = None
            try:
                client = self._client(index)  # may authenticate: a call of its own
                return fn(client)
            except (grpc.RpcError, etcd_errors.Etcd3Exception, ValueError) as e:
                code = _grpc_code(e)
                reauth = code == grpc.StatusCode.UNAUTHENTICATED  # expired auth token
                # another thread reconnected under us: our channel was closed
                replaced = client is not None and self._clients[index] is not client
                transient = isinstance(e, _TRANSIENT_ERRORS) or code in _TRANSIENT_CODES
                if isinstance(e, ValueError) and not replaced:
                    raise
                if not (reauth or replaced or transient):
                    raise MetadataUnavailableError(
                        f"etcd {op} failed at {self._label}: {_describe(e)}"
                    ) from None
                self._failed(index, reconnect=reauth)
                reason = _describe(e)
            remaining = limit - time.monotonic()
            if attempt >= retry.max_attempts or remaining <= 0:
                raise MetadataUnavailableError(
                    f"etcd {op}: no success from {self._label} after {attempt} attempts "
                    f"in {time.monotonic() - start:.1f}s (last error: {reason})"
                )
            time.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
            delay = min(delay * 2, retry.backoff_max)

    def get(self, op: str, key: str) -> KV | None:
        value, meta = self.call(op, lambda c: c.get(key))
        return None if meta is None else (value, meta)

    def scan(self, op: str, prefix: str, **kwargs: Any) -> list[KV]:
        """Every key under ``prefix`` in key order (ids are zero-padded, so numeric order)."""
        response = self.call(
            op, lambda c: c.get_prefix_response(prefix, sort_order="ascend", **kwargs)
        )
        return [(kv.value, kv) for kv in response.kvs]

    def txn(
        self, op: str, compare: list[Any], success: list[Any], failure: list[Any] | None = None
    ) -> tuple[bool, list[Any]]:
        return self.call(
            op, lambda c: c.transaction(compare=compare, success=success, failure=failure or [])
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._clients = self._clients, [None] * len(self._clients)
            clients += self._retired
            self._retired = []
        for client in clients:
            if client is not None:
                client.close()


class MetaStore:
    """The metadata of every log under ``etcd.prefix``.

    ``endpoints`` overrides ``config.etcd.endpoints`` (e.g. an embedded etcd).
    Construction does no I/O; the first call connects.
    """

    def __init__(self, config: Config, endpoints: list[str] | None = None) -> None:
        self.config = config
        self.keys = Keys(config.etcd.prefix)
        self.etcd = EtcdConnection(config, list(endpoints or config.etcd.endpoints))
        self._sessions: weakref.WeakSet[WriterSession] = weakref.WeakSet()

    def __enter__(self) -> MetaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the writer sessions opened here, then drop the connections."""
        for session in list(self._sessions):
            session.release()
        self.etcd.close()

    def server_version(self) -> str:
        """The etcd server version (also a cheap reachability probe)."""
        return self.etcd.call("status", lambda c: c.status().version)

    # ---- logs ------------------------------------------------------------------------

    def create_log(self, name: str) -> LogRecord:
        """Create a log with a fresh id; LogExistsError if the name is taken.

        One transaction checks the name is free and advances the id counter by
        compare-and-swap, so concurrent creators get distinct ids and exactly one
        of several creators of the same name wins.
        """
        validate_log_name(name)
        k, ops = self.keys, self.etcd.ops
        counter = self.etcd.get("create_log", k.log_idgen)
        uid = uuid.uuid4().hex
        for _ in range(CAS_ATTEMPTS):
            if counter is None:
                last, guard = 0, ops.create(k.log_idgen) == 0
            else:
                last = decode_counter(counter[0], k.log_idgen)
                guard = ops.mod(k.log_idgen) == counter[1].mod_revision
            record = LogRecord(log_id=last + 1, name=name, created_ms=now_ms(), uid=uid)
            ok, replies = self.etcd.txn(
                "create_log",
                compare=[ops.create(k.log(name)) == 0, guard],
                success=[
                    ops.put(k.log(name), record.to_bytes()),
                    ops.put(k.log_id(record.log_id), name),
                    ops.put(k.log_idgen, str(record.log_id)),
                ],
                failure=[ops.get(k.log(name)), ops.get(k.log_idgen)],
            )
            if ok:
                return record
            existing, counter = first(replies[0]), first(replies[1])
            if existing is not None:
                found = LogRecord.from_bytes(existing[0], k.log(name))
                if found.uid == uid:
                    return found  # our own earlier attempt, whose reply was lost
                raise LogExistsError(f"log {name!r} already exists")
        raise MetadataUnavailableError(
            f"etcd create_log {name!r}: the log id counter stayed contended "
            f"for {CAS_ATTEMPTS} attempts"
        )

    def get_log(self, name: str) -> LogRecord:
        """The record of a log; LogNotFoundError if it does not exist."""
        validate_log_name(name)
        kv = self.etcd.get("get_log", self.keys.log(name))
        if kv is None:
            raise LogNotFoundError(f"log {name!r} not found")
        return LogRecord.from_bytes(kv[0], self.keys.log(name))

    def list_logs(self, prefix: str = "") -> list[str]:
        """Names of the logs starting with ``prefix``, sorted."""
        base = self.keys.logs_prefix
        kvs = self.etcd.scan("list_logs", base + prefix, keys_only=True)
        return [kv.key.decode()[len(base) :] for _, kv in kvs]

    def delete_log(self, name: str) -> LogRecord:
        """Delete every metadata key of a log in one transaction; return what was deleted.

        Atomic, so a reader sees the whole log or LogNotFoundError, never a
        half-deleted log. The writer key goes too, which fences a live writer.
        Objects are not touched: once unreferenced they are orphans for the
        garbage collector (the caller may delete ``<log_id>/`` right away).
        """
        validate_log_name(name)
        k, ops = self.keys, self.etcd.ops
        for _ in range(CAS_ATTEMPTS):
            kv = self.etcd.get("delete_log", k.log(name))
            if kv is None:
                raise LogNotFoundError(f"log {name!r} not found")
            record = LogRecord.from_bytes(kv[0], k.log(name))
            deletes = [ops.delete(k.log(name))]
            deletes += [ops.delete(key) for key in k.log_scoped_keys(record.log_id)]
            deletes += [
                ops.delete(prefix, etcd_utils.prefix_range_end(prefix.encode()))
                for prefix in k.log_scoped_prefixes(record.log_id)
            ]
            ok, _ = self.etcd.txn(
                "delete_log", compare=[ops.mod(k.log(name)) == kv[1].mod_revision], success=deletes
            )
            if ok:
                return record
        raise MetadataUnavailableError(
            f"etcd delete_log {name!r}: the log record kept changing for {CAS_ATTEMPTS} attempts"
        )

    # ---- segments, blocks, truncation ----------------------------------------------------

    def list_segments(self, log_id: int) -> list[SegmentRecord]:
        """Every segment of a log, by segment id."""
        return [
            SegmentRecord.from_bytes(v, kv.key.decode())
            for v, kv in self.etcd.scan("list_segments", self.keys.segments_prefix(log_id))
        ]

    def get_segment(self, log_id: int, segment_id: int) -> SegmentRecord | None:
        """One segment, or None if it does not exist (not created yet, or deleted)."""
        key = self.keys.segment(log_id, segment_id)
        kv = self.etcd.get("get_segment", key)
        return None if kv is None else SegmentRecord.from_bytes(kv[0], key)

    def list_blocks(self, log_id: int, segment_id: int) -> list[BlockRecord]:
        """The committed blocks of a segment, by block id (a compacted one's index chunks)."""
        index_key = self.keys.segment_index(log_id, segment_id)
        prefix = self.keys.blocks_prefix(log_id, segment_id)
        ops = self.etcd.ops
        _, (index, blocks) = self.etcd.txn(  # one snapshot: compaction swaps one for the other
            "list_blocks",
            compare=[],
            success=[
                ops.get(index_key),
                ops.get(prefix, etcd_utils.prefix_range_end(prefix.encode())),
            ],
        )
        if index:
            return SegmentIndex.from_bytes(index[0][0], index_key).blocks()
        return [BlockRecord.from_bytes(v, kv.key.decode()) for v, kv in blocks]

    def get_truncation(self, log_id: int) -> TruncationPoint | None:
        """The log's truncation point, or None if it was never truncated."""
        key = self.keys.truncation(log_id)
        kv = self.etcd.get("get_truncation", key)
        return None if kv is None else TruncationPoint.from_bytes(kv[0], key)

    # ---- writers ---------------------------------------------------------------------

    def acquire_writer(self, log_id: int, owner: str, *, preempt: bool = False) -> WriterSession:
        """Become the log's only writer (see WriterSession); ``preempt`` fences the holder.

        WriterFencedError if another session holds the log and ``preempt`` is
        false; LogNotFoundError if the log id does not exist.
        """
        from woodpecker.meta.session import WriterSession  # session imports this module

        session = WriterSession.acquire(self.etcd, self.keys, log_id, owner, preempt=preempt)
        self._sessions.add(session)
        return session
