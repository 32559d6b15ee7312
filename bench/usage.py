"""Peak RSS and CPU seconds of the processes behind a measurement (psutil).

A background thread samples every process of each role (client, logstore,
uploaders, a peer server) every 100 ms: the largest RSS seen is the peak, and
the CPU time used between ``start()`` and ``stop()`` is the cost. RSS counts
the shared-memory pages a process touched, so an arena mapped by a producer and
its uploaders shows up in both: the peaks are per process, not additive.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import psutil

SAMPLE_EVERY = 0.1

Roles = Callable[[], dict[str, list[psutil.Process]]]


class UsageMonitor:
    """Samples the processes ``roles()`` names (re-asked each tick: children come and go)."""

    def __init__(self, roles: Roles) -> None:
        self._roles = roles
        self._peak_rss: dict[str, int] = {}
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-usage", daemon=True)

    def start(self) -> UsageMonitor:
        self._sample()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self._sample()

    def _sample(self) -> None:
        with contextlib.suppress(Exception):
            for role, procs in self._roles().items():
                for proc in procs:
                    try:
                        with proc.oneshot():
                            rss = proc.memory_info().rss
                            times = proc.cpu_times()
                    except psutil.Error:
                        continue
                    cpu = times.user + times.system
                    self._peak_rss[role] = max(self._peak_rss.get(role, 0), rss)
                    self._cpu_first.setdefault(proc.pid, cpu)
                    self._cpu_last[proc.pid] = (role, cpu)

    def stop(self) -> dict[str, dict[str, Any]]:
        """Per role: peak RSS of one process (MiB), CPU seconds used, process count."""
        self._sample()
        self._stop.set()
        self._thread.join(2)
        out: dict[str, dict[str, Any]] = {}
        for pid, (role, cpu) in self._cpu_last.items():
            entry = out.setdefault(role, {"processes": 0, "cpu_s": 0.0, "peak_rss_mib": 0.0})
            entry["processes"] += 1
            entry["cpu_s"] += cpu - self._cpu_first.get(pid, cpu)
        for role, entry in out.items():
            entry["cpu_s"] = round(entry["cpu_s"], 3)
            entry["peak_rss_mib"] = round(self._peak_rss.get(role, 0) / 2**20, 1)
        return out


def per_gb(usage: dict[str, dict[str, Any]], nbytes: int) -> dict[str, dict[str, Any]]:
    """Adds ``cpu_s_per_gb`` to every role, for ``nbytes`` of payload moved."""
    gb = nbytes / 1e9
    for entry in usage.values():
        entry["cpu_s_per_gb"] = round(entry["cpu_s"] / gb, 2) if gb > 0 else None
    return usage
