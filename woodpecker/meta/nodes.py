"""The registry of quorum nodes in etcd: ``<p>/nodes/<node_id>``, bound to the node's lease.

A node registers when it starts serving (create-only: two live nodes never share an id),
refreshes its lease every ``etcd.lease_ttl / 3`` and rewrites its record when what it
holds changes, at most once per refresh. A node that dies stops refreshing and etcd
deletes its record one TTL later; a node that stops cleanly revokes the lease, which
deletes it at once. Writers pick ensembles from ``registered_nodes`` (docs/quorum.md).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from woodpecker.errors import ConfigError
from woodpecker.meta.records import Record, at_least
from woodpecker.meta.store import MetaStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeRecord(Record):
    """A live node: where it listens, which incarnation answers there, what it holds."""

    node_id: str = field()
    address: str = field()
    incarnation: int = at_least(0)
    durability: str = field()
    state: str = field()  # serving, or draining once it was asked to stop
    started_ms: int = at_least(0)
    pid: int = at_least(0)
    buffered_bytes: int = at_least(0)
    # [log_id, segment_id, last entry, lac, bytes] of every segment held
    segments: list[list[int]] = field(default_factory=list)


def registered_nodes(meta: MetaStore) -> list[NodeRecord]:
    """Every live registered node, by id.

    A malformed record raises ``CorruptedDataError`` naming its key: a writer must not
    pick an ensemble from a registry it cannot read.
    """
    prefix = meta.keys.nodes_prefix
    return [
        NodeRecord.from_bytes(value, kv.key.decode())
        for value, kv in meta.etcd.scan("registered_nodes", prefix)
    ]


class NodeRegistration:
    """A node's registration, kept alive by a thread until ``close()``.

    The constructor grants the lease and creates the key; ``ConfigError`` if another
    live node holds the id. ``update`` hands in a new record, written at the next refresh.
    """

    def __init__(self, meta: MetaStore, record: NodeRecord) -> None:
        self._etcd = meta.etcd
        self.key = meta.keys.node(record.node_id)
        self._ttl = meta.config.etcd.lease_ttl
        self._record = record
        self._written = record
        self._stop = threading.Event()
        self._lease_id = self._grant()
        try:
            holder = self._create()
            if holder is not None:
                raise ConfigError(
                    f"node.id: {record.node_id!r} is registered already by the node at "
                    f"{holder.address} (pid {holder.pid}); give each node its own id"
                )
        except BaseException:
            self._etcd.revoke_lease(self._lease_id, deadline=self._ttl)
            raise
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"wp-node-{record.node_id}"
        )
        self._thread.start()

    def _grant(self) -> int:
        ttl = self._ttl
        return self._etcd.call("register_node", lambda c: c.lease(ttl)).id

    def _create(self) -> NodeRecord | None:
        """Put the record if the key is free (or already ours); else the holder's record."""
        ops = self._etcd.ops
        record = self._record
        ok, replies = self._etcd.txn(
            "register_node",
            [ops.create(self.key) == 0],
            success=[ops.put(self.key, record.to_bytes(), lease=self._lease_id)],
            failure=[ops.get(self.key)],
        )
        if ok:
            self._written = record
            return None
        value, meta = replies[0][0]
        if meta.lease_id == self._lease_id:  # a retry of our own create whose reply was lost
            return None
        return NodeRecord.from_bytes(value, self.key)

    @property
    def lease_id(self) -> int:
        """The lease the record lives on (a flush claim is put on it too)."""
        return self._lease_id

    def update(self, record: NodeRecord) -> None:
        """The node's current record (state, buffered bytes, segments): written lazily."""
        self._record = record

    def write_now(self) -> None:
        """Write the current record at once (a state change others must see, e.g. draining)."""
        record = self._record
        self._etcd.call(
            "update_node", lambda c: c.put(self.key, record.to_bytes(), lease=self._lease_id)
        )
        self._written = record

    def _lease_alive(self) -> bool:
        lease_id = self._lease_id
        replies = self._etcd.call(
            "node_keepalive", lambda c: list(c.refresh_lease(lease_id)), deadline=0
        )
        return bool(replies) and replies[0].TTL > 0

    def _run(self) -> None:
        """Refresh every ttl/3; re-register if the lease was lost; never dies of an error."""
        while not self._stop.wait(self._ttl / 3):
            try:
                if not self._lease_alive():
                    log.warning("node registration %s: lease lost, registering again", self.key)
                    self._lease_id = self._grant()
                    holder = self._create()
                    if holder is not None:
                        log.error("node id taken meanwhile by %s; not registered", holder.address)
                elif self._record != self._written:
                    self.write_now()
            except Exception as e:  # retried at the next refresh
                log.warning("node registration %s: refresh failed: %s", self.key, e)

    def close(self) -> None:
        """Stop refreshing and revoke the lease, which deletes the record (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._etcd.revoke_lease(self._lease_id, deadline=self._ttl)
