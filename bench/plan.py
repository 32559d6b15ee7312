"""What a benchmark run measures: the steps the suites contribute, and what they share.

Each suite (``suite_*.py``) owns its plan: its ``steps`` function says which cells it
measures for a run and how long each takes (for the progress bar's ETA); ``run.py``
only orders the suites.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunSettings:
    """The settings every step of one run shares."""

    quick: bool  # the CI smoke run
    parent: Path  # scratch root of the run (short, for AF_UNIX paths)
    duration: float  # seconds per timed loop
    progress: Callable[[str], None]  # names the sub-step being measured
    backends: tuple[str, ...] = ("local", "s3")


@dataclass
class Step:
    """One measurement of a run."""

    label: str
    estimate: float  # seconds, for the ETA
    section: str  # where the result goes in the report
    run: Callable[[], Any]
    ident: dict[str, Any]  # what identifies the cell when it failed
    writes: bool = False  # a write or targets step: etcd's growth is measured around it
