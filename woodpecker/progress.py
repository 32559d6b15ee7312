"""Progress of a long command on stderr, fit for a terminal and for a log file alike.

On a terminal it is a ``tqdm`` bar redrawn in place. Anywhere else (a file, a
pipe, CI) a redrawn bar would leave hundreds of carriage-return frames, so it
prints a plain line at each tenth of the way and at each new step instead.
``quiet`` prints nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

PLAIN_LINES = 10  # lines a plain (non-terminal) progress prints over the whole task


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """``total`` units of work under a label; ``update`` as they are done, ``close`` at the end."""

    def __init__(
        self,
        label: str,
        total: float,
        *,
        unit: str = "it",
        quiet: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0.0
        self.start = time.monotonic()
        self.stream = sys.stderr if stream is None else stream
        self.quiet = quiet
        self._next_line = 0  # the next tenth a plain line is due at
        self._bar: tqdm | None = None
        if not quiet and self.stream.isatty():
            self._bar = tqdm(
                total=total, desc=label, unit=unit, file=self.stream, dynamic_ncols=True
            )

    def update(self, n: float = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif not self.quiet and self.total:
            tenth = int(PLAIN_LINES * min(self.done, self.total) / self.total)
            if tenth >= self._next_line:
                self._next_line = tenth + 1
                self._line()

    def step(self, label: str) -> None:
        """A new step begins: shown in the bar, or as a plain line."""
        self.label = label
        if self._bar is not None:
            self._bar.set_description_str(label[:60])
        elif not self.quiet:
            self._line()

    def note(self, text: str) -> None:
        """A message that stays (a failure), printed above the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _line(self) -> None:
        elapsed = time.monotonic() - self.start
        share = min(self.done / self.total, 1.0) if self.total else 1.0
        left = f", ~{_clock(elapsed / share - elapsed)} left" if 0 < share < 1 else ""
        self.stream.write(
            f"{self.label}: {share:4.0%} ({self.done:g}/{self.total:g} {self.unit}, "
            f"{_clock(elapsed)}{left})\n"
        )
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
