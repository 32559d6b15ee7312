"""etcd's space: its database size against its quota, its alarms, and the warning at 80 %.

etcd refuses every write once its database reaches ``--quota-backend-bytes``
(the NOSPACE alarm), which stops every commit of every log. Operators see it
coming here: ``woodpecker doctor`` prints ``etcd_space``, and every logstore's
maintenance runs a ``QuotaWatch`` that logs a warning when the database
crosses ``WARN_FRACTION`` of the quota and an error while an alarm is active.
Why the database grows and which settings bound it: ``docs/metadata.md``.
"""

from __future__ import annotations

import http.client
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from pyetcd import etcdrpc

from woodpecker.meta.connection import EtcdConnection
from woodpecker.meta.embedded import UnixHTTPConnection
from woodpecker.meta.store import MetaStore

log = logging.getLogger("woodpecker.etcd_space")

WARN_FRACTION = 0.8
"""The logstore warns once the database passes this fraction of the quota."""

NOSPACE_RECOVERY = (
    "etcdctl endpoint status --write-out=json  # note the revision",
    "etcdctl compact <revision>",
    "etcdctl defrag --cluster",
    "etcdctl alarm disarm",
)
"""What an operator runs once NOSPACE is raised (after freeing space: truncate logs)."""


@dataclass(frozen=True)
class EtcdSpace:
    """One etcd member's database usage, as that member reports it."""

    revision: int
    db_size: int  # bytes the database file takes (what the quota is checked against)
    db_size_in_use: int | None  # bytes in use (the rest: freed pages, reused before growing)
    quota: int
    quota_source: str  # "etcd /metrics" or "etcd.quota_bytes"
    alarms: tuple[str, ...]

    @property
    def fraction(self) -> float:
        return self.db_size / self.quota

    def describe(self) -> str:
        in_use = (
            ""
            if self.db_size_in_use is None
            else f" ({self.db_size_in_use / 2**20:.1f} MiB in use)"
        )
        return (
            f"db {self.db_size / 2**20:.1f} MiB{in_use} "
            f"of quota {self.quota / 2**20:.0f} MiB ({self.fraction:.0%}, quota from "
            f"{self.quota_source}); alarms: {', '.join(self.alarms) or 'none'}"
        )


def _status(client: Any) -> Any:
    """The raw Status reply (pyetcd's ``status()`` drops the revision)."""
    return client.maintenancestub.Status(
        etcdrpc.StatusRequest(),
        client.timeout,
        credentials=client.call_credentials,
        metadata=client.metadata,
    )


def _alarms(client: Any) -> tuple[str, ...]:
    return tuple(etcdrpc.AlarmType.Name(a.alarm_type) for a in client.list_alarms())


def current_revision(meta: MetaStore) -> int:
    """The revision of the etcd member answering (one cheap Status call)."""
    return meta.etcd.call("status", _status).header.revision


_METRICS = {
    "etcd_server_quota_backend_bytes": "quota",
    "etcd_mvcc_db_total_size_in_use_in_bytes": "in_use",
}


def _metrics(etcd: EtcdConnection) -> dict[str, int]:
    """Quota and in-use size from the member's /metrics (what its gRPC API does not say).

    Empty when /metrics cannot be read (another port, a proxy in front).
    """
    target, config = etcd.target, etcd.config.etcd
    conn: http.client.HTTPConnection
    if target.startswith("unix:"):
        conn = UnixHTTPConnection(target.removeprefix("unix:"), timeout=config.timeout)
    elif config.ca_file or config.cert_file:
        context = ssl.create_default_context(cafile=config.ca_file or None)
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file)
        conn = http.client.HTTPSConnection(target, timeout=config.timeout, context=context)
    else:
        conn = http.client.HTTPConnection(target, timeout=config.timeout)
    found = {}
    try:
        conn.request("GET", "/metrics")
        for line in conn.getresponse().read().decode().splitlines():
            name, _, value = line.partition(" ")
            if name in _METRICS:
                found[_METRICS[name]] = int(float(value))
    except (OSError, ValueError, http.client.HTTPException) as e:
        log.debug("etcd /metrics not readable at %s: %s", target, e)
    finally:
        conn.close()
    return found


def etcd_space(meta: MetaStore) -> EtcdSpace:
    """Database size, quota and alarms of the etcd member answering."""
    etcd = meta.etcd
    status = etcd.call("status", _status)
    alarms = etcd.call("list_alarms", _alarms)
    metrics = _metrics(etcd)
    return EtcdSpace(
        revision=status.header.revision,
        db_size=status.dbSize,
        db_size_in_use=metrics.get("in_use"),
        quota=metrics.get("quota") or etcd.config.etcd.quota_bytes,
        quota_source="etcd /metrics" if "quota" in metrics else "etcd.quota_bytes",
        alarms=alarms,
    )


class QuotaWatch:
    """Logs once per crossing: a warning above WARN_FRACTION of the quota, an error per alarm."""

    def __init__(self, meta: MetaStore) -> None:
        self._meta = meta
        self._above = False
        self._alarms: tuple[str, ...] = ()

    def check(self) -> EtcdSpace:
        """Read the space now; log a crossing of the warning level or a new alarm."""
        space = etcd_space(self._meta)
        above = space.fraction >= WARN_FRACTION
        if above and not self._above:
            log.warning(
                "etcd is at %.0f%% of its space quota: %s. Truncate logs, check that etcd's "
                "history is compacted, then defragment (docs/metadata.md)",
                space.fraction * 100,
                space.describe(),
            )
        self._above = above
        raised = tuple(a for a in space.alarms if a not in self._alarms)
        if raised:
            log.error(
                "etcd raised alarm %s: every commit fails until it is cleared. %s. Recovery: %s",
                ", ".join(raised),
                space.describe(),
                "; ".join(NOSPACE_RECOVERY),
            )
        self._alarms = space.alarms
        return space
