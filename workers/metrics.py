"""Prometheus metrics of the logstore, served on ``metrics.port`` when it is set.

The logstore process owns every series: its coordinator counts appends and
commits, its maintenance thread counts actions and segments, and uploader
processes report their object requests with each job result. Labels are
bounded: an operation or an action kind, never a log, segment or entry.
Names and the alerts worth setting are listed in docs/operations.md.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from woodpecker.config import Config
from woodpecker.errors import ConfigError, WoodpeckerError
from woodpecker.meta import SegmentState

OBJECT_OPS = ("put", "append", "get", "list", "delete")

appends = Counter("woodpecker_appends", "Entries acknowledged to producers (durable, committed).")
append_bytes = Counter(
    "woodpecker_append_bytes", "Bytes of the blocks committed for acknowledged entries."
)
ack_latency = Histogram(
    "woodpecker_ack_latency_seconds",
    "From a batch reaching the logstore to its acknowledgement.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
object_requests = Counter(
    "woodpecker_object_requests",
    "Object store requests made by the logstore and its uploaders (multipart steps "
    "count as put, stat as get).",
    ["op"],
)
etcd_txn = Histogram(
    "woodpecker_etcd_txn_seconds",
    "Duration of the coordinator's etcd transactions (segment create, block commit, seal).",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
arena_used = Gauge(
    "woodpecker_arena_used_bytes",
    "Bytes of producers' shared-memory arenas held by batches in the pipeline.",
)
fenced = Counter(
    "woodpecker_fenced", "Writer sessions of this logstore fenced by another logstore."
)
uploader_restarts = Counter(
    "woodpecker_uploader_restarts", "Uploader processes that died and were restarted."
)
maintenance_actions = Counter(
    "woodpecker_maintenance_actions",
    "Actions taken by maintenance passes (retention, GC, compaction).",
    ["kind"],
)
segments = Gauge(
    "woodpecker_segments",
    "Segments of every log by state, as of the last maintenance pass.",
    ["state"],
)
etcd_db_size = Gauge(
    "woodpecker_etcd_db_size_bytes",
    "Size of etcd's database file (what its quota is checked against), last maintenance pass.",
)
etcd_quota = Gauge(
    "woodpecker_etcd_quota_bytes",
    "etcd's --quota-backend-bytes (from its /metrics, else etcd.quota_bytes).",
)
for _op in OBJECT_OPS:
    object_requests.labels(_op)
for _op in ("create", "commit", "seal"):
    etcd_txn.labels(_op)
for _state in SegmentState:
    segments.labels(_state.value.lower())

_STORE_OPS = {
    "put": "put",
    "put_if_absent": "put",
    "create_multipart": "put",
    "upload_part": "put",
    "complete_multipart": "put",
    "get": "get",
    "stat": "get",
    "list": "list",
    "list_multipart": "list",
    "delete_many": "delete",
    "abort_multipart": "delete",
}


class MeteredStore:
    """An ObjectStore that reports each request it makes to ``count(op)``."""

    def __init__(self, store: Any, count: Callable[[str], None]) -> None:
        self.inner = store
        self._count = count

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        op = _STORE_OPS.get(name)
        if op is None:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._count(op)
            return attr(*args, **kwargs)

        return counted


class RequestTally:
    """Object requests an uploader made since it last reported them (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tally: Tally[str] = Tally()

    def count(self, op: str) -> None:
        with self._lock:
            self._tally[op] += 1

    def take(self) -> dict[str, int]:
        with self._lock:
            taken, self._tally = dict(self._tally), Tally()
        return taken


def count_object_request(op: str) -> None:
    object_requests.labels(op).inc()


def add_object_requests(requests: dict[str, int]) -> None:
    """Add what an uploader reported; unknown operations are ignored (labels stay bounded)."""
    for op, n in requests.items():
        if op in OBJECT_OPS and isinstance(n, int) and n > 0:
            object_requests.labels(op).inc(n)


def record_maintenance(kinds: Iterable[str], segment_states: dict[str, int]) -> None:
    """One maintenance pass: the kinds of its actions and the segments it saw by state."""
    for kind in kinds:
        maintenance_actions.labels(kind).inc()
    for state, n in segment_states.items():
        segments.labels(state).set(n)


def record_etcd_space(db_size: int, quota: int) -> None:
    etcd_db_size.set(db_size)
    etcd_quota.set(quota)


def serve_metrics(config: Config, port: int | None = None) -> int:
    """Start the HTTP endpoint (``/metrics``) on a daemon thread; returns its port (0: off)."""
    port = config.metrics.port if port is None else port
    if not port:
        return 0
    if not 0 < port < 65536:
        raise ConfigError(f"metrics.port: invalid value {port!r}; must be 1-65535 (0 turns off)")
    try:
        start_http_server(port, config.metrics.host)
    except OSError as e:
        raise WoodpeckerError(
            f"cannot serve metrics on {config.metrics.host}:{port}: {e.strerror or e}"
        ) from None
    return port
