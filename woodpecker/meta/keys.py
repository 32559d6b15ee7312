"""The etcd key layout: every key this project writes, under ``etcd.prefix``.

Ids are zero-padded to 20 digits (the width of the largest int64) so that a
prefix scan returns segments and blocks in numeric order. Every prefix used for
a scan ends with ``/`` so that log 12 never matches the keys of log 123.
"""

from __future__ import annotations


def _id(n: int) -> str:
    return f"{n:020d}"


class Keys:
    """Builds the keys of one metadata root (``etcd.prefix``)."""

    def __init__(self, prefix: str) -> None:
        self.root = prefix.rstrip("/")

    @property
    def deployment(self) -> str:
        """The etcd side of the deployment claim (see ``woodpecker.deployment``)."""
        return f"{self.root}/deployment"

    @property
    def log_idgen(self) -> str:
        """Counter holding the last log id handed out."""
        return f"{self.root}/idgen/log"

    @property
    def logs_prefix(self) -> str:
        return f"{self.root}/logs/"

    def log(self, name: str) -> str:
        """LogRecord of a log, by name."""
        return f"{self.logs_prefix}{name}"

    def log_id(self, log_id: int) -> str:
        """Reverse index id -> name; its presence means the log id is live."""
        return f"{self.root}/ids/{log_id}"

    def writer(self, log_id: int) -> str:
        """The writer-session key, bound to the holder's lease."""
        return f"{self.root}/writer/{log_id}"

    def epoch(self, log_id: int) -> str:
        """The persistent epoch counter of a log's writer sessions."""
        return f"{self.root}/epoch/{log_id}"

    def segments_prefix(self, log_id: int) -> str:
        return f"{self.root}/segments/{log_id}/"

    def segment(self, log_id: int, segment_id: int) -> str:
        return f"{self.segments_prefix(log_id)}{_id(segment_id)}"

    def blocks_prefix(self, log_id: int, segment_id: int | None = None) -> str:
        """All blocks of a log, or of one of its segments."""
        base = f"{self.root}/blocks/{log_id}/"
        return base if segment_id is None else f"{base}{_id(segment_id)}/"

    def block(self, log_id: int, segment_id: int, block_id: int) -> str:
        return f"{self.blocks_prefix(log_id, segment_id)}{_id(block_id)}"

    def indexes_prefix(self, log_id: int) -> str:
        return f"{self.root}/index/{log_id}/"

    def segment_index(self, log_id: int, segment_id: int) -> str:
        """The SegmentIndex of a compacted segment, which replaces its block records."""
        return f"{self.indexes_prefix(log_id)}{_id(segment_id)}"

    def truncation(self, log_id: int) -> str:
        return f"{self.root}/truncation/{log_id}"

    def readers_prefix(self, log_id: int) -> str:
        return f"{self.root}/readers/{log_id}/"

    def reader(self, log_id: int, reader_id: str) -> str:
        """A live reader's registration (lease-bound): where it is, so GC keeps that data."""
        return f"{self.readers_prefix(log_id)}{reader_id}"

    def flush_cursor(self, log_id: int, segment_id: int) -> str:
        """How far a quorum segment is flushed to object storage (docs/quorum.md)."""
        return f"{self.root}/flush/{log_id}/{_id(segment_id)}"

    def flusher(self, log_id: int, segment_id: int) -> str:
        """Which node flushes a quorum segment: a claim bound to that node's lease."""
        return f"{self.root}/flusher/{log_id}/{_id(segment_id)}"

    @property
    def nodes_prefix(self) -> str:
        return f"{self.root}/nodes/"

    def node(self, node_id: str) -> str:
        """A quorum node's registration, bound to its lease (docs/quorum.md)."""
        return f"{self.nodes_prefix}{node_id}"

    def gc_prefix(self, log_id: int | None = None) -> str:
        """Pending object deletions, of every log or of one log.

        Not log-scoped on purpose: they outlive a deleted log so its objects still go.
        """
        base = f"{self.root}/gc/"
        return base if log_id is None else f"{base}{log_id}/"

    def gc_entry(self, log_id: int, name: str) -> str:
        """One PendingDeletion: objects a txn stopped referencing, deletable after a grace."""
        return f"{self.gc_prefix(log_id)}{name}"

    def log_scoped_prefixes(self, log_id: int) -> list[str]:
        """Every prefix holding keys of one log id (for deleting a log)."""
        return [
            self.segments_prefix(log_id),
            self.blocks_prefix(log_id),
            self.indexes_prefix(log_id),
            self.readers_prefix(log_id),
            f"{self.root}/flush/{log_id}/",
            f"{self.root}/flusher/{log_id}/",
        ]

    def log_scoped_keys(self, log_id: int) -> list[str]:
        """Every single key of one log id (for deleting a log)."""
        return [
            self.log_id(log_id),
            self.writer(log_id),
            self.epoch(log_id),
            self.truncation(log_id),
        ]
