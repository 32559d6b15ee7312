"""The throughput benchmarks' ratio gate (bench/ratio_gate.py): what it fails and what it lets
pass. Loaded by path: bench/ is not a package and its module names are generic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

GATE_PATH = Path(__file__).resolve().parents[2] / "bench" / "ratio_gate.py"
spec = importlib.util.spec_from_file_location("bench_ratio_gate", GATE_PATH)
assert spec is not None and spec.loader is not None
gate = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = gate  # dataclasses look their module up
spec.loader.exec_module(gate)

BASELINE = {
    "disk-bound": (0.150, {"pct_of_ceiling": 213.9}),
    "cpu-bound": (0.500, {"pct_of_ceiling": 30.0}),
}


def verdicts(now: dict[str, tuple[float, dict]]) -> dict[str, object]:
    return {v.name: v for v in gate.judge(now, BASELINE, 50.0)}


def test_a_slower_machine_is_not_a_regression() -> None:
    # measured on unchanged code: the disk was 2.8x slower, and so was its ceiling
    got = verdicts({"disk-bound": (0.420, {"pct_of_ceiling": 172.7})})
    assert got["disk-bound"].raw_slowdown > 150
    assert not got["disk-bound"].failed


def test_a_slower_pipeline_fails_the_gate() -> None:
    got = verdicts(
        {
            "disk-bound": (0.300, {"pct_of_ceiling": 100.0}),
            "cpu-bound": (1.100, {"pct_of_ceiling": 13.0}),
        }
    )
    assert got["disk-bound"].failed and got["cpu-bound"].failed
    assert "REGRESSED" in got["cpu-bound"].line()


def test_one_signal_alone_does_not_fail() -> None:
    got = verdicts(
        {
            "disk-bound": (0.160, {"pct_of_ceiling": 50.0}),  # ratio only
            "cpu-bound": (0.900, {"pct_of_ceiling": 29.0}),  # raw time only
        }
    )
    assert not got["disk-bound"].failed and not got["cpu-bound"].failed


def test_benchmarks_without_a_ratio_or_a_baseline_are_not_judged() -> None:
    got = verdicts({"new": (0.1, {"pct_of_ceiling": 10.0}), "cpu-bound": (9.0, {})})
    assert got == {}
