"""A progress bar on stderr: steps done, elapsed time, estimated time left, current step.

On a terminal the bar redraws in place; otherwise (CI logs) it prints one line per step.
"""

from __future__ import annotations

import sys
import time

WIDTH = 24


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Tracks planned steps with their estimated seconds; the ETA scales with reality."""

    def __init__(self, estimates: list[float]) -> None:
        self.estimates = estimates
        self.done = 0
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def _left(self) -> float:
        spent = time.monotonic() - self.start
        planned_done = sum(self.estimates[: self.done])
        pace = spent / planned_done if planned_done else 1.0
        return pace * sum(self.estimates[self.done :])

    def step(self, label: str) -> None:
        """Announce the step about to run."""
        total = len(self.estimates)
        filled = WIDTH * self.done // max(1, total)
        bar = "#" * filled + "-" * (WIDTH - filled)
        line = (
            f"[{bar}] {self.done}/{total} {_clock(time.monotonic() - self.start)} "
            f"~{_clock(self._left())} left  {label}"
        )
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:160])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish_step(self) -> None:
        self.done += 1

    def note(self, text: str) -> None:
        """A message that stays (failures), printed above the bar."""
        sys.stderr.write(("\r\033[K" if self.tty else "") + text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()
