"""A target judged in the run that measured it: met, or missed by how much.

Targets are ratios to a floor or ceiling measured in the same run, or counts that
do not depend on the machine's speed (PUTs per GB), so that a verdict holds on a
noisy shared machine. Every suite that states targets reports them as ``verdict``
dicts, which the report prints in one table.
"""

from __future__ import annotations

from typing import Any


def by_how_much(value: float, goal: float, higher_is_better: bool) -> tuple[bool, str]:
    """Whether ``value`` meets ``goal``, and the margin in words (``0.82x the goal``)."""
    ratio = value / goal if goal else float("inf")
    met = value >= goal if higher_is_better else value <= goal
    if met:
        return True, f"{ratio:.2f}x the goal"
    if higher_is_better:
        return False, f"{100 * (1 - ratio):.0f}% short ({ratio:.2f}x)"
    return False, f"{100 * (ratio - 1):.0f}% over ({ratio:.2f}x)"


def verdict(
    target: str, value: float, goal: float, floor: str, *, higher_is_better: bool = True
) -> dict[str, Any]:
    """One judged target; ``floor`` names what the goal was derived from in this run."""
    met, by = by_how_much(value, goal, higher_is_better)
    return {
        "target": target,
        "value": value,
        "goal": goal,
        "floor": floor,
        "status": "met" if met else "missed",
        "by": by,
    }
