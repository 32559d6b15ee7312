"""The ratio gate: a compared run fails when a benchmark is slower both in raw time and
relative to the ceiling measured in its own minutes.

pytest-benchmark's ``--benchmark-compare-fail`` compares raw times with the saved
baseline. On a shared machine raw times move with the load: unchanged runs here differed
by up to 2.8x in the median round of a disk-bound workload, because the disk itself was
slower. The throughput runs (``test_throughput.py``) also store
``pct_of_ceiling`` in ``extra_info``: Woodpecker's rate over the raw backend's, measured
right after each round for as long as it. A slower pipeline shows in both figures; a
slower machine mostly in the raw one. So whenever a run is compared with
``--benchmark-compare-fail``, this gate also fails it (exit status 1) when a benchmark's
median round is more than ``--benchmark-ratio-fail`` percent (default
``DEFAULT_THRESHOLD``) slower than the baseline's **and** its ``pct_of_ceiling`` fell by
the same factor. Benchmarks without the figure, or absent from the baseline, are not
judged; pytest-benchmark's own check stays the backstop for gross raw slowdowns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

DEFAULT_THRESHOLD = 75.0  # percent slower; docs/benchmarks.md says why


@dataclass(frozen=True)
class Verdict:
    name: str
    median_then: float  # seconds per round
    median_now: float
    ratio_then: float  # pct_of_ceiling
    ratio_now: float
    threshold: float  # percent slower that fails

    @property
    def raw_slowdown(self) -> float:
        """Percent more time per round than the baseline (negative: faster)."""
        return 100 * (self.median_now / self.median_then - 1)

    @property
    def ratio_slowdown(self) -> float:
        """The same, measured against the same-session ceiling."""
        return 100 * (self.ratio_then / self.ratio_now - 1) if self.ratio_now > 0 else float("inf")

    @property
    def failed(self) -> bool:
        return self.raw_slowdown > self.threshold and self.ratio_slowdown > self.threshold

    def line(self) -> str:
        mark = "REGRESSED" if self.failed else "ok"
        return (
            f"{self.name}: median {self.raw_slowdown:+.0f}%, relative to the ceiling "
            f"{self.ratio_slowdown:+.0f}% ({self.ratio_then:.1f}% -> {self.ratio_now:.1f}% of "
            f"ceiling; fails when both are slower by > {self.threshold:g}%) {mark}"
        )


def judge(
    current: dict[str, tuple[float, dict[str, Any]]],
    baseline: dict[str, tuple[float, dict[str, Any]]],
    threshold: float,
) -> list[Verdict]:
    """A verdict for every benchmark (full name -> (median seconds, extra_info)) that has
    ``pct_of_ceiling`` both now and in the baseline."""
    verdicts = []
    for name, (median_now, info) in sorted(current.items()):
        median_then, saved = baseline.get(name, (0.0, {}))
        then, now = saved.get("pct_of_ceiling"), info.get("pct_of_ceiling")
        if median_then and then and now is not None:
            verdicts.append(
                Verdict(name, median_then, median_now, float(then), float(now), threshold)
            )
    return verdicts


def add_option(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark-ratio-fail",
        type=float,
        default=None,
        metavar="PCT",
        help="with --benchmark-compare: fail when a benchmark's median round is more than PCT "
        "percent slower than the baseline's both in time and relative to its extra_info "
        f"pct_of_ceiling (default {DEFAULT_THRESHOLD:g} when --benchmark-compare-fail is given)",
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
        current = {b.fullname: (b.stats.median, b.extra_info) for b in bench.benchmarks if b}
        baseline = {
            name: (saved["stats"]["median"], saved.get("extra_info", {}))
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
            terminalreporter.write_line(
                "Throughput has regressed, in time and against the ceiling."
            )
