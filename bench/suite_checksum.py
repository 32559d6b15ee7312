"""S3 1 MiB ``write_async`` against the raw PUT ceiling, per ``s3.payload_checksum``.

The SHA-256 that SigV4 signs into every PUT is CPU the uploaders spend per byte;
``crc32c`` sends ``UNSIGNED-PAYLOAD`` with a CRC header instead (docs/security.md).
Each option is measured like for like: the raw PUT ceiling (block-sized objects,
as wide as the uploaders, through a store with that option) right before one
producer's 1 MiB ``write_async`` cell with that option; the target is the cell at
>= 90 % of that ceiling. The uploaders' CPU seconds per GB show what the option saves.
"""

from __future__ import annotations

import statistics
from typing import Any

import drivers
import harness
import suite_targets
from goals import verdict
from plan import RunSettings, Step

MiB = 1 << 20
OPTIONS = ("sha256", "crc32c")
MIN_PCT_OF_PUT = 90.0
ROUNDS = 3  # one when quick; the verdict uses the median ratio


def run_round(settings: RunSettings, option: str) -> dict[str, Any]:
    """The ceiling with ``option``, then the 1 MiB cell with it; their ratio."""
    overrides = {"s3_payload_checksum": option}
    raw = suite_targets.ceiling(
        "s3", settings.parent, settings.duration, True, settings.progress, **overrides
    )
    write = drivers.WriteJob({}, "bench", "write_async", MiB, settings.duration)
    results, _, _ = harness.run_cell(
        "s3", settings.parent, [write], timeout=settings.duration + 150, **overrides
    )
    cell = harness.summarize(results)
    uploaders = cell["usage"].get("uploaders", {})
    return {
        "option": option,
        "ceiling_mb_s": raw["mb_s"],
        "mb_s": cell["mb_s"],
        "pct_of_ceiling": round(100 * cell["mb_s"] / raw["mb_s"], 1),
        "uploader_cpu_s_per_gb": uploaders.get("cpu_s_per_gb"),
        "usage": cell["usage"],
    }


def judge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One verdict per option from the median of its rounds."""
    verdicts = []
    for option in OPTIONS:
        mine = [r for r in rounds if r.get("option") == option and "error" not in r]
        if not mine:
            continue
        pct = statistics.median(r["pct_of_ceiling"] for r in mine)
        ceilings = ", ".join(f"{r['ceiling_mb_s']:.0f}" for r in mine)
        cpu = [r["uploader_cpu_s_per_gb"] for r in mine if r["uploader_cpu_s_per_gb"]]
        floor = f"raw PUT with {option}: {ceilings} MB/s" + (
            f"; uploaders {statistics.median(cpu):.1f} CPU s/GB" if cpu else ""
        )
        verdicts.append(
            verdict(
                f"S3 1 MiB write_async, s3.payload_checksum={option}: "
                f">= {MIN_PCT_OF_PUT:.0f}% of raw PUT",
                pct,
                MIN_PCT_OF_PUT,
                floor,
            )
        )
    return {"verdicts": verdicts, "rounds": rounds}


def steps(settings: RunSettings) -> list[Step]:
    """Rounds alternate the options, so that both meet the same moments of the machine."""
    rounds = 1 if settings.quick else ROUNDS
    return [
        Step(
            f"checksum round {n} {option}",
            2 * settings.duration + 4,
            "checksum_rounds",
            lambda o=option: run_round(settings, o),
            {"option": option, "round": n},
            writes=True,
        )
        for n in range(1, rounds + 1)
        for option in OPTIONS
    ]
