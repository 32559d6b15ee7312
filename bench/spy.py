"""Profile one write cell with py-spy: where every process of the pipeline spends its CPU.

    python bench/spy.py local write_async 1024 [--producers 1] [--seconds 8] [--out DIR]
    python bench/spy.py s3 write 1024 --quorum memory     (a QuorumBuffer cell, its nodes too)

py-spy (``pip install py-spy``; root or ptrace rights) records this process and all
of its descendants (``--subprocesses``): the producers, the logstore and its
uploaders, at 100 Hz, non-blocking, idle threads excluded (``--idle`` includes them: where the
wall time of a latency goes). Writes the raw
collapsed stacks and prints, per process role, the functions holding the most
samples: where the time goes "self" (leaf frame) and "inclusive" (anywhere on
the stack), which is what names a bottleneck.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(1, str(BENCH.parent))

import services  # noqa: E402
import suite_quorum  # noqa: E402
import suite_write  # noqa: E402

TOP = 12
_FRAME = re.compile(r"^(?P<fn>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def role(process: str) -> str:
    """Which part of the pipeline a py-spy process header belongs to."""
    if "workers.logstore" in process:
        return "logstore"
    if "workers.uploader" in process:
        return "uploader"
    if "woodpecker node" in process:
        return "node"
    if "forkserver" in process:
        return "producer"  # drivers are forked from the forkserver
    return "bench"


PLUMBING = (
    "threading.py",
    "multiprocessing/",
    "concurrent/futures/",
    "<frozen",
    "<string>",
    "<module>",
)


def _function(frame: str, *, line: bool = False) -> str | None:
    """``fn (file)`` (``fn (file:line)`` with ``line``) of a frame; None for a frame that is
    not code (a wrapped process header)."""
    m = _FRAME.match(frame.strip())
    if not m:
        return None
    where = f"{m['file']}:{m['line']}" if line and m["line"] else m["file"]
    return f"{m['fn']} ({where})"


def _records(raw: Path) -> list[tuple[str, str]]:
    """(stack, count) pairs; a process header may hold newlines (``python -c`` code), so a
    record runs until a line ends in its sample count."""
    records, pending = [], ""
    for line in raw.read_text(errors="replace").splitlines():
        pending += line
        stack, _, count = pending.rpartition(" ")
        if stack and count.isdigit():
            records.append((stack, count))
            pending = ""
        else:
            pending += " "
    return records


def summarize(raw: Path) -> str:
    """Top self lines / inclusive functions per role from py-spy's raw (collapsed) output."""
    total: collections.Counter[str] = collections.Counter()
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    anywhere: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for stack, count in _records(raw):
        frames = stack.split(";")
        owners = [f for f in frames if f.startswith("process ")]
        who = role(owners[-1] if owners else "")
        funcs = [f for f in map(_function, frames) if f is not None]
        if not funcs or any("<frozen importlib" in f for f in funcs):
            continue  # start-up imports are not the measurement
        n = int(count)
        total[who] += n
        own[who][_function(frames[-1], line=True) or funcs[-1]] += n
        for f in set(funcs):
            if not any(p in f for p in PLUMBING):  # thread / process entry frames
                anywhere[who][f] += n
    lines = []
    for who, samples in total.most_common():
        lines.append(f"== {who}: {samples} samples")
        lines.append("   self (line):")
        lines += [f"   {100 * n / samples:5.1f}%  {f}" for f, n in own[who].most_common(TOP)]
        lines.append("   inclusive:")
        lines += [f"   {100 * n / samples:5.1f}%  {f}" for f, n in anywhere[who].most_common(TOP)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backend", choices=("local", "s3"))
    ap.add_argument("api", choices=("write", "write_async", "write_batch"))
    ap.add_argument("entry_size", type=int)
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--out", default=str(BENCH / "results" / "profiles"))
    ap.add_argument(
        "--idle", action="store_true", help="also sample waiting threads (where latency goes)"
    )
    ap.add_argument(
        "--quorum",
        choices=("memory", "disk"),
        help="a QuorumBuffer log on three nodes of this durability (one producer)",
    )
    args = ap.parse_args()
    spy = shutil.which("py-spy")
    if not spy:
        sys.exit("py-spy not found: pip install py-spy")
    services.ensure_services()
    cell = suite_write.WriteCell(args.backend, args.api, args.entry_size, args.producers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"{cell.name.replace(' ', '-')}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    parent = Path(tempfile.mkdtemp(prefix="wp-spy-", dir="/tmp"))
    recorder = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(os.getpid()),
            "--subprocesses",
            "--nonblocking",
            "--rate",
            "100",
            *(["--idle"] if args.idle else []),
            "--format",
            "raw",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)  # let py-spy attach before the pipeline starts
        if args.quorum:
            settings = {"buffer_mode": "quorum", "quorum_durability": args.quorum}
            result = suite_quorum.write_cell(
                parent, args.backend, args.api, args.entry_size, args.seconds, settings
            )
        else:
            result = suite_write.run(cell, parent, args.seconds)
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            recorder.wait(60)
        except subprocess.TimeoutExpired:
            recorder.kill()
        shutil.rmtree(parent, ignore_errors=True)
    print(
        f"{cell.name}: {result['mb_s']} MB/s, {result['entries_s']:,} entries/s, "
        f"latency {result['latency']}"
    )
    if not raw.exists():
        err = recorder.stderr.read().decode(errors="replace") if recorder.stderr else ""
        sys.exit(f"py-spy wrote no profile: {err[-500:]}")
    print(f"raw stacks: {raw}")
    print(summarize(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
