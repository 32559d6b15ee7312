"""How long the reliability tests run: short in the normal suite, long for ``scripts/chaos --long``.

The long mode is chosen by ``WOODPECKER_CHAOS_LONG=1`` (``--chaos-long`` sets it), read
at import so that hypothesis settings, fixed when a test module is imported, follow it.
"""

from __future__ import annotations

import os


def long_run() -> bool:
    return os.environ.get("WOODPECKER_CHAOS_LONG", "") not in ("", "0")


def pick(short: int, long: int) -> int:
    """``short`` iterations in the normal suite, ``long`` in the long run."""
    return long if long_run() else short
