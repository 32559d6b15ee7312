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
from typing import Any, BinaryIO, NamedTuple

import pyarrow as pa

from woodpecker.client import Client
from woodpecker.errors import QuorumUnavailableError
from woodpecker.message import EARLIEST, LATEST, LogMessage, LogMessageId, Position
from woodpecker.meta import MetaStore, SegmentRecord, live_readers
from woodpecker.meta.nodes import registered_nodes
from woodpecker.quorum.tail import TailReads
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


class Committed(NamedTuple):
    """What is committed of a segment, and where that was learnt."""

    lac: int | None  # None: unknown (an ACTIVE quorum segment whose nodes do not answer)
    source: str  # "etcd", "nodes", or "unknown: ..." saying why
    blocks: int  # in object storage (a quorum segment's: its flushed ranges)
    size: int


def committed(meta: MetaStore, tail: TailReads, seg: SegmentRecord) -> Committed:
    """A segment's LAC, blocks and bytes. An ACTIVE quorum segment's LAC is its nodes' (etcd
    says -1); a quorum segment's blocks are its flush commits (its record counts none)."""
    blocks, size = seg.block_count, seg.size
    if seg.quorum:
        flushed = meta.list_blocks(seg.log_id, seg.segment_id)
        blocks, size = len(flushed), sum(b.size for b in flushed)
    if not seg.lac_on_nodes:
        return Committed(seg.lac, "etcd", blocks, size)
    try:
        return Committed(tail.committed_lac(meta, seg), "nodes", blocks, size)
    except QuorumUnavailableError:
        return Committed(None, "unknown: no node of its ensemble answers", blocks, size)


def ensemble_text(seg: SegmentRecord) -> str:
    """``node@address`` of each member of a quorum segment's ensemble; empty for a memory one."""
    return ", ".join(f"{m.node_id}@{m.address}" for m in seg.ensemble or ())


def segment_row(seg: SegmentRecord, known: Committed) -> dict[str, Any]:
    return {
        "segment_id": seg.segment_id,
        "state": str(seg.state),
        "entries": None if known.lac is None else known.lac + 1,
        "lac": known.lac,
        "lac_from": known.source,
        "bytes": known.size,
        "blocks": known.blocks,
        "epoch": seg.epoch,
        "created": _when(seg.created_ms),
        "sealed": _when(seg.sealed_ms),
        "compacted": _when(seg.compacted_ms),
        "ensemble": ensemble_text(seg),
    }


def _segment_rows(client: Client, name: str, log_id: int) -> list[dict[str, Any]]:
    """Every segment of a log as ``segment_row``s, the nodes asked for ACTIVE quorum ones."""
    meta = client.meta_store()
    with TailReads(meta.config, log_id, name) as tail:  # started only if a node is asked
        return [segment_row(s, committed(meta, tail, s)) for s in meta.list_segments(log_id)]


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A log's entries and bytes from its segment rows, and where the entry count comes from."""
    unknown = [r["segment_id"] for r in rows if r["entries"] is None]
    sources = {r["lac_from"] for r in rows}
    if unknown:
        source = f"unknown: no node of segment {unknown[0]}'s ensemble answers"
    else:
        source = " and ".join(s for s in ("etcd", "nodes") if s in sources) or "etcd"
    return {
        "segments": len(rows),
        "entries": None if unknown else sum(r["entries"] for r in rows),
        "entries_from": source,
        "bytes": sum(r["bytes"] for r in rows),
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
        rows.append(
            {
                "name": name,
                "log_id": record.log_id,
                "buffer_mode": record.buffer_mode,
                **_totals(_segment_rows(client, name, record.log_id)),
                "created": _when(record.created_ms),
            }
        )
    return rows


def show_log(client: Client, name: str) -> dict[str, Any]:
    log = client.open_log(name)
    meta = client.meta_store()
    rows = _segment_rows(client, log.name, log.log_id)
    truncation = log.truncation_point()
    shown = {
        "name": log.name,
        "log_id": log.log_id,
        "buffer_mode": meta.get_log(log.name).buffer_mode,
        **_totals(rows),
        "first_segment": rows[0]["segment_id"] if rows else None,
        "last_segment": rows[-1]["segment_id"] if rows else None,
        "truncated_through": str(truncation) if truncation else None,
        "readers": [
            {"name": r.name, "position": f"{r.segment_id}:{r.entry_id}"}
            for r in live_readers(meta, log.log_id)
        ],
    }
    quorum_rows = [
        {k: r[k] for k in ("segment_id", "state", "lac", "lac_from", "ensemble")}
        for r in rows
        if r["ensemble"]
    ]
    return {**shown, "quorum_segments": quorum_rows} if quorum_rows else shown


def segments(client: Client, name: str) -> list[dict[str, Any]]:
    log = client.open_log(name)
    return _segment_rows(client, log.name, log.log_id)


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
