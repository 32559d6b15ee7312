"""What readers keep in etcd: a lease-bound registration, and a watch on the commit point.

**Registration.** An open reader holds ``<p>/readers/<log_id>/<reader_id>``
(a ``ReaderRecord``: its name and position), bound to its own lease. A
keepalive thread refreshes the lease every ``etcd.lease_ttl / 3`` for as long
as the reader is open, however long it idles, and re-registers with a new
lease if the old one was lost (etcd unreachable for a whole TTL). The position
is rewritten when the reader enters a new segment and at most every
``POSITION_INTERVAL`` seconds otherwise, so it may lag the reader but is never
ahead of it. Garbage collection keeps every segment at or after the lowest
registered segment (``live_reader_positions``). Closing the reader revokes the
lease, which deletes the key; a crashed reader's key expires after one TTL.

**Commit watch.** Every commit rewrites the segment record with its new LAC,
and creating, sealing or deleting a segment changes a key under the same
prefix, so a watch on ``<p>/segments/<log_id>/`` fires whenever readers may
have something new. A second watch on ``<p>/ids/<log_id>`` reports deletion of
the log. Waiters compare a version counter bumped by every notification, so a
notification that arrives between a metadata read and the wait is not lost.
The watch starts just after the revision of the reader's last metadata read
(``observe``), so nothing committed after that read is missed. When etcd's
history was compacted past that revision (maintenance compacts it, see
``woodpecker.meta.history``), etcd cancels the watch; the reader then re-reads
a fresh snapshot and the watch starts again after it: no entry is skipped.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pyetcd import events as etcd_events
from pyetcd import exceptions as etcd_exceptions
from pyetcd import watch as etcd_watch

from woodpecker.errors import LogNotFoundError
from woodpecker.meta.records import Record, at_least, now_ms
from woodpecker.meta.store import MetaStore

log = logging.getLogger(__name__)

POSITION_INTERVAL = 5.0
"""Seconds between position updates of a reader that stays in one segment."""

RECHECK_INTERVAL = 5.0
"""Longest wait on an armed watch before metadata is re-read anyway.

A watch stream cut by a silent network partition reports no error; this bounds
how late a reader notices new entries in that case."""

_ARM_BACKOFF_MIN = 0.05
_ARM_BACKOFF_MAX = 1.0


@dataclass(frozen=True, slots=True)
class ReaderRecord(Record):
    """Value of a reader's registration: who reads, and the next entry it will read."""

    name: str = field()
    segment_id: int = at_least(0)
    entry_id: int = at_least(0)
    updated_ms: int = at_least(0)


class LiveReader(NamedTuple):
    """An open reader of a log, as registered (its position may lag, never lead)."""

    segment_id: int
    entry_id: int
    reader_id: str
    name: str
    updated_ms: int


def live_readers(meta: MetaStore, log_id: int) -> list[LiveReader]:
    """Every open reader of the log, lowest position first.

    For garbage collection: a segment at or after the lowest ``segment_id`` may
    still be read and must be kept. A malformed registration raises
    ``CorruptedDataError`` rather than being ignored, so GC never deletes data
    a reader it cannot understand may need.
    """
    prefix = meta.keys.readers_prefix(log_id)
    readers = []
    for value, kv in meta.etcd.scan("live_readers", prefix):
        key = kv.key.decode()
        r = ReaderRecord.from_bytes(value, key)
        readers.append(
            LiveReader(r.segment_id, r.entry_id, key[len(prefix) :], r.name, r.updated_ms)
        )
    return sorted(readers)


def live_reader_positions(meta: MetaStore, log_id: int) -> list[tuple[int, int]]:
    """``(segment_id, entry_id)`` of every open reader of the log, lowest first."""
    return [(r.segment_id, r.entry_id) for r in live_readers(meta, log_id)]


class ReaderRegistration:
    """A reader's registration key, kept alive until ``close()``.

    The first put happens in the constructor (``LogNotFoundError`` if the log
    is gone); ``track`` only records the position, a background thread writes it.
    """

    def __init__(self, meta: MetaStore, log_id: int, name: str, position: tuple[int, int]) -> None:
        etcd, keys = meta.etcd, meta.keys
        self.reader_id = uuid.uuid4().hex
        self.name = name or f"reader-{self.reader_id[:12]}"
        self.key = keys.reader(log_id, self.reader_id)
        self._etcd = etcd
        self._log_key = keys.log_id(log_id)
        self._ttl = etcd.config.etcd.lease_ttl
        self._latest = position
        self._written = position
        self._written_at = time.monotonic()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lease_id = self._grant()
        try:
            if not self._put(position):
                raise LogNotFoundError(f"log id {log_id} not found")
        except BaseException:
            etcd.revoke_lease(self._lease_id, deadline=self._ttl)
            raise
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"wp-reader-{log_id}-{self.reader_id[:8]}"
        )
        self._thread.start()

    def track(self, position: tuple[int, int]) -> None:
        """The reader's new position; entering a new segment is written right away."""
        self._latest = position
        if position[0] != self._written[0]:
            self._wake.set()

    def _grant(self) -> int:
        ttl = self._ttl
        return self._etcd.call("register_reader", lambda c: c.lease(ttl)).id

    def _put(self, position: tuple[int, int]) -> bool:
        """Write the registration unless the log was deleted (which removed it)."""
        ops = self._etcd.ops
        value = ReaderRecord(
            name=self.name, segment_id=position[0], entry_id=position[1], updated_ms=now_ms()
        ).to_bytes()
        ok, _ = self._etcd.txn(
            "register_reader",
            [ops.version(self._log_key) > 0],
            success=[ops.put(self.key, value, lease=self._lease_id)],
        )
        if ok:
            self._written, self._written_at = position, time.monotonic()
        return ok

    def _position_due(self) -> float:
        """Seconds until the position must be written (0: now; inf: up to date)."""
        latest = self._latest
        if latest == self._written:
            return float("inf")
        if latest[0] != self._written[0]:
            return 0.0
        return max(0.0, self._written_at + POSITION_INTERVAL - time.monotonic())

    def _lease_alive(self) -> bool:
        lease_id = self._lease_id
        replies = self._etcd.call(
            "reader_keepalive", lambda c: list(c.refresh_lease(lease_id)), deadline=0
        )
        return bool(replies) and replies[0].TTL > 0

    def _run(self) -> None:
        """Refresh the lease every ttl/3, write positions when due; never dies of an error."""
        interval = self._ttl / 3
        refresh_at = time.monotonic() + interval
        pause_until = 0.0  # after a failure, nothing is tried before this
        while True:
            now = time.monotonic()
            due = max(min(refresh_at, now + self._position_due()), pause_until)
            self._wake.wait(max(0.0, due - now))
            self._wake.clear()
            if self._stop.is_set():
                return
            if time.monotonic() < pause_until:
                continue  # woken by track() during a pause
            try:
                if time.monotonic() >= refresh_at:
                    if not self._lease_alive():
                        # lost (etcd was unreachable for a TTL): register again
                        log.warning("reader %s: registration lease lost, re-registering", self.name)
                        self._lease_id = self._grant()
                        self._written = (-1, -1)
                    refresh_at = time.monotonic() + interval
                if self._position_due() == 0.0 and not self._put(self._latest):
                    return  # the log was deleted; the reader finds out on its next read
            except Exception as e:  # a missed refresh or write is retried, never fatal
                log.debug("reader %s: registration update failed: %s", self.name, e)
                pause_until = time.monotonic() + min(interval, 0.5)
                refresh_at = min(refresh_at, pause_until)

    def close(self) -> None:
        """Stop the keepalive and revoke the lease, which deletes the key (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._etcd.revoke_lease(self._lease_id, deadline=self._ttl)


class CommitWatch:
    """Wakes a reader when a log's commit point moves or the log is deleted.

    Armed by ``ensure_armed`` or the first ``wait``; a broken watch (stream error, etcd
    restart, reconnect) is re-armed by the next ``wait`` with backoff, and
    until then ``wait`` returns after the backoff so the caller re-reads
    metadata instead. Every (re)arm bumps ``version``, which makes the caller
    re-read metadata once more: nothing committed before the watch existed
    is missed.
    """

    def __init__(self, meta: MetaStore, log_id: int) -> None:
        keys = meta.keys
        self._etcd = meta.etcd
        self._segments_prefix = keys.segments_prefix(log_id)
        self._log_key = keys.log_id(log_id)
        self._log_key_bytes = self._log_key.encode()
        self._cond = threading.Condition()
        self._version = 0
        self._deleted = False
        self._closed = False
        self._generation = 0
        self._live = False
        self._watches: list[tuple[Any, int]] = []  # (pyetcd client, watch id)
        self._retry_at = 0.0
        self._backoff = _ARM_BACKOFF_MIN
        self._revision: int | None = None  # of the reader's last metadata read
        self.compacted = 0  # watches etcd cancelled because their start was compacted

    def observe(self, revision: int) -> None:
        """The reader read metadata at ``revision``: a watch armed now starts after it."""
        if self._revision is None or revision > self._revision:
            self._revision = revision

    @property
    def version(self) -> int:
        """Changes on every notification; read it before reading metadata."""
        return self._version

    @property
    def deleted(self) -> bool:
        """The watch saw the log being deleted."""
        return self._deleted

    def wake(self) -> None:
        """Wake the waiters as a notification would: something else than etcd (a quorum
        node's long-poll) says the reader may have something new."""
        with self._cond:
            self._version += 1
            self._cond.notify_all()

    def ensure_armed(self) -> bool:
        """Arm the watch unless it is live or a retry is not due yet.

        True if the caller must re-read metadata: the watch was armed now with
        no observed revision to start from. Never raises: a watch that cannot
        be armed only means re-reading metadata more often.
        """
        if self._live or self._closed or time.monotonic() < self._retry_at:
            return False
        return self._arm()

    def wait(self, seen: int, timeout: float | None) -> None:
        """Block until ``version != seen``, a re-check is due, or ``timeout`` seconds passed."""
        if self._closed or self.ensure_armed():
            return  # armed just now: the caller must re-read what was committed meanwhile
        # armed: re-read anyway after a while; not armed: re-read when the next arm is due
        limit = RECHECK_INTERVAL if self._live else max(0.0, self._retry_at - time.monotonic())
        if timeout is not None:
            limit = min(limit, timeout)
        with self._cond:
            self._cond.wait_for(lambda: self._version != seen or self._closed, timeout=limit)

    def _arm(self) -> bool:
        self._cancel()
        with self._cond:
            self._generation += 1
            callback = functools.partial(self._notify, self._generation)
        prefix, log_key = self._segments_prefix, self._log_key
        since = {} if self._revision is None else {"start_revision": self._revision + 1}

        def create(client: Any) -> list[tuple[Any, int]]:
            first = client.add_watch_prefix_callback(prefix, callback, **since)
            try:
                second = client.add_watch_callback(log_key, callback, **since)
            except BaseException:
                _cancel_quietly(client, first)
                raise
            return [(client, first), (client, second)]

        try:
            watches = self._etcd.call("watch_commits", create, deadline=0)
        except Exception as e:  # no push for now: the caller re-reads metadata instead
            log.debug("watch on %s not armed (retry in %.2fs): %s", prefix, self._backoff, e)
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, _ARM_BACKOFF_MAX)
            return False
        with self._cond:
            self._watches = watches
            self._live = not self._closed
            if not since:  # what was committed before the watch started is not pushed
                self._version += 1
                self._cond.notify_all()
        self._backoff = _ARM_BACKOFF_MIN
        if self._closed:
            self._cancel()
        return not since

    def _notify(self, generation: int, response: Any) -> None:
        """pyetcd's watch thread: a response, or an error / None when the stream ended."""
        with self._cond:
            if isinstance(response, etcd_watch.WatchResponse):
                for event in response.events:
                    if isinstance(event, etcd_events.DeleteEvent) and (
                        event.key == self._log_key_bytes
                    ):
                        self._deleted = True
            elif generation == self._generation and self._live:  # once per arm (two watches)
                self._live = False
                if isinstance(response, etcd_exceptions.RevisionCompactedError):
                    # the history after the last read is gone: re-read a fresh snapshot,
                    # whose revision the next watch starts after
                    self.compacted += 1
                    log.info(
                        "watch on %s: etcd history compacted past revision %s; re-reading",
                        self._segments_prefix,
                        self._revision,
                    )
            self._version += 1
            self._cond.notify_all()

    def _cancel(self) -> None:
        with self._cond:
            watches, self._watches, self._live = self._watches, [], False
        for client, watch_id in watches:
            _cancel_quietly(client, watch_id)

    def close(self) -> None:
        """Cancel the watches and wake every waiter."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._cancel()


def _cancel_quietly(client: Any, watch_id: int) -> None:
    """Cancel a watch; one whose stream already died is gone anyway."""
    try:
        client.cancel_watch(watch_id)
    except Exception as e:
        log.debug("cancel of watch %s failed (already gone): %s", watch_id, e)
