"""Bounded retries with exponential backoff and a deadline, for any remote backend.

Invariant 6 (*bounded*) in one place: a failing call is retried only while it
fails transiently, at most ``policy.max_attempts`` times and not after
``policy.deadline`` seconds; then the caller's own "unavailable" error is raised,
chained to the last failure. The storage and the etcd layers both use it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from woodpecker.config import RetryConfig

T = TypeVar("T")

log = logging.getLogger(__name__)


def call_with_retry(
    fn: Callable[[], T],
    *,
    policy: RetryConfig,
    is_transient: Callable[[BaseException], bool],
    on_give_up: Callable[[BaseException], Exception],
    what: str,
) -> T:
    """Return ``fn()``, retrying transient failures within ``policy``'s bounds.

    A failure that ``is_transient`` rejects propagates unchanged at once. When
    the attempts or the deadline run out, ``on_give_up(last_error)`` is raised
    from the last error, with a note saying how many attempts were made. The
    worst-case duration is ``policy.deadline`` plus one call's own timeout.
    ``what`` names the call in the log lines (e.g. ``"s3 put 'a/b'"``).
    """
    start = time.monotonic()
    delay = policy.backoff_initial
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            remaining = policy.deadline - (time.monotonic() - start)
            if attempt >= policy.max_attempts or remaining <= 0:
                error = on_give_up(e)
                error.add_note(
                    f"{what}: gave up after {attempt} attempt(s) in {time.monotonic() - start:.2f}s"
                )
                raise error from e
            # Equal jitter: at least half the nominal backoff, so a herd of
            # clients spreads out but none retries immediately.
            pause = min(random.uniform(delay / 2, delay), remaining)
            log.debug("%s failed (attempt %d, retrying in %.3fs): %r", what, attempt, pause, e)
            time.sleep(pause)
            delay = min(delay * 2, policy.backoff_max)
