"""Compaction of etcd's revision history, so that overwritten values do not fill its quota.

Every commit rewrites a segment record and puts a block record; etcd keeps each
overwritten or deleted value as history until the history is compacted. Left
alone, history alone reaches etcd's default 2 GiB quota within hours of steady
writes (``docs/metadata.md``). Maintenance therefore compacts it: each pass
samples etcd's current revision, and compacts to the newest sample that is at
least ``etcd.history_retention`` seconds old.

Who relies on history: nothing reads at a past revision; watches start at the
current revision, and a watch that falls behind a compaction is cancelled by
etcd and re-armed by its reader, which then re-reads a fresh snapshot
(``woodpecker.meta.readers.CommitWatch``). The retention only bounds how far a
watch may lag before that happens.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from woodpecker.errors import MetadataUnavailableError
from woodpecker.meta.space import current_revision
from woodpecker.meta.store import MetaStore

log = logging.getLogger("woodpecker.etcd_history")


class HistoryCompactor:
    """Compacts history older than ``retention`` seconds, by revisions sampled over time."""

    def __init__(self, meta: MetaStore, retention: float) -> None:
        self._meta = meta
        self._retention = retention
        self._samples: deque[tuple[float, int]] = deque()  # (time, revision), oldest first
        self.compacted = 0  # the last revision compacted to from here

    def run(self) -> int | None:
        """Sample the revision; compact if a sample is old enough; the revision compacted to."""
        if self._retention <= 0:
            return None
        now = time.monotonic()
        self._samples.append((now, current_revision(self._meta)))
        target = None
        while self._samples and now - self._samples[0][0] >= self._retention:
            target = self._samples.popleft()[1]
        if target is None or target <= self.compacted:
            return None
        try:
            self._meta.etcd.call("compact", lambda c: c.compact(target))
        except MetadataUnavailableError as e:
            if "compacted" not in str(e):  # another logstore compacted further: fine
                raise
        self.compacted = target
        log.debug("etcd history compacted to revision %d", target)
        return target
