"""What the writes of a bench run leave in etcd: its database size, per GB of payload.

etcd keeps every revision of every key until its history is compacted, and the
database file is what its quota (2 GiB by default) is measured against, so the
bytes it grows by per GB written say how long a deployment runs before the
quota stops every commit. Read from etcd's status API around every step that
writes (the write and targets suites) and at the start and end of the run. The
file grows by whole pages and reuses pages freed by a compaction, so one cell's
growth is rough; the sum over all the write steps is the figure. It counts every
client of that etcd: run the bench on a quiet one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyetcd
from pyetcd import etcdrpc


def status(endpoint: str) -> tuple[int, int]:
    """(database size in bytes, current revision) of the etcd member at ``host:port``."""
    host, _, port = endpoint.rpartition(":")
    client = pyetcd.client(host=host, port=int(port), timeout=10)
    try:
        reply = client.maintenancestub.Status(etcdrpc.StatusRequest(), 10)
        return reply.dbSize, reply.header.revision
    finally:
        client.close()


def payload_bytes(value: dict[str, Any]) -> int:
    """Payload bytes a write cell (or a targets round, through its cells) acknowledged."""
    if "cells" in value:
        return sum(c.get("bytes", 0) for c in value["cells"])
    return value.get("bytes", 0)


class EtcdGrowth:
    """etcd's size at the start of the run, and its growth around the steps that write."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.start_bytes, self.start_revision = status(endpoint)
        self.grown = 0
        self.revisions = 0
        self.written = 0

    def around(self, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run a writing step; its result gains the db growth and revisions it caused."""
        size, revision = status(self.endpoint)
        value = run()
        size_after, revision_after = status(self.endpoint)
        value["etcd_db_growth_bytes"] = size_after - size
        value["etcd_revisions"] = revision_after - revision
        self.grown += size_after - size
        self.revisions += revision_after - revision
        self.written += payload_bytes(value)
        return value

    def summary(self) -> dict[str, Any]:
        """Sizes before and after the run; growth and revisions per GB of the write steps."""
        end_bytes, end_revision = status(self.endpoint)
        gb = self.written / 1e9
        return {
            "db_size_before": self.start_bytes,
            "db_size_after": end_bytes,
            "revisions_in_run": end_revision - self.start_revision,
            "write_steps_payload_bytes": self.written,
            "write_steps_db_growth_bytes": self.grown,
            "write_steps_revisions": self.revisions,
            "db_bytes_per_gb": round(self.grown / gb) if gb else None,
            "revisions_per_gb": round(self.revisions / gb) if gb else None,
        }
