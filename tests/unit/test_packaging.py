"""Packaging: the version, the ``py.typed`` marker seen by mypy, ``python -m woodpecker``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import woodpecker

ROOT = Path(woodpecker.__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "typing" / "uses_public_api.py"


def _mypy(*files: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *map(str, files)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_version_is_the_distribution_version() -> None:
    from importlib.metadata import version

    assert woodpecker.__version__ == version("woodpecker-py")
    assert "__version__" in woodpecker.__all__


def test_py_typed_marker_ships_with_the_package() -> None:
    assert (ROOT / "woodpecker" / "py.typed").is_file()
    assert "woodpecker = py.typed" in (ROOT / "setup.cfg").read_text()


def test_mypy_strict_accepts_a_typed_program_using_the_public_api(tmp_path: Path) -> None:
    result = _mypy(EXAMPLE, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_sees_the_annotations(tmp_path: Path) -> None:
    """A wrong type is reported: the annotations are read, not replaced by Any."""
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        'import woodpecker as wp\n\n\ndef f(w: wp.LogWriter) -> str:\n    return w.write(b"x")\n'
    )
    result = _mypy(wrong, cwd=tmp_path)
    assert result.returncode == 1
    assert '(got "LogMessageId", expected "str")' in result.stdout, result.stdout


def test_python_dash_m_runs_the_command_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "woodpecker", "config", "--table"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "storage.type" in result.stdout
