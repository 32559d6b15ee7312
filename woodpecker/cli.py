"""The ``woodpecker`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import orjson

from woodpecker.config import Config, config_table
from woodpecker.errors import WoodpeckerError


def _cmd_doctor(args: argparse.Namespace, config: Config) -> int:
    from woodpecker.doctor import run_doctor

    report = run_doctor(config, args.config)
    if args.json:
        print(
            orjson.dumps(
                {"ok": report.ok, "error": report.error, **report.facts}, option=orjson.OPT_INDENT_2
            ).decode()
        )
    else:
        for key, value in report.facts.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            print(f"{key:26} {value}")
    if not report.ok:
        print(f"woodpecker doctor: {report.error}", file=sys.stderr)
        return 1
    if not args.json:
        print("doctor: all checks passed")
    return 0


def _cmd_quickstart(args: argparse.Namespace, config: Config) -> int:
    from woodpecker.quickstart import run_quickstart

    return run_quickstart(config, args.small, args.large)


def _cmd_logstore(args: argparse.Namespace, config: Config) -> int:
    from workers.logstore import serve

    return serve(config, embedded=False)


def _cmd_config(args: argparse.Namespace, config: Config) -> int:
    if args.table:
        print(config_table())
    else:
        print(orjson.dumps(config.as_dict(), option=orjson.OPT_INDENT_2).decode())
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
    if args.out:
        argv += ["--out", args.out]
    return subprocess.call(argv)


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
    quick.add_argument("--small", type=int, default=100_000, help="1 KiB entries (100000)")
    quick.add_argument("--large", type=int, default=1_000, help="1 MiB entries (1000)")
    quick.set_defaults(func=_cmd_quickstart)

    logstore = sub.add_parser("logstore", help="run the standalone uploader pool of this host")
    logstore.set_defaults(func=_cmd_logstore)

    cfg = sub.add_parser("config", help="print the effective configuration (secrets redacted)")
    cfg.add_argument("--table", action="store_true", help="the reference table of every key")
    cfg.set_defaults(func=_cmd_config)

    bench = sub.add_parser("bench", help="run the benchmark suites (from a source checkout)")
    bench.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    bench.add_argument("--out", metavar="DIR", help="results folder (default bench/results)")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config(config_file=args.config)
        return args.func(args, config)
    except WoodpeckerError as e:
        print(f"woodpecker {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
