"""Operator commands on logs: list, show, segments, tail, cat, truncate, gc.

The ``woodpecker`` CLI wires these to sub-commands. Each returns plain data
(dicts and lists) so that ``--json`` and the human tables print the same facts.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO

import pyarrow as pa

from woodpecker.client import Client
from woodpecker.message import EARLIEST, LATEST, LogMessage, LogMessageId, Position
from woodpecker.meta import SegmentRecord, live_readers
from woodpecker.meta.nodes import registered_nodes
from woodpecker.storage import open_store


def parse_position(text: str) -> Position:
    """``earliest``, ``latest`` or ``SEGMENT:ENTRY``."""
    lowered = text.strip().lower()
    if lowered == "earliest":
        return EARLIEST
    if lowered == "latest":
        return LATEST
    return LogMessageId.parse(text)


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def segment_row(seg: SegmentRecord) -> dict[str, Any]:
    return {
        "segment_id": seg.segment_id,
        "state": str(seg.state),
        "entries": seg.lac + 1,
        "lac": seg.lac,
        "bytes": seg.size,
        "blocks": seg.block_count,
        "epoch": seg.epoch,
        "created": _when(seg.created_ms),
        "sealed": _when(seg.sealed_ms),
        "compacted": _when(seg.compacted_ms),
    }


def nodes(client: Client) -> list[dict[str, Any]]:
    """The registered quorum nodes: where they listen, their state, what they hold."""
    return [
        {
            "node_id": n.node_id,
            "address": n.address,
            "state": n.state,
            "durability": n.durability,
            "incarnation": n.incarnation,
            "buffered_bytes": n.buffered_bytes,
            "segments": [f"{log_id}/{segment_id}" for log_id, segment_id, *_ in n.segments],
            "started": _when(n.started_ms),
            "pid": n.pid,
        }
        for n in registered_nodes(client.meta_store())
    ]


def list_logs(client: Client, prefix: str) -> list[dict[str, Any]]:
    meta = client.meta_store()
    rows = []
    for name in client.list_logs(prefix):
        record = meta.get_log(name)
        segments = meta.list_segments(record.log_id)
        rows.append(
            {
                "name": name,
                "log_id": record.log_id,
                "segments": len(segments),
                "entries": sum(s.lac + 1 for s in segments),
                "bytes": sum(s.size for s in segments),
                "created": _when(record.created_ms),
            }
        )
    return rows


def show_log(client: Client, name: str) -> dict[str, Any]:
    log = client.open_log(name)
    meta = client.meta_store()
    segments = log.segments()
    truncation = log.truncation_point()
    return {
        "name": log.name,
        "log_id": log.log_id,
        "buffer_mode": meta.get_log(log.name).buffer_mode,
        "segments": len(segments),
        "entries": sum(s.lac + 1 for s in segments),
        "bytes": sum(s.size for s in segments),
        "first_segment": segments[0].segment_id if segments else None,
        "last_segment": segments[-1].segment_id if segments else None,
        "truncated_through": str(truncation) if truncation else None,
        "readers": [
            {"name": r.name, "position": f"{r.segment_id}:{r.entry_id}"}
            for r in live_readers(meta, log.log_id)
        ],
    }


def segments(client: Client, name: str) -> list[dict[str, Any]]:
    return [segment_row(s) for s in client.open_log(name).segments()]


def follow(
    client: Client, name: str, start: Position, *, stop_after: float | None = None
) -> Iterator[LogMessage]:
    """Entries from ``start`` on, waiting for new ones (``tail -f``)."""
    deadline = None if stop_after is None else time.monotonic() + stop_after
    with client.open_log(name).open_reader(start, name="woodpecker-tail") as reader:
        while deadline is None or time.monotonic() < deadline:
            message = reader.read_next(timeout=0.5)
            if message is not None:
                yield message


def read_range(client: Client, name: str, start: Position, end: LogMessageId | None) -> pa.Table:
    return client.open_log(name).read_table(start, end)


def message_json(segment_id: int, entry_id: int, payload: bytes) -> dict[str, Any]:
    """A JSON line: UTF-8 payloads as text, anything else base64."""
    row: dict[str, Any] = {"segment_id": segment_id, "entry_id": entry_id}
    try:
        row["payload"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        row["payload_b64"] = base64.b64encode(payload).decode("ascii")
    return row


def write_table(table: pa.Table, fmt: str, out: BinaryIO, dumps: Any) -> None:
    """``raw``: each payload then a newline; ``jsonl``; ``arrow``: an Arrow IPC stream."""
    if fmt == "arrow":
        with pa.ipc.new_stream(out, table.schema) as writer:
            writer.write_table(table)
        return
    seg = table.column("segment_id").to_pylist()
    ent = table.column("entry_id").to_pylist()
    for i, payload in enumerate(table.column("payload").to_pylist()):
        if fmt == "raw":
            out.write(payload + b"\n")
        else:
            out.write(dumps(message_json(seg[i], ent[i], payload)) + b"\n")


def run_gc(client: Client, *, dry_run: bool) -> dict[str, Any]:
    """One maintenance pass (retention, GC, compaction) now; dry: what it would do."""
    from workers.maintenance import Maintenance

    store = open_store(client.config)
    try:
        report = Maintenance(client.config, client.meta_store(), store).run_once(dry_run=dry_run)
    finally:
        store.close()
    return {
        "dry_run": report.dry_run,
        "actions": [
            {
                "action": str(a.kind),
                "log_id": a.log_id,
                "segment_id": a.segment_id,
                "objects": len(a.keys),
                "reason": a.reason,
            }
            for a in report.actions
        ],
        "pending": [
            {
                "log_id": w.log_id,
                "objects": w.objects,
                "bytes": w.bytes,
                "due": _when(int(w.due * 1000)),
                "reason": w.reason,
            }
            for w in report.waiting
        ],
        "errors": report.errors,
    }


def print_table(rows: list[dict[str, Any]], out: Any = None) -> None:
    """Rows as aligned columns (the human form of ``--json``)."""
    out = out or sys.stdout
    if not rows:
        print("(none)", file=out)
        return
    headers = list(rows[0])
    cells = [[str("" if r[h] is None else r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    header = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    print(header.rstrip(), file=out)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip(), file=out)
