"""The logstore's logging: rotation with bounded size, owner-only files, JSON lines, repeats."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson

import workers.logfile
from woodpecker.config import Config
from workers.logfile import RepeatFilter

ROOT = Path(workers.logfile.__file__).resolve().parent.parent


def _run(script: str, tmp_path: Path) -> None:
    """Logging setup replaces the root handlers and fds 1/2: run it in its own process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_log_file_is_rotated_bounded_and_owner_only(tmp_path: Path) -> None:
    _run(
        f"""
        import logging, os
        from pathlib import Path
        from woodpecker.config import Config
        from workers.logfile import configure_logging
        config = Config(env={{}}, storage_root={str(tmp_path)!r}, logging_max_bytes="4KiB",
                        logging_backups=2)
        configure_logging(config, config.logstore_log)
        for i in range(2000):
            logging.getLogger("woodpecker.logstore").info("line %d %s", i, "x" * 40)
        os.write(2, b"stray stderr after rotations\\n")
        """,
        tmp_path,
    )
    log = Config(env={}, storage_root=str(tmp_path)).logstore_log.name
    files = sorted(p.name for p in tmp_path.glob(f"{log}*"))
    assert files == [log, f"{log}.1", f"{log}.2"]
    for name in files:
        path = tmp_path / name
        assert path.stat().st_size <= 4096 + 200, name
        assert path.stat().st_mode & 0o777 == 0o600, name
    current = (tmp_path / log).read_text()
    assert "line 1999" in current
    assert "stray stderr after rotations" in current  # stderr followed the last rotation


def test_json_format_writes_one_object_per_line(tmp_path: Path) -> None:
    _run(
        f"""
        import logging
        from woodpecker.config import Config
        from workers.logfile import configure_logging
        config = Config(env={{}}, storage_root={str(tmp_path)!r}, logging_format="json")
        configure_logging(config, config.logstore_log)
        logging.getLogger("woodpecker.coordinator").warning("block %s failed", 7)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("woodpecker.logstore").exception("crashed")
        """,
        tmp_path,
    )
    lines = [
        orjson.loads(x)
        for x in Config(env={}, storage_root=str(tmp_path)).logstore_log.read_text().splitlines()
    ]
    assert lines[0]["level"] == "WARNING"
    assert lines[0]["logger"] == "woodpecker.coordinator"
    assert lines[0]["message"] == "block 7 failed"
    assert lines[0]["time"].endswith("+00:00")
    assert "ValueError: boom" in lines[1]["exception"]


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("woodpecker.maintenance", logging.WARNING, "", 0, msg, args, None)


def test_repeated_warning_is_printed_once_per_interval_then_counted() -> None:
    now = [0.0]
    f = RepeatFilter(600.0, clock=lambda: now[0])
    shown = []
    for _ in range(10):  # ten maintenance passes a minute apart
        record = _record("maintenance: %s failed: %s", "compaction of 'a'", "etcd down")
        if f.filter(record):
            shown.append(record.getMessage())
        now[0] += 60.0
    record = _record("maintenance: %s failed: %s", "compaction of 'a'", "etcd down")
    assert f.filter(record)
    shown.append(record.getMessage())
    assert shown == [
        "maintenance: compaction of 'a' failed: etcd down",
        "maintenance: compaction of 'a' failed: etcd down (repeated 9 more times since)",
    ]
    assert f.filter(_record("maintenance: %s failed: %s", "compaction of 'b'", "etcd down"))


def test_configure_logging_rate_limits_the_maintenance_logger(tmp_path: Path) -> None:
    _run(
        f"""
        import logging
        from woodpecker.config import Config
        from workers.logfile import configure_logging
        config = Config(env={{}}, storage_root={str(tmp_path)!r})
        configure_logging(config, config.logstore_log)
        for _ in range(5):
            logging.getLogger("woodpecker.maintenance").warning("maintenance: pass failed")
            logging.getLogger("woodpecker.logstore").warning("uploader exited")
        """,
        tmp_path,
    )
    text = Config(env={}, storage_root=str(tmp_path)).logstore_log.read_text()
    assert text.count("maintenance: pass failed") == 1
    assert text.count("uploader exited") == 5


def test_logstore_log_sits_beside_the_socket(tmp_path: Path) -> None:
    config = Config(env={}, storage_root=str(tmp_path))
    assert config.logstore_log == config.logstore_socket.with_suffix(".log")
    assert config.logstore_log.parent == tmp_path
