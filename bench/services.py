"""The real etcd and S3 server the benchmark runs against, and a clean scratch space per run.

Endpoints come from ``WOODPECKER_*`` (as ``scripts/services start`` prints them);
when they are unset the benchmark starts the dev services itself with that script
(idempotent; they are left running for the next user, as the script intends).
Every measurement gets a ``Scratch``: its own storage root, etcd prefix and S3
prefix, all removed afterwards, so measurements never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from woodpecker.config import Config
from woodpecker.storage import open_store

REPO = Path(__file__).resolve().parent.parent
SERVICE_VARS = (
    "WOODPECKER_ETCD_ENDPOINTS",
    "WOODPECKER_S3_ENDPOINT",
    "WOODPECKER_S3_BUCKET",
    "WOODPECKER_S3_ACCESS_KEY",
    "WOODPECKER_S3_SECRET_KEY",
)


def ensure_services() -> str:
    """Make sure etcd and S3 endpoints are in ``os.environ``; says where they came from."""
    if all(os.environ.get(v) for v in SERVICE_VARS):
        return "from the WOODPECKER_* environment"
    script = REPO / "scripts" / "services"
    out = subprocess.run(
        [str(script), "start"], check=True, capture_output=True, text=True, timeout=180
    ).stdout
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            os.environ[key] = value
    missing = [v for v in SERVICE_VARS if not os.environ.get(v)]
    if missing:
        raise RuntimeError(f"scripts/services start did not provide {', '.join(missing)}")
    return "started with scripts/services start"


def service_settings(backend: str) -> dict[str, Any]:
    """Config keywords for the real services (S3 keys only for the S3 backend)."""
    env = os.environ
    settings: dict[str, Any] = {
        "storage_type": backend,
        "etcd_endpoints": env["WOODPECKER_ETCD_ENDPOINTS"],
    }
    if backend == "s3":
        settings.update(
            s3_endpoint=env["WOODPECKER_S3_ENDPOINT"],
            s3_bucket=env["WOODPECKER_S3_BUCKET"],
            s3_access_key=env["WOODPECKER_S3_ACCESS_KEY"],
            s3_secret_key=env["WOODPECKER_S3_SECRET_KEY"],
            s3_secure=env.get("WOODPECKER_S3_SECURE", "0") not in ("0", "", "false"),
        )
    return settings


@dataclass
class Scratch:
    """One measurement's isolated storage root, etcd prefix and S3 prefix."""

    backend: str
    root: Path
    tag: str
    overrides: dict[str, Any]

    @property
    def config(self) -> Config:
        return Config(env={}, **self.overrides)


@contextlib.contextmanager
def scratch(backend: str, parent: Path, **overrides: Any) -> Iterator[Scratch]:
    """A fresh, isolated place to measure; everything in it is deleted on exit."""
    tag = uuid.uuid4().hex[:10]
    root = Path(tempfile.mkdtemp(prefix=f"m-{tag}-", dir=parent))
    settings = service_settings(backend)
    settings.update(
        storage_root=str(root),
        etcd_prefix=f"/wp-bench/{tag}",
        s3_prefix=f"wp-bench/{tag}",
        # a short socket path (AF_UNIX limit); the bench stops the logstore itself
        logstore_socket=str(root / "ls.sock"),
        logstore_idle_exit=120.0,
    )
    settings.update(overrides)
    space = Scratch(backend, root, tag, settings)
    try:
        yield space
    finally:
        clean(space)


def clean(space: Scratch) -> None:
    """Delete the measurement's etcd keys, S3 objects and local files (best effort, bounded)."""
    config = space.config
    with contextlib.suppress(Exception):
        import pyetcd

        host, _, port = config.etcd.endpoints[0].rpartition(":")
        client = pyetcd.client(host=host, port=int(port), timeout=10)
        try:
            client.delete_prefix(config.etcd.prefix + "/")
        finally:
            client.close()
    if space.backend == "s3":
        with contextlib.suppress(Exception), open_store(config) as store:
            store.delete_many([o.key for o in store.list("")])
    shutil.rmtree(space.root, ignore_errors=True)
