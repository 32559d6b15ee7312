"""``Client``: the entry point — create, open, list and delete logs.

A Client attaches to the logstore of its storage root (``logstore.socket``),
launching the embedded one when none runs, so that every process on the host
that writes through the same root shares one coordinator and uploader pool.
Metadata reads go straight to etcd; when no etcd endpoints are configured the
Client uses the embedded etcd that the logstore serves.
"""

from __future__ import annotations

import threading
from typing import Any

from woodpecker.config import Config
from woodpecker.errors import LogExistsError, LogNotFoundError
from woodpecker.log import LogHandle
from woodpecker.meta import MetaStore
from woodpecker.naming import validate_log_name
from woodpecker.producer import ProducerLink
from woodpecker.storage import ObjectStore, open_store


class Client:
    """Opens logs. ``Client()`` reads YAML/env config; keywords override (``storage_type="s3"``)."""

    def __init__(self, config: Config | None = None, **overrides: Any) -> None:
        self.config = config if config is not None else Config(**overrides)
        self._lock = threading.RLock()
        self._link: ProducerLink | None = None
        self._meta: MetaStore | None = None
        self._store: ObjectStore | None = None
        self._closed = False

    def _producer_link(self) -> ProducerLink:
        """The link to the logstore, reconnected (and relaunched) after it was lost."""
        with self._lock:
            if self._link is None or not self._link.alive:
                if self._link is not None:
                    self._link.close()
                self._link = ProducerLink(self.config)
            return self._link

    def _meta_store(self) -> MetaStore:
        with self._lock:
            if self._meta is None:
                endpoints = list(self.config.etcd.endpoints)
                if not endpoints:
                    endpoints = self._producer_link().etcd_endpoints
                self._meta = MetaStore(self.config, endpoints=endpoints)
            return self._meta

    def _object_store(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                self._store = open_store(self.config)
            return self._store

    def create_log(self, name: str) -> LogHandle:
        """Create a log; ``LogExistsError`` if the name is taken."""
        validate_log_name(name)
        record = self._meta_store().create_log(name)
        return LogHandle(self, record.name, record.log_id)

    def open_log(self, name: str, *, create: bool = False) -> LogHandle:
        """Open a log; ``LogNotFoundError`` unless it exists or ``create=True``."""
        validate_log_name(name)
        meta = self._meta_store()
        if create:
            try:
                record = meta.get_log(name)
            except LogNotFoundError:
                try:
                    record = meta.create_log(name)
                except LogExistsError:
                    record = meta.get_log(name)
        else:
            record = meta.get_log(name)
        return LogHandle(self, record.name, record.log_id)

    def list_logs(self, prefix: str = "") -> list[str]:
        """Names of the logs starting with ``prefix``, sorted."""
        return self._meta_store().list_logs(prefix)

    def delete_log(self, name: str) -> None:
        """Delete a log's metadata; readers then get ``LogNotFoundError``.

        Its objects are removed in the background: the logstores' maintenance
        deletes them as orphans once older than ``retention.orphan_grace``.
        """
        validate_log_name(name)
        self._meta_store().delete_log(name)

    def close(self) -> None:
        """Detach from the logstore and close connections; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._link is not None:
                self._link.close()
            if self._meta is not None:
                self._meta.close()
            if self._store is not None:
                self._store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
