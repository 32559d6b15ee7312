"""``woodpecker quickstart`` redirected to files: a readable report, no carriage-return frames."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import woodpecker as wp

ROOT = Path(wp.__file__).resolve().parent.parent


def quickstart(make_config, config_env, tmp_path: Path, *extra: str) -> tuple[str, str]:
    env = config_env(make_config("local"))
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("wb") as o, err.open("wb") as e:
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                "woodpecker",
                "quickstart",
                "--small",
                "3000",
                "--large",
                "4",
                *extra,
            ],
            env=env,
            stdout=o,
            stderr=e,
            timeout=300,
        )
    assert code == 0, err.read_text()
    return out.read_text(), err.read_text()


def test_quickstart_to_a_file_is_a_readable_report(make_config, config_env, tmp_path):
    out, err = quickstart(make_config, config_env, tmp_path)
    assert "\r" not in out and "\r" not in err and "\x1b" not in out + err
    lines = out.splitlines()
    assert 24 <= len(lines) <= 60
    assert max(map(len, lines)) <= 120
    assert "all 3004 entries read back and verified" in out
    assert any(line.startswith("  1 KiB entries      3000") for line in lines)
    # progress off a terminal: a plain line at each tenth of each of the four phases
    progress = err.splitlines()
    assert 4 <= len(progress) <= 4 * 11
    assert progress[-1].startswith("verify 1 MiB entries: 100% (4/4 entries")


def test_quickstart_quiet_prints_only_the_report(make_config, config_env, tmp_path):
    out, err = quickstart(make_config, config_env, tmp_path, "--quiet")
    assert err == ""
    assert "all 3004 entries read back and verified" in out
