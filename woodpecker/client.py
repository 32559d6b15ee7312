"""``Client``: the entry point — create, open, list and delete logs.

A Client that writes attaches to the logstore of its deployment
(``logstore.socket``, by default one socket per deployment under
``storage.root``), launching the embedded one when none runs, so that every
process on the host writing to the same deployment shares one coordinator and
uploader pool. Before it writes or deletes anything it checks the deployment's
claims (``woodpecker.deployment``). A Client that only reads never launches a
logstore: metadata reads go straight to etcd, the embedded etcd of the storage
root when no endpoints are configured.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from woodpecker import forking
from woodpecker.config import Config
from woodpecker.deployment import verify_deployment
from woodpecker.errors import (
    ClientClosedError,
    ForkedClientError,
    LogExistsError,
    LogNotFoundError,
    WoodpeckerError,
)
from woodpecker.log import LogHandle
from woodpecker.meta import MetaStore
from woodpecker.meta.embedded import EmbeddedEtcd
from woodpecker.naming import validate_log_name
from woodpecker.producer import ProducerLink
from woodpecker.reader import LogReader
from woodpecker.storage import ObjectStore, open_store


class Client:
    """Opens logs. ``Client()`` reads YAML/env config; keywords override (``storage_type="s3"``).

    Thread-safe. After ``close()`` the Client and every writer and reader it
    opened raise ``ClientClosedError``; in a process forked from the one that
    created it, they raise ``ForkedClientError`` (create a new Client there).
    """

    def __init__(self, config: Config | None = None, **overrides: Any) -> None:
        self.config = config if config is not None else Config(**overrides)
        self._lock = threading.RLock()
        self._link: ProducerLink | None = None
        self._meta: MetaStore | None = None
        self._store: ObjectStore | None = None
        self._etcd: EmbeddedEtcd | None = None
        self._deployment_id: str | None = None
        self._readers: weakref.WeakSet[LogReader] = weakref.WeakSet()
        self._unusable: WoodpeckerError | None = None  # closed, or inherited through fork
        forking.track(self)

    def _forked(self, error: ForkedClientError) -> None:
        self._unusable = error
        self._lock = threading.RLock()  # a parent thread may have held it at the fork

    def _check(self) -> None:
        error = self._unusable
        if error is not None:
            raise type(error)(str(error))

    def create_log(self, name: str) -> LogHandle:
        """Create a log in ``buffer.mode``; ``LogExistsError`` if the name is taken."""
        validate_log_name(name)
        mode = self._buffer_mode()
        self.deployment_id()
        record = self.meta_store().create_log(name, mode)
        return LogHandle(self, record.name, record.log_id)

    def _buffer_mode(self) -> str:
        """The mode new logs are created in, recorded in their metadata for good."""
        return self.config.buffer.mode

    def open_log(self, name: str, *, create: bool = False) -> LogHandle:
        """Open a log; ``LogNotFoundError`` unless it exists or ``create=True``."""
        validate_log_name(name)
        meta = self.meta_store()
        if create:
            self.deployment_id()
            try:
                record = meta.get_log(name)
            except LogNotFoundError:
                try:
                    record = meta.create_log(name, self._buffer_mode())
                except LogExistsError:
                    record = meta.get_log(name)
        else:
            record = meta.get_log(name)
        return LogHandle(self, record.name, record.log_id)

    def list_logs(self, prefix: str = "") -> list[str]:
        """Names of the logs starting with ``prefix``, sorted."""
        return self.meta_store().list_logs(prefix)

    def delete_log(self, name: str) -> None:
        """Delete a log's metadata; readers then get ``LogNotFoundError``.

        Its objects are removed in the background: the logstores' maintenance
        deletes them as orphans once older than ``retention.orphan_grace``.
        """
        validate_log_name(name)
        self.deployment_id()
        record = self.meta_store().delete_log(name)
        for reader in list(self._readers):
            if reader.log_id == record.log_id:
                reader.log_deleted()

    def close(self) -> None:
        """Close every reader, fail what writers still have pending, detach; idempotent.

        Close writers first (``with`` does) so that their appends are flushed.
        """
        if isinstance(self._unusable, ForkedClientError):
            return  # what it holds is the parent's: nothing to release here
        with self._lock:
            if self._unusable is not None:
                return
            self._unusable = ClientClosedError("the Client was closed; create a new Client")
            for reader in list(self._readers):
                reader.close_with(self._unusable)
            if self._link is not None:
                self._link.close()
            if self._meta is not None:
                self._meta.close()
            if self._store is not None:
                self._store.close()
            if self._etcd is not None:
                self._etcd.release()

    # ---- package seams ------------------------------------------------------------------
    # What LogHandle and the admin commands build on: the resources this
    # Client opens lazily, checks against close and fork, and closes. They are methods of
    # the Client rather than a separate object because the closed and forked rules are the
    # Client's own; they are public so that no module reaches into another's private
    # names, but applications do not need them (the README documents the user API).

    def producer_link(self) -> ProducerLink:
        """The link to the logstore (checks the deployment first), reconnected and
        relaunched after it was lost: what a ``LogWriter`` writes through."""
        self.deployment_id()
        with self._lock:
            self._check()
            if self._link is None or not self._link.alive:
                if self._link is not None:
                    self._link.close()
                self._link = ProducerLink(self.config)
            return self._link

    def meta_store(self) -> MetaStore:
        """The metadata store, connected on first use (to the embedded etcd when no
        endpoints are configured) and closed with the Client."""
        self._check()
        with self._lock:
            self._check()
            if self._meta is None:
                endpoints = list(self.config.etcd.endpoints)
                if not endpoints:
                    self._etcd = EmbeddedEtcd(self.config.storage.root, self.config.etcd.binary)
                    endpoints = self._etcd.acquire()
                self._meta = MetaStore(self.config, endpoints=endpoints)
            return self._meta

    def deployment_id(self) -> str:
        """The deployment's id, claimed or checked once, before this Client first writes
        or deletes (``woodpecker.deployment``)."""
        with self._lock:
            if self._deployment_id is None:
                self._deployment_id = verify_deployment(
                    self.config, self.meta_store(), self.object_store()
                )
            return self._deployment_id

    def object_store(self) -> ObjectStore:
        """The object store holding the logs' data, opened on first use, closed with the Client."""
        self._check()
        with self._lock:
            self._check()
            if self._store is None:
                self._store = open_store(self.config)
            return self._store

    def reader_opened(self, reader: LogReader) -> None:
        """Readers are closed with the Client, and learn at once of a delete_log through it."""
        with self._lock:
            if self._unusable is not None:  # closed while the reader was being opened
                reader.close_with(self._unusable)
                self._check()
            self._readers.add(reader)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
