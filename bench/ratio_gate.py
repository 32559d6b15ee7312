"""The ratio gate: a compared run fails when throughput fell relative to its own ceiling.

pytest-benchmark's ``--benchmark-compare-fail`` compares raw times with the saved
baseline. On a shared machine raw times move with the load, so a slower run may be a
busier machine rather than a slower pipeline, and a real slowdown can hide in a quieter
one. The throughput runs (``test_throughput.py``) also store ``pct_of_ceiling`` in
``extra_info``: Woodpecker's rate over the raw backend's, measured in the same minutes.
Whenever a run is compared with ``--benchmark-compare-fail``, this gate also fails it
(exit status 1) when a benchmark's ``pct_of_ceiling`` is more than
``--benchmark-ratio-fail`` percent (default ``DEFAULT_THRESHOLD``) below the baseline's.
Benchmarks without the figure, or absent from the baseline, are not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

DEFAULT_THRESHOLD = 65.0  # percent; docs/benchmarks.md says why


@dataclass(frozen=True)
class Verdict:
    name: str
    baseline: float
    now: float
    threshold: float

    @property
    def change(self) -> float:
        """Percent change of the ratio (negative: worse than the baseline)."""
        return 100 * (self.now / self.baseline - 1)

    @property
    def failed(self) -> bool:
        return self.change < -self.threshold

    def line(self) -> str:
        mark = "REGRESSED" if self.failed else "ok"
        return (
            f"{self.name}: {self.baseline:.1f}% -> {self.now:.1f}% of ceiling "
            f"({self.change:+.0f}%; fails below -{self.threshold:g}%) {mark}"
        )


def judge(
    current: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]], threshold: float
) -> list[Verdict]:
    """A verdict for every benchmark (by full name -> extra_info) that has ``pct_of_ceiling``
    both now and in the baseline."""
    verdicts = []
    for name, info in sorted(current.items()):
        then = baseline.get(name, {}).get("pct_of_ceiling")
        now = info.get("pct_of_ceiling")
        if then and now is not None:
            verdicts.append(Verdict(name, float(then), float(now), threshold))
    return verdicts


def add_option(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark-ratio-fail",
        type=float,
        default=None,
        metavar="PCT",
        help="with --benchmark-compare: fail when a benchmark's extra_info pct_of_ceiling "
        f"is more than PCT percent below the baseline's (default {DEFAULT_THRESHOLD:g} when "
        "--benchmark-compare-fail is given)",
    )


class RatioGate:
    """The plugin: judges at the end of a compared session, reports in the terminal summary
    (always when comparing), fails the run only when gating."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.verdicts: list[Verdict] = []
        self.gating = False

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        bench = getattr(self.config, "_benchmarksession", None)
        if bench is None or not bench.compared_mapping:
            return
        given = self.config.getoption("benchmark_ratio_fail")
        self.gating = given is not None or bool(bench.compare_fail)
        current = {b.fullname: b.extra_info for b in bench.benchmarks if b}
        baseline = {
            name: saved.get("extra_info", {})
            for mapping in bench.compared_mapping.values()
            for name, saved in mapping.items()
        }
        threshold = DEFAULT_THRESHOLD if given is None else given
        self.verdicts = judge(current, baseline, threshold)
        if self.gating and any(v.failed for v in self.verdicts):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.verdicts:
            return
        how = "gate" if self.gating else "not gating: no --benchmark-compare-fail"
        terminalreporter.section(f"throughput relative to the same-session ceiling ({how})")
        for verdict in self.verdicts:
            terminalreporter.write_line(verdict.line(), red=verdict.failed)
        if self.gating and any(v.failed for v in self.verdicts):
            terminalreporter.write_line("Throughput relative to the ceiling has regressed.")
