"""The operator CLI against the real services: logs, segments, cat, tail, truncate, gc."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

import orjson
import pyarrow as pa
import pytest

import woodpecker as wp
from woodpecker.cli import main


@pytest.fixture
def cli_env(make_config, backend, monkeypatch):
    """The test's config exported as WOODPECKER_* variables, as an operator would set them."""
    config = make_config(backend)
    for flat, value in config.overrides().items():
        if isinstance(value, list):
            value = ",".join(value)
        monkeypatch.setenv(f"WOODPECKER_{flat.upper()}", str(value))
    with wp.Client(config) as client:
        log = client.create_log("cli")
        with log.open_writer() as w:
            ids = w.write_batch([f"entry {i}".encode() for i in range(6)] + [b"\xff\x00"])
    return ids


def run(capsysbinary, *argv: str) -> tuple[int, bytes, bytes]:
    code = main(list(argv))
    out, err = capsysbinary.readouterr()
    return code, out, err


def test_logs_segments_and_show(cli_env, capsysbinary):
    code, out, _ = run(capsysbinary, "logs", "list", "--json")
    assert code == 0
    [row] = orjson.loads(out)
    assert (row["name"], row["entries"]) == ("cli", 7)
    code, out, err = run(capsysbinary, "segments", "cli")
    assert code == 0, err
    assert b"SEALED" in out or b"ACTIVE" in out
    code, out, _ = run(capsysbinary, "logs", "show", "cli", "--json")
    assert orjson.loads(out)["segments"] >= 1


def test_cat_formats(cli_env, capsysbinary):
    code, out, _ = run(capsysbinary, "cat", "cli")
    assert code == 0
    assert out.split(b"\n")[:6] == [f"entry {i}".encode() for i in range(6)]
    _, out, _ = run(capsysbinary, "cat", "cli", "--format", "jsonl", "--from", str(cli_env[5]))
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert rows[0] == {
        "segment_id": cli_env[5].segment_id,
        "entry_id": cli_env[5].entry_id,
        "payload": "entry 5",
    }
    assert rows[1]["payload_b64"] == "/wA="
    _, out, _ = run(capsysbinary, "cat", "cli", "--format", "arrow", "--to", str(cli_env[2]))
    table = pa.ipc.open_stream(out).read_all()
    assert table.column("payload").to_pylist() == [b"entry 0", b"entry 1"]


def test_tail_truncate_and_gc(cli_env, capsysbinary):
    code, out, _ = run(capsysbinary, "truncate", "cli", str(cli_env[1]), "--json")
    assert code == 0 and orjson.loads(out)["truncated_through"] == str(cli_env[1])
    code, out, _ = run(capsysbinary, "tail", "cli", "--from", "earliest", "--seconds", "1")
    assert code == 0
    assert out.splitlines()[0] == f"{cli_env[2]}\tentry 2".encode()
    code, _, err = run(capsysbinary, "truncate", "cli", "99:0")
    assert code == 1 and b"segment 99 does not exist" in err
    code, out, _ = run(capsysbinary, "gc", "--dry-run", "--json")
    assert code == 0 and orjson.loads(out)["dry_run"] is True


def test_tail_format_jsonl_prints_one_object_a_line(cli_env, capsysbinary):
    argv = ("tail", "cli", "--from", "earliest", "--seconds", "1", "--format", "jsonl")
    code, out, _ = run(capsysbinary, *argv)
    assert code == 0
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert [r.get("payload") for r in rows[:6]] == [f"entry {i}" for i in range(6)]
    assert rows[6] == {
        "segment_id": cli_env[6].segment_id,
        "entry_id": cli_env[6].entry_id,
        "payload_b64": "/wA=",
    }
    code, text, _ = run(capsysbinary, "tail", "cli", "--from", "earliest", "--seconds", "1")
    assert not text.startswith(b"{")  # the control: text is the default


def test_unknown_log_is_a_clear_error(cli_env, capsysbinary):
    code, out, err = run(capsysbinary, "segments", "nope")
    assert code == 1 and b"nope" in err
    assert out == b""


BAD_POSITIONS = [
    "-1:0",
    "99999999999999999999999:0",
    "\u0663:0",
    "1:-2",
    "1",
    "9223372036854775808:0",
]


def test_bad_position_is_one_clear_error(cli_env, capsysbinary):
    for position in BAD_POSITIONS:
        for option in ("--from", "--to"):
            code, out, err = run(capsysbinary, "cat", "cli", option, position)
            assert code == 1 and out == b""
            assert err.startswith(b"woodpecker cat: invalid position "), (position, err)
            assert b"Traceback" not in err
        code, out, err = run(capsysbinary, "truncate", "cli", position, "--json")
        assert code == 1 and out == b""
        assert err.startswith(b"woodpecker truncate: invalid position "), (position, err)


def test_largest_position_is_accepted(cli_env, capsysbinary):
    code, out, _ = run(capsysbinary, "cat", "cli", "--from", "9223372036854775807:0")
    assert code == 0 and out == b""


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "woodpecker.cli", *argv]


def test_cat_into_a_closed_pipe_exits_quietly(cli_env, make_config, backend):
    config = make_config(backend)
    with wp.Client(config) as client, client.open_log("cli").open_writer() as w:
        w.write_batch([b"x" * 1000] * 3000)  # far more than a pipe buffer holds
    for fmt in ("raw", "jsonl", "arrow"):
        argv = _cli("cat", "cli", "--format", fmt)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(10)
        proc.stdout.close()  # like `| head -c 10`
        err = proc.stderr.read()
        assert proc.wait(60) == 0, (fmt, err)
        assert err == b"", fmt


def test_tail_json_into_a_closed_pipe_exits_quietly(cli_env, make_config, backend):
    config = make_config(backend)
    with wp.Client(config) as client, client.open_log("cli").open_writer() as w:
        w.write_batch([b"x" * 1000] * 3000)  # tail notices the closed pipe on a later write
    argv = _cli("tail", "cli", "--from", "earliest", "--json", "--seconds", "60")
    with subprocess.Popen(
        f"{shlex.join(argv)} | head -3",
        shell=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        out, err = proc.communicate(timeout=60)
    assert [orjson.loads(line)["entry_id"] for line in out.splitlines()] == [0, 1, 2]
    assert err == b""


def test_config_json(cli_env, capsysbinary):
    code, out, _ = run(capsysbinary, "config", "--json")
    assert code == 0 and orjson.loads(out)["storage"]["type"] in ("local", "s3")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("quickstart", "--small", "-5"), b"argument --small: must be >= 0, not -5"),
        (("quickstart", "--large", "-1"), b"argument --large: must be >= 0, not -1"),
        (("quickstart", "--mode", "disk"), b"argument --mode: invalid choice: 'disk'"),
        (("tail", "cli", "--seconds", "-1"), b"argument --seconds: must be a number of seconds"),
        (("tail", "cli", "--seconds", "nan"), b"argument --seconds: must be a number of seconds"),
    ],
)
def test_negative_counts_and_durations_rejected(capsysbinary, argv, message):
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    assert message in capsysbinary.readouterr().err


def test_gc_dry_run_shows_the_deleted_logs_pending_space(cli_env, capsysbinary):
    code, out, _ = run(capsysbinary, "gc", "--dry-run", "--json")
    assert orjson.loads(out)["pending"] == []
    code, _, _ = run(capsysbinary, "logs", "delete", "cli")
    assert code == 0
    code, out, _ = run(capsysbinary, "gc", "--dry-run", "--json")
    [pending] = orjson.loads(out)["pending"]
    assert pending["objects"] >= 1 and pending["bytes"] > 0
    assert pending["reason"].startswith("of a deleted log")
    assert pending["due"] > time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    code, out, _ = run(capsysbinary, "gc", "--dry-run")
    text = out.decode()
    assert "pending deletions (not due yet):" in text and "of a deleted log" in text
