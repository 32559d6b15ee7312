"""``EtcdConnection``: the one gRPC connection to etcd, and the bounded retry of every call.

Endpoints are ``host:port`` or ``unix:/path`` (the embedded etcd listens on Unix
sockets only); TLS and user/password authentication come from ``etcd.*``.
Every call has one request timeout (``etcd.timeout``), bounded attempts with
exponential backoff inside ``retry.deadline``, and fails over to the next
endpoint on a transient failure; when etcd stays unreachable it raises
``MetadataUnavailableError`` naming the operation (never a credential).

Only the modules of ``woodpecker.meta`` hold a connection: everything else
reaches etcd through their named operations (``MetaStore``, ``WriterSession``,
``Lifecycle``, the reader registration and commit watch).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
import pyetcd
from pyetcd import exceptions as etcd_errors

from woodpecker.config import Config, grpc_target
from woodpecker.errors import ConfigError, MetadataUnavailableError, WoodpeckerError

log = logging.getLogger(__name__)

T = TypeVar("T")

KV = tuple[bytes, Any]  # (value, pyetcd KVMetadata)

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

    def get(self, op: str, key: str, *, deadline: float | None = None) -> KV | None:
        """One key's value and metadata, or None if it does not exist."""
        value, meta = self.call(op, lambda c: c.get(key), deadline=deadline)
        return None if meta is None else (value, meta)

    def scan(self, op: str, prefix: str, **kwargs: Any) -> list[KV]:
        """Every key under ``prefix`` in key order (ids are zero-padded, so numeric order)."""
        response = self.call(
            op, lambda c: c.get_prefix_response(prefix, sort_order="ascend", **kwargs)
        )
        return [(kv.value, kv) for kv in response.kvs]

    def txn(
        self,
        op: str,
        compare: list[Any],
        success: list[Any],
        failure: list[Any] | None = None,
        *,
        deadline: float | None = None,
    ) -> tuple[bool, list[Any]]:
        """One transaction: whether ``compare`` held, and the replies of the branch run.

        A retried transaction may already have succeeded once, so a caller that
        changes state compares first and reads back in ``failure``.
        """
        return self.call(
            op,
            lambda c: c.transaction(compare=compare, success=success, failure=failure or []),
            deadline=deadline,
        )

    def read_together(
        self, op: str, gets: list[Any], *, deadline: float | None = None
    ) -> list[Any]:
        """Several reads at one revision; each reply is a list of ``(value, metadata)``."""
        return self.txn(op, [], gets, deadline=deadline)[1]

    def revoke_lease(self, lease_id: int, *, deadline: float) -> None:
        """Revoke a lease (deleting its keys), tolerating one already expired; never raises.

        Best effort: if etcd is unreachable the lease expires after its TTL anyway.
        """

        def revoke(client: Any) -> None:
            try:
                client.revoke_lease(lease_id)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        try:
            self.call("revoke_lease", revoke, deadline=deadline)
        except WoodpeckerError as e:
            log.warning("could not revoke lease %x (it expires by itself): %s", lease_id, e)

    def close(self) -> None:
        """Close every client; later calls raise ``MetadataUnavailableError`` (idempotent)."""
        with self._lock:
            self._closed = True
            clients, self._clients = self._clients, [None] * len(self._clients)
            clients += self._retired
            self._retired = []
        for client in clients:
            if client is not None:
                client.close()
