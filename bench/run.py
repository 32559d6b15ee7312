"""Run the benchmark suites and write ``<out>/<timestamp>/report.json``, ``report.md``, plots.

    scripts/bench [--quick] [--out DIR] [--only SUITE ...]      (or: woodpecker bench)

Uses the etcd and S3 endpoints in ``WOODPECKER_*``, or starts the dev services
with ``scripts/services start``. Every measurement is independent, time-boxed and
cleaned up; one that fails is recorded in the report and the run goes on. Exit
status 1 when any measurement failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # this checkout's woodpecker, also in spawned processes

import report  # noqa: E402
import services  # noqa: E402
import suite_ceilings  # noqa: E402
import suite_checksum  # noqa: E402
import suite_cost  # noqa: E402
import suite_nats  # noqa: E402
import suite_quorum  # noqa: E402
import suite_read  # noqa: E402
import suite_sync  # noqa: E402
import suite_targets  # noqa: E402
import suite_write  # noqa: E402
from etcd_usage import EtcdGrowth  # noqa: E402
from plan import RunSettings, Step  # noqa: E402

from woodpecker.config import Config  # noqa: E402
from woodpecker.progress import Progress  # noqa: E402

PER_BACKEND = {"ceilings": suite_ceilings, "write": suite_write, "read": suite_read}
ONCE = {
    "targets": suite_targets,
    "checksum": suite_checksum,
    "sync": suite_sync,
    "nats": suite_nats,
    "cost": suite_cost,
    "quorum": suite_quorum,
}
SUITES = (*PER_BACKEND, *ONCE)


def build_plan(settings: RunSettings, only: set[str]) -> list[Step]:
    """The steps of the chosen suites, each backend's ceiling measured right before the
    Woodpecker figures compared with it."""
    plan = [
        step
        for backend in settings.backends
        for name, suite in PER_BACKEND.items()
        if name in only
        for step in suite.steps(settings, backend)
    ]
    return plan + [
        step for name, suite in ONCE.items() if name in only for step in suite.steps(settings)
    ]


def machine(parent: Path) -> dict[str, Any]:
    """What the numbers were measured on."""
    import psutil

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    disk = "unknown disk"
    best = ""
    for part in psutil.disk_partitions(all=False):
        if str(parent).startswith(part.mountpoint) and len(part.mountpoint) > len(best):
            best = part.mountpoint
            dev = Path(part.device).name
            rotational = Path(f"/sys/block/{dev}/queue/rotational")
            kind = ""
            if rotational.exists():
                kind = "rotational" if rotational.read_text().strip() == "1" else "non-rotational"
            disk = f"{part.device} ({part.fstype}, {kind or 'type unknown'}) at {part.mountpoint}"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "disk": disk,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def git_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = " + uncommitted changes" if git("status", "--porcelain") else ""
        return f"{head}{dirty}" if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pipeline_settings() -> str:
    c = Config(env={})
    return (
        f"uploader.processes={c.uploader.processes}, uploader.max_inflight="
        f"{c.uploader.max_inflight}, uploader.max_block_bytes={c.uploader.max_block_bytes}, "
        f"writer.max_batch_bytes={c.writer.max_batch_bytes}, writer.linger_ms="
        f"{c.writer.linger_ms}, writer.arena_size={c.writer.arena_size}, "
        f"reader.read_ahead={c.reader.read_ahead} (defaults)"
    )


def _store(results: dict[str, Any], section: str, value: Any) -> None:
    if "." in section:
        top, key = section.split(".", 1)
        results.setdefault(top, {})[key] = value
    else:
        results.setdefault(section, []).append(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke run, about three minutes")
    ap.add_argument("--out", default=str(BENCH / "results"), help="results folder (bench/results)")
    ap.add_argument("--only", nargs="+", choices=SUITES, help="run only these suites")
    ap.add_argument("--duration", type=float, help="seconds per timed loop (3, quick 0.75)")
    ap.add_argument(
        "--quiet", action="store_true", help="no progress, only failures and the report"
    )
    args = ap.parse_args(argv)
    duration = args.duration or (0.75 if args.quick else 3.0)
    only = set(args.only or SUITES)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / stamp
    out.mkdir(parents=True, exist_ok=True)
    where = services.ensure_services()
    parent = Path(tempfile.mkdtemp(prefix="wp-bench-", dir="/tmp"))  # short AF_UNIX paths
    results: dict[str, Any] = {
        "run": {
            "started": datetime.now().isoformat(timespec="seconds"),
            "mode": ("quick" if args.quick else "full")
            + (f", only {' '.join(args.only)}" if args.only else ""),
            "command": " ".join(["scripts/bench", *(argv if argv is not None else sys.argv[1:])]),
            "duration_s": duration,
            "machine": machine(parent),
            "load_before": round(os.getloadavg()[0], 2),
            "services": where,
            "pipeline": pipeline_settings(),
            "git": git_state(),
        },
        "errors": [],
    }
    bar: Progress | None = None
    etcd: EtcdGrowth | None = None
    try:
        etcd = EtcdGrowth(os.environ["WOODPECKER_ETCD_ENDPOINTS"].split(",")[0])
        settings = RunSettings(args.quick, parent, duration, lambda s: bar and bar.step(s))
        steps = build_plan(settings, only)
        # the bar counts estimated seconds, so its ETA scales with the measured pace
        bar = Progress("bench", sum(s.estimate for s in steps), unit="est. s", quiet=args.quiet)
        loads = results["run"]["load_at_steps"] = []
        for step in steps:
            bar.step(step.label)
            loads.append(round(os.getloadavg()[0], 2))
            began = time.monotonic()
            try:
                value = etcd.around(step.run) if step.writes else step.run()
                value["step_s"] = round(time.monotonic() - began, 1)
                _store(results, step.section, value)
            except Exception as e:
                message = f"{type(e).__name__}: {e}"
                bar.note(f"FAILED {step.label}: {message.splitlines()[0][:200]}")
                results["errors"].append(
                    {"step": step.label, "error": message, "traceback": traceback.format_exc()}
                )
                _store(results, step.section, {**step.ident, "error": message})
            bar.update(step.estimate)
    except KeyboardInterrupt:
        results["errors"].append({"step": "run", "error": "interrupted"})
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(parent, ignore_errors=True)
        run = results["run"]
        run["load_after"] = round(os.getloadavg()[0], 2)
        run["elapsed_s"] = round(time.monotonic() - (bar.start if bar else time.monotonic()), 1)
        try:
            results["etcd"] = etcd.summary() if etcd else {"error": "not measured"}
        except Exception as e:
            results["errors"].append({"step": "etcd status", "error": f"{type(e).__name__}: {e}"})
        report.add_ratios(results)
        results["targets"] = suite_targets.judge(results.get("target_rounds", []))
        if "checksum_rounds" in results:
            results["checksum"] = suite_checksum.judge(results["checksum_rounds"])
        try:
            import plots  # matplotlib: the bench extra

            run["plots"] = plots.draw_all(results, out)
        except Exception as e:
            results["errors"].append({"step": "plots", "error": f"{type(e).__name__}: {e}"})
        report.write_json(results, out / "report.json")
        (out / "report.md").write_text(report.render(results))
        for line in report.verdict_lines(results):
            print(line)
        print(f"report: {out / 'report.md'}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
