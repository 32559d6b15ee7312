"""The ``woodpecker`` command line."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from woodpecker.client import Client
from woodpecker.config import Config, config_table
from woodpecker.errors import WoodpeckerError
from woodpecker.message import LogMessageId


def _cmd_doctor(args: argparse.Namespace, config: Config) -> int:
    from woodpecker.doctor import run_doctor

    report = run_doctor(config, args.config)
    if args.json:
        print(
            orjson.dumps(
                {
                    "ok": report.ok,
                    "error": report.error,
                    "warnings": report.warnings,
                    **report.facts,
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    else:
        for key, value in report.facts.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            print(f"{key:26} {value}")
        for warning in report.warnings:
            print(f"{'warning':26} {warning}")
    if not report.ok:
        print(f"woodpecker doctor: {report.error}", file=sys.stderr)
        return 1
    if not args.json:
        print("doctor: all checks passed")
    return 0


def _cmd_quickstart(args: argparse.Namespace, config: Config) -> int:
    from woodpecker.quickstart import run_quickstart

    if args.mode == "quorum":  # SIGTERM unwinds as Ctrl-C does: the nodes it runs are drained
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return run_quickstart(config, args.small, args.large, mode=args.mode, quiet=args.quiet)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _cmd_logstore(args: argparse.Namespace, config: Config) -> int:
    from workers.logstore import serve

    if args.metrics_port is not None:
        config = Config(env={}, **{**config.overrides(), "metrics_port": args.metrics_port})
    return serve(config, embedded=False)


def _cmd_node(args: argparse.Namespace, config: Config) -> int:
    from workers.node import serve

    flags = {"node_listen": args.listen, "node_data_dir": args.data_dir, "node_id": args.node_id}
    chosen = {key: value for key, value in flags.items() if value is not None}
    if chosen:
        config = Config(env={}, **{**config.overrides(), **chosen})
    return serve(config)


def _cmd_nodes(args: argparse.Namespace, config: Config) -> int:
    from woodpecker import admin

    with Client(config) as client:
        _emit(args, admin.nodes(client))
    return 0


def _emit(args: argparse.Namespace, data: Any) -> None:
    """``--json`` prints the data; otherwise a table (lists) or key/value lines (dicts)."""
    from woodpecker.admin import print_table

    if args.json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    elif isinstance(data, list):
        print_table(data)
    else:
        for key, value in data.items():
            if isinstance(value, list) and value:
                print(f"{key}:")
                print_table(value)
            elif isinstance(value, list):
                print(f"{key:18} (none)")
            else:
                print(f"{key:18} {'' if value is None else value}")


def _cmd_logs(args: argparse.Namespace, config: Config) -> int:
    from woodpecker import admin

    with Client(config) as client:
        if args.action == "list":
            _emit(args, admin.list_logs(client, args.prefix))
        elif args.action == "show":
            _emit(args, admin.show_log(client, args.log))
        else:
            client.delete_log(args.log)
            _emit(args, {"deleted": args.log})
    return 0


def _cmd_segments(args: argparse.Namespace, config: Config) -> int:
    from woodpecker import admin

    with Client(config) as client:
        _emit(args, admin.segments(client, args.log))
    return 0


def _cmd_tail(args: argparse.Namespace, config: Config) -> int:
    from woodpecker import admin

    out = sys.stdout.buffer
    with Client(config) as client:
        start = admin.parse_position(args.start)
        for message in admin.follow(client, args.log, start, stop_after=args.seconds):
            seg, entry = message.id
            if args.json or args.format == "jsonl":
                out.write(orjson.dumps(admin.message_json(seg, entry, message.payload)) + b"\n")
            else:
                out.write(f"{message.id}\t".encode() + message.payload + b"\n")
            out.flush()
    return 0


def _cmd_cat(args: argparse.Namespace, config: Config) -> int:
    from woodpecker import admin

    with Client(config) as client:
        start = admin.parse_position(args.start)
        end = admin.parse_position(args.end) if args.end else None
        if end is not None and not isinstance(end, LogMessageId):
            raise WoodpeckerError("--to takes SEGMENT:ENTRY")
        table = admin.read_range(client, args.log, start, end)
        admin.write_table(table, args.format, sys.stdout.buffer, orjson.dumps)
    return 0


def _cmd_truncate(args: argparse.Namespace, config: Config) -> int:
    position = LogMessageId.parse(args.position)
    with Client(config) as client:
        point = client.open_log(args.log).truncate(position)
        _emit(args, {"log": args.log, "truncated_through": str(point)})
    return 0


def _cmd_gc(args: argparse.Namespace, config: Config) -> int:
    from woodpecker import admin
    from woodpecker.admin import print_table

    with Client(config) as client:
        report = admin.run_gc(client, dry_run=args.dry_run)
    if args.json:
        _emit(args, report)
    else:
        print("dry run: nothing was changed" if args.dry_run else "maintenance pass done")
        print_table(report["actions"])
        print("\npending deletions (not due yet):")
        print_table(report["pending"])
        for error in report["errors"]:
            print(f"error: {error}", file=sys.stderr)
    return 1 if report["errors"] else 0


def _cmd_config(args: argparse.Namespace, config: Config) -> int:
    if args.table and args.json:
        raise WoodpeckerError("--table and --json exclude each other")
    from woodpecker.meta.access import etcd_access

    if args.table:
        print(config_table())
    else:
        # "resolved": what the settings amount to (where etcd and the logstore are reached)
        resolved = {
            "etcd": etcd_access(config),
            "logstore_socket": str(config.logstore_socket),
            "uploads": config.upload_policy(),
        }
        shown = {**config.as_dict(), "resolved": resolved}
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    return 0


def _cmd_bench(args: argparse.Namespace, config: Config) -> int:
    import subprocess
    from pathlib import Path

    import woodpecker

    runner = Path(woodpecker.__file__).resolve().parent.parent / "bench" / "run.py"
    if not runner.is_file():
        print(
            f"woodpecker bench: no benchmark harness at {runner}: bench/ ships with the source "
            "checkout, not the installed package; run it from a clone (pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return 2
    argv = [sys.executable, str(runner), *(["--quick"] if args.quick else [])]
    argv += ["--quiet"] if args.quiet else []
    if args.out:
        argv += ["--out", args.out]
    return subprocess.call(argv)


def _count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text}")
    return value


_POSITION_OPTIONS = ("--from", "--to")


def _join_negative_positions(argv: Sequence[str]) -> list[str]:
    """Let the position check, not argparse, judge a negative position such as ``-1:0``.

    argparse takes ``-1:0`` for an option ("expected one argument"): after ``--from`` or
    ``--to`` it is joined to it (``--from=-1:0``), anywhere else (the position of
    ``truncate``) it goes last, after ``--``.
    """
    out: list[str] = []
    positional: list[str] = []
    for item in argv:
        if item[:1] != "-" or not item[1:2].isdigit() or ":" not in item:
            out.append(item)
        elif out and out[-1] in _POSITION_OPTIONS:
            out[-1] = f"{out[-1]}={item}"
        else:
            positional.append(item)
    return [*out, "--", *positional] if positional else out


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (``| head``): exit quietly, as Unix tools do.

    stdout is pointed at /dev/null so that the interpreter's final flush does not
    raise (and print) the same error again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="woodpecker",
        description="A durable, ordered write-ahead log on object storage with etcd metadata.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML config (default: $WOODPECKER_CONFIG)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    doctor = sub.add_parser("doctor", help="check that etcd and storage are reachable")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=_cmd_doctor)

    quick = sub.add_parser("quickstart", help="write, read back and verify entries end to end")
    quick.add_argument("--small", type=_count, default=100_000, help="1 KiB entries (100000)")
    quick.add_argument("--large", type=_count, default=1_000, help="1 MiB entries (1000)")
    quick.add_argument("--quiet", action="store_true", help="no progress, only the report")
    quick.add_argument(
        "--mode",
        choices=("memory", "quorum"),
        default="memory",
        help="memory (default); quorum: also start 3 local quorum nodes, run the job in both "
        "modes and compare ack latency and PUTs per GB (the nodes are stopped at the end)",
    )
    quick.set_defaults(func=_cmd_quickstart)

    logstore = sub.add_parser("logstore", help="run the standalone uploader pool of this host")
    logstore.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (overrides metrics.port; 0 turns them off)",
    )
    logstore.set_defaults(func=_cmd_logstore)

    node = sub.add_parser("node", help="run a quorum node (QuorumBuffer mode, docs/quorum.md)")
    node.add_argument("--listen", metavar="HOST:PORT", help="overrides node.listen")
    node.add_argument("--data-dir", metavar="DIR", help="overrides node.data_dir")
    node.add_argument("--node-id", metavar="ID", help="overrides node.id")
    node.set_defaults(func=_cmd_node)

    def with_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    logs = sub.add_parser("logs", help="list, show or delete logs")
    logs_sub = logs.add_subparsers(dest="action", required=True)
    with_json(logs_sub.add_parser("list", help="every log")).add_argument(
        "--prefix", default="", help="only names starting with this"
    )
    with_json(logs_sub.add_parser("show", help="one log in detail")).add_argument("log")
    with_json(
        logs_sub.add_parser("delete", help="delete a log (objects go in the background)")
    ).add_argument("log")
    logs.set_defaults(func=_cmd_logs)

    nodes = with_json(sub.add_parser("nodes", help="the registered quorum nodes"))
    nodes.set_defaults(func=_cmd_nodes)

    seg = with_json(sub.add_parser("segments", help="the segments of a log"))
    seg.add_argument("log")
    seg.set_defaults(func=_cmd_segments)

    tail = with_json(sub.add_parser("tail", help="follow a log like tail -f"))
    tail.add_argument("log")
    tail.add_argument(
        "--from", dest="start", default="latest", help="earliest, latest (default) or SEGMENT:ENTRY"
    )
    tail.add_argument("--seconds", type=_seconds, default=None, help="stop after this long")
    tail.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help="text: ID<tab>payload (default); jsonl: one JSON object a line, for piping "
        "(the same objects as cat --format jsonl; --json is the same)",
    )
    tail.set_defaults(func=_cmd_tail)

    cat = sub.add_parser("cat", help="print committed entries")
    cat.add_argument("log")
    cat.add_argument(
        "--from",
        dest="start",
        default="earliest",
        help="earliest (default), latest or SEGMENT:ENTRY",
    )
    cat.add_argument("--to", dest="end", default=None, help="SEGMENT:ENTRY (exclusive)")
    cat.add_argument(
        "--format",
        choices=("raw", "jsonl", "arrow"),
        default="raw",
        help="raw: payload + newline; jsonl; arrow: an Arrow IPC stream",
    )
    cat.set_defaults(func=_cmd_cat)

    trunc = with_json(sub.add_parser("truncate", help="truncate a log through a position"))
    trunc.add_argument("log")
    trunc.add_argument("position", help="SEGMENT:ENTRY (inclusive)")
    trunc.set_defaults(func=_cmd_truncate)

    gc = with_json(sub.add_parser("gc", help="run retention, GC and compaction once"))
    gc.add_argument("--dry-run", action="store_true", help="say what would be deleted and why")
    gc.set_defaults(func=_cmd_gc)

    cfg = with_json(
        sub.add_parser("config", help="print the effective configuration (secrets redacted)")
    )
    cfg.add_argument("--table", action="store_true", help="the reference table of every key")
    cfg.set_defaults(func=_cmd_config)

    bench = sub.add_parser("bench", help="run the benchmark suites (from a source checkout)")
    bench.add_argument("--quick", action="store_true", help="smoke run, about three minutes")
    bench.add_argument("--out", metavar="DIR", help="results folder (default bench/results)")
    bench.add_argument("--quiet", action="store_true", help="no progress, only the report")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(
        _join_negative_positions(sys.argv[1:] if argv is None else argv)
    )
    try:
        config = Config(config_file=args.config)
        return args.func(args, config)
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except (WoodpeckerError, ValueError) as e:
        print(f"woodpecker {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
