"""``report.json`` (everything measured) and ``report.md`` (the tables a reader needs).

Every Woodpecker figure is shown beside the ceiling of its backend measured in
the same run, and the peer (NATS JetStream) beside Woodpecker at the same
entry sizes. The seed's published table is restated with its own ceilings so
that both sides compare as ratios, not as absolute numbers from other machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from stats import approx_size, human_size
from suite_nats import DURABILITY

# The seed's published single-stream numbers and the backend ceilings it quotes.
SEED = [
    {"system": "Kafka", "mb_s": 129.96, "latency_ms": 58, "ceiling": None},
    {"system": "Pulsar", "mb_s": 107, "latency_ms": 35, "ceiling": None},
    {"system": "WP MinIO", "mb_s": 71, "latency_ms": 184, "ceiling": (110, 110)},
    {"system": "WP Local", "mb_s": 450, "latency_ms": 1.8, "ceiling": (600, 750)},
    {"system": "WP S3", "mb_s": 750, "latency_ms": 166, "ceiling": (1100, 1100)},
]


def add_ratios(results: dict[str, Any]) -> None:
    """Put ``pct_of_ceiling`` on every write cell and sealed / tail read cell."""
    ceilings = results.get("ceilings", {})
    for cell in results.get("write", []):
        ceiling = ceilings.get(cell.get("backend"), {}).get("write_ceiling_mb_s")
        if ceiling and "mb_s" in cell:
            cell["pct_of_ceiling"] = round(100 * cell["mb_s"] / ceiling, 1)
    for cell in results.get("read", []):
        ceiling = ceilings.get(cell.get("backend"), {}).get("read_ceiling_mb_s")
        if ceiling and "mb_s" in cell:
            cell["pct_of_ceiling"] = round(100 * cell["mb_s"] / ceiling, 1)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _lat(cell: dict[str, Any], key: str = "latency") -> str:
    lat = cell.get(key) or {}
    if not lat.get("n"):
        return "- / - / -"
    return f"{_f(lat['p50_ms'], 2)} / {_f(lat['p99_ms'], 2)} / {_f(lat['p999_ms'], 2)}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


def _ok(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cells if "error" not in c]


def _find(cells: list[dict[str, Any]], **want: Any) -> dict[str, Any] | None:
    return next((c for c in _ok(cells) if all(c.get(k) == v for k, v in want.items())), None)


def render(results: dict[str, Any]) -> str:
    run = results["run"]
    md = [f"# Woodpecker benchmark report ({run['mode']} run, {run['started']})", ""]
    md += _header(run)
    md += _targets(results)
    md += _goals(results)
    md += _ceilings(results.get("ceilings", {}))
    md += _seed(results)
    md += _writes(results.get("write", []))
    md += _reads(results.get("read", []), results.get("ceilings", {}))
    md += _peer(results)
    md += _cost(results.get("cost", []))
    md += _quorum(results.get("quorum", []))
    md += _etcd(results.get("etcd", {}))
    md += _resources(results.get("write", []), results.get("nats", []))
    plots = run.get("plots", [])
    md += ["## Plots", "", *[f"![{p[:-4].replace('_', ' ')}]({p})" for p in plots], ""]
    errors = results.get("errors", [])
    md += ["## Failed measurements", ""]
    md += [f"- **{e['step']}**: `{e['error'].splitlines()[0][:300]}`" for e in errors] or ["none"]
    return "\n".join(md) + "\n"


def _header(run: dict[str, Any]) -> list[str]:
    m = run["machine"]
    md = [
        f"- command: `{run['command']}`; {run['elapsed_s']:.0f} s wall; "
        f"{run['duration_s']:g} s per timed loop",
        f"- machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, "
        f"{m['disk']}, Linux {m['kernel']}, Python {m['python']}",
        f"- load average (1 min) before / after: {run['load_before']} / {run['load_after']}"
        + _load_during(run)
        + " (other work on the machine makes figures noisy)",
        f"- services: {run['services']}; S3 = SeaweedFS on loopback, etcd on loopback",
        f"- pipeline: {run['pipeline']}",
        f"- git: {run['git']}",
        "- MB = 10^6 bytes. Latency columns are p50 / p99 / p999 in ms (with < 1,000 "
        "samples p999 is the maximum).",
        "",
    ]
    return md


def _load_during(run: dict[str, Any]) -> str:
    """The range of the load average sampled as each step started."""
    loads = run.get("load_at_steps") or []
    if not loads:
        return ""
    return f"; during the run {min(loads)}-{max(loads)} ({len(loads)} samples, one per step)"


def _targets(results: dict[str, Any]) -> list[str]:
    targets = results.get("targets", [])
    rows = [
        [
            t["target"],
            _f(t["value"], 2),
            ", ".join(_f(v, 1) for v in t["rounds"]) or "-",
            t.get("floor", "-"),
            t["status"],
            t["by"],
        ]
        for t in targets
    ]
    md = [
        "## Write-pipeline targets",
        "",
        *_table(["target", "median", "per round", "same-run floor", "status", "by"], rows),
    ]
    rounds = [r for r in results.get("target_rounds", []) if "error" not in r]
    rows = []
    for r in rounds:
        c = r["ceiling"]
        for cell in r["cells"]:
            if cell["api"] == "write_async" and cell["entry_size"] == 1 << 20:
                rows.append(
                    [
                        str(r["round"]),
                        r["backend"],
                        f"{_f(c['mb_s'])} ({human_size(c['object_bytes'])}, "
                        f"{c['concurrency']} in flight)",
                        " / ".join(_f(x) for x in r.get("ceilings_mb_s", [])),
                        _f(cell["mb_s"]),
                        f"{cell['pct_of_ceiling']:.0f}%",
                    ]
                )
    md += [
        "Each round measures the raw write ceiling (best block-sized shape) right before and "
        "right after the target cells and divides by the better of the two:",
        "",
        *_table(
            [
                "round",
                "backend",
                "raw ceiling MB/s (best shape)",
                "raw before / after",
                "WP 1 MiB write_async MB/s",
                "ratio",
            ],
            rows,
        ),
    ]
    return md


def verdict_lines(results: dict[str, Any]) -> list[str]:
    """Every judged target on one line each: met or missed, the value, the same-run floor."""
    judged = [*results.get("targets", []), *_suite_verdicts(results)]
    return [
        f"{v['status'].upper():>12}  {v['target']}: {_f(v['value'], 2)} ({v['by'] or '-'}; "
        f"{v.get('floor', '-')})"
        for v in judged
    ]


def _suite_verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdicts the read, cost, sync, quorum and checksum suites judged (the write
    targets aside)."""
    judged = [
        v
        for section in ("read", "cost", "sync", "quorum")
        for cell in results.get(section, [])
        for v in cell.get("verdicts", [])
    ]
    return judged + results.get("checksum", {}).get("verdicts", [])


def _goals(results: dict[str, Any]) -> list[str]:
    """The read, checksum and cost targets, each beside the same-run floor it was derived from."""
    judged = _suite_verdicts(results)
    if not judged:
        return []
    rows = [
        [v["target"], _f(v["value"], 2), _f(v["goal"], 2), v["floor"], v["status"], v["by"]]
        for v in judged
    ]
    return [
        "## Sync write, read, S3 checksum, cost and QuorumBuffer targets",
        "",
        *_table(["target", "value", "goal", "same-run floor", "status", "by"], rows),
    ]


def _ceilings(ceilings: dict[str, Any]) -> list[str]:
    md = ["## Raw backend ceilings (same run)", ""]
    rows = []
    for backend, c in ceilings.items():
        if "error" in c:
            rows.append([backend, "failed", "", "", "", c["error"][:80]])
            continue
        for case in c["cases"]:
            verb = {
                "write": "write+fsync" if backend == "local" else "PUT",
                "read": "read" if backend == "local" else "GET",
            }[case["op"]]
            rows.append(
                [
                    backend,
                    verb,
                    human_size(case["object_bytes"]),
                    f"{case['processes']} proc, {case['concurrency']} in flight",
                    _f(case["mb_s"]),
                    _lat(case),
                ]
            )
    md += _table(["backend", "op", "object", "parallelism", "MB/s", "latency per op"], rows)
    md += [
        "The ceiling used for ratios is the best block-sized figure of each backend; "
        "the 1 MiB serial row is the familiar one-file-at-a-time scale, and the 1 KiB serial "
        "row's latency is the floor under a synchronous append (one durable object each).",
        "",
    ]
    return md


def _seed(results: dict[str, Any]) -> list[str]:
    md = ["## The seed's table beside ours, as ratios to each backend's ceiling", ""]
    rows = []
    for s in SEED:
        ratio = "-"
        if s["ceiling"]:
            lo, hi = s["ceiling"]
            ratio = (
                f"{100 * s['mb_s'] / hi:.0f}%"
                if lo == hi
                else (f"{100 * s['mb_s'] / hi:.0f}-{100 * s['mb_s'] / lo:.0f}%")
            )
            ceiling = f"{lo}" if lo == hi else f"{lo}-{hi}"
        else:
            ceiling = "-"
        rows.append([f"seed: {s['system']}", _f(s["mb_s"]), ceiling, ratio, _f(s["latency_ms"])])
    writes = results.get("write", [])
    ceilings = results.get("ceilings", {})
    for backend in ("local", "s3"):
        ceiling = ceilings.get(backend, {}).get("write_ceiling_mb_s")
        best = max(
            (c for c in _ok(writes) if c["backend"] == backend and c["api"] == "write_async"),
            key=lambda c: c["mb_s"],
            default=None,
        )
        one = _find(writes, backend=backend, api="write_async", entry_size=1 << 20, producers=1)
        sync = _find(writes, backend=backend, api="write", entry_size=1 << 10, producers=1)
        p50 = _f(sync["latency"]["p50_ms"], 2) if sync else "-"
        for label, cell in (("1 MiB, 1 producer", one), ("best cell", best)):
            if cell is None:
                continue
            detail = f"{human_size(cell['entry_size'])} x{cell['producers']}"
            rows.append(
                [
                    f"ours: WP {backend} ({label}: {detail})",
                    _f(cell["mb_s"]),
                    _f(ceiling),
                    f"{cell.get('pct_of_ceiling', 0):.0f}%",
                    f"{p50} (sync 1 KiB p50)",
                ]
            )
    for t in results.get("targets", []):
        if t["metric"] == "pct_of_ceiling" and t["value"] is not None:
            rows.append(
                [
                    f"ours: {t['target'].split(' >=')[0]} (median of paired rounds)",
                    "-",
                    "-",
                    f"{t['value']:.0f}%",
                    "-",
                ]
            )
    for sync in ("default", "always"):
        cell = max(
            (
                c
                for c in _ok(results.get("nats", []))
                if c["sync"] == sync and c["api"] == "publish_async"
            ),
            key=lambda c: c["mb_s"],
            default=None,
        )
        pub = _find(results.get("nats", []), sync=sync, api="publish", entry_size=1 << 10)
        local = ceilings.get("local", {}).get("write_ceiling_mb_s")
        if cell:
            pct = f"{100 * cell['mb_s'] / local:.0f}%" if local else "-"
            rows.append(
                [
                    f"peer: NATS JetStream file, sync={sync} ({human_size(cell['entry_size'])})",
                    _f(cell["mb_s"]),
                    _f(local),
                    pct,
                    f"{_f(pub['latency']['p50_ms'], 2) if pub else '-'} (publish 1 KiB p50)",
                ]
            )
    md += _table(["system", "MB/s", "backend ceiling MB/s", "% of ceiling", "latency ms"], rows)
    md += [
        "Seed latencies are its own (different machine, network and sizes); ours are "
        "measured here. NATS writes to the local disk, so its ratio uses the local ceiling.",
        "",
    ]
    return md


def _writes(cells: list[dict[str, Any]]) -> list[str]:
    md = ["## Write throughput and latency", ""]
    rows = []
    for c in cells:
        name = [
            c.get("backend", "?"),
            c.get("api", "?"),
            human_size(c.get("entry_size", 0)),
            str(c.get("producers", "?")),
        ]
        if "error" in c:
            rows.append([*name, "failed", "", "", "", ""])
            continue
        rows.append(
            [
                *name,
                _f(c["mb_s"]),
                _f(c["entries_s"]),
                _f(c.get("pct_of_ceiling")),
                _lat(c),
                f"{c['blocks']} x {approx_size(c['mean_block_bytes'])}",
            ]
        )
    md += _table(
        [
            "backend",
            "API",
            "entry",
            "producers",
            "MB/s",
            "entries/s",
            "% ceiling",
            "latency p50/p99/p999 ms",
            "blocks x mean size",
        ],
        rows,
    )
    md += [
        "`write_async` latency is submit-to-ack of sampled appends under full load "
        "(queueing included); `write` and `write_batch` latency is per call.",
        "",
    ]
    return md


def _reads(cells: list[dict[str, Any]], ceilings: dict[str, Any]) -> list[str]:
    md = ["## Reads", ""]
    rows = []
    for c in cells:
        name = [c.get("backend", "?"), c.get("mode", "?"), human_size(c.get("entry_size", 0))]
        if "error" in c:
            rows.append([*name, "failed", "", "", "", ""])
        elif c["mode"] == "tail_latency":
            rows.append(
                [
                    *name,
                    "-",
                    "-",
                    "-",
                    _lat(c, "ack_to_read"),
                    f"append to read {_lat(c, 'append_to_read')}; "
                    f"{c['read_before_ack']} of {c['entries']} read before the ack",
                ]
            )
        else:
            extra = (
                f"GET/LIST per GB {c['requests_per_gb']}"
                if c["mode"] == "sealed"
                else f"writer {_f(c['writer_mb_s'])} MB/s; all read {c['catch_up_ms']} ms "
                "after the last ack"
            )
            rows.append(
                [
                    *name,
                    _f(c["mb_s"]),
                    _f(c["entries_s"]),
                    _f(c.get("pct_of_ceiling")),
                    _lat(c),
                    extra,
                ]
            )
    md += _table(
        [
            "backend",
            "mode",
            "entry",
            "MB/s",
            "entries/s",
            "% read ceiling",
            "latency p50/p99/p999 ms",
            "notes",
        ],
        rows,
    )
    md += [
        "Sealed: one reader over a closed log (local files evicted from the page cache "
        "first), latency per `read_next`. Tail: the reader waits at the start while one "
        "producer writes. Tail latency: entries written with `write` at 200/s; latency "
        "from the writer's ack (and from the append call) to the waiting reader having it.",
        "",
    ]
    return md


def _peer(results: dict[str, Any]) -> list[str]:
    nats = results.get("nats", [])
    writes = results.get("write", [])
    md = ["## Peer: NATS JetStream (file storage, one replica) beside Woodpecker", ""]
    if not nats:
        return [*md, "not measured", ""]
    rows = []
    sizes = sorted({c["entry_size"] for c in nats if "entry_size" in c})
    for size in sizes:
        for label, cell in (
            (
                "WP local write_async",
                _find(writes, backend="local", api="write_async", entry_size=size, producers=1),
            ),
            (
                "WP S3 write_async",
                _find(writes, backend="s3", api="write_async", entry_size=size, producers=1),
            ),
            (
                "NATS sync=default publish_async",
                _find(nats, sync="default", api="publish_async", entry_size=size),
            ),
            (
                "NATS sync=always publish_async",
                _find(nats, sync="always", api="publish_async", entry_size=size),
            ),
            (
                "WP local write",
                _find(writes, backend="local", api="write", entry_size=size, producers=1),
            ),
            ("WP S3 write", _find(writes, backend="s3", api="write", entry_size=size, producers=1)),
            (
                "NATS sync=default publish",
                _find(nats, sync="default", api="publish", entry_size=size),
            ),
            (
                "NATS sync=always publish",
                _find(nats, sync="always", api="publish", entry_size=size),
            ),
        ):
            if cell:
                rows.append(
                    [human_size(size), label, _f(cell["mb_s"]), _f(cell["entries_s"]), _lat(cell)]
                )
    md += _table(["entry", "system / API", "MB/s", "entries/s", "latency p50/p99/p999 ms"], rows)
    server = next((c for c in _ok(nats)), None)
    md += [
        "Durability of each:",
        "- Woodpecker local: ack after the block file and its directory are fsynced and the "
        "block is committed in etcd (survives an OS crash).",
        "- Woodpecker S3: ack after the PUT returned and the etcd commit (as durable as the "
        "object store; here one SeaweedFS volume on loopback, no replication).",
        f"- NATS sync=default: {DURABILITY['default']}.",
        f"- NATS sync=always: {DURABILITY['always']}.",
        f"- server: {server['server'] if server else '-'}; one client process, one stream "
        "(the rows above are one producer each).",
        "",
    ]
    return md


def _etcd(etcd: dict[str, Any]) -> list[str]:
    md = ["## Metadata: etcd bytes per GB written", ""]
    if "db_size_before" not in etcd:
        return [*md, f"not measured ({etcd.get('error', 'no etcd figures')})", ""]
    mib = 1 << 20
    row = [
        f"{etcd['db_size_before'] / mib:,.1f} MiB",
        f"{etcd['db_size_after'] / mib:,.1f} MiB",
        f"{etcd['write_steps_payload_bytes'] / 1e9:,.2f}",
        f"{etcd['write_steps_db_growth_bytes'] / mib:,.1f} MiB",
        _f(etcd["db_bytes_per_gb"]),
        _f(etcd["revisions_per_gb"]),
    ]
    md += _table(
        [
            "etcd db size before the run",
            "etcd db size after the run",
            "GB written by the write and targets suites",
            "db growth during them",
            "etcd bytes per GB written",
            "etcd revisions per GB written",
        ],
        [row],
    )
    md += [
        "From etcd's status API around every write and targets cell (its database file, "
        "which the quota limits; it grows by whole pages and reuses pages a compaction "
        "freed, so the sum over the cells is the figure, one cell's growth is rough). "
        "Each cell's growth and "
        "revisions are in report.json. Every client of that etcd counts: "
        "figures from a shared etcd include other work.",
        "",
    ]
    return md


def _cost(cells: list[dict[str, Any]]) -> list[str]:
    md = ["## Cost: S3 requests per GB and $/month at list prices", ""]
    rows = []
    for c in cells:
        if "error" in c:
            rows.append([_f(c.get("target_mb_s")), _f(c.get("linger_ms", 0.0)), "failed"])
            rows[-1] += [""] * 6
            continue
        m = c["monthly"]
        rows.append(
            [
                _f(c["target_mb_s"]),
                _f(c.get("linger_ms", 0.0)) + (" (S3 default)" if c.get("default") else ""),
                _f(c["achieved_mb_s"]),
                f"{_f(c.get('ack_p50_ms'))} / {_f(c.get('ack_p99_ms'))}",
                approx_size(c["mean_block_bytes"]),
                _f(c["puts_per_gb"]),
                _f(c["gets_per_gb"]),
                _f(c["lists_per_gb"]),
                f"${m['put_usd']:,.2f} + ${m['get_usd']:,.2f} = ${m['total_usd']:,.2f}",
            ]
        )
    md += _table(
        [
            "log rate MB/s",
            "`uploader.linger_ms`",
            "achieved MB/s",
            "ack p50 / p99 ms",
            "mean block",
            "PUT/GB",
            "GET/GB (read once)",
            "LIST/GB",
            "$/month PUT + GET",
        ],
        rows,
    )
    md += [
        "Prices: PUT $0.005 per 1,000, GET $0.0004 per 1,000 (S3 Standard list prices); "
        "16 KiB entries written with `write_async` at the paced rate, read back once; "
        "`uploader.linger_ms` lets a block that is not full wait for more entries "
        "(S3 default: lingers; 0: each block goes out as soon as an upload slot is free). "
        "Storage GB-months and etcd are not included.",
        "",
    ]
    return md


def _quorum(cells: list[dict[str, Any]]) -> list[str]:
    """QuorumBuffer mode beside MemoryBuffer mode and NATS: latency, throughput, cost."""
    if not cells:
        return []
    md = [
        "## QuorumBuffer mode (3 nodes on loopback, ack 2) beside MemoryBuffer mode",
        "",
        "Ack latency of a synchronous 1 KiB `write` (one producer; NATS: awaited `publish`):",
        "",
    ]
    rows = []
    for c in cells:
        if c.get("kind") != "latency":
            continue
        if "error" in c:
            rows.append([c["name"], "failed", "", "", ""])
            continue
        usage = c.get("usage", {})
        cpu = ", ".join(f"{role} {_f(u['cpu_s'], 2)}" for role, u in usage.items())
        floor = _lat(c, "fdatasync") if "fdatasync" in c else ""
        rows.append([c["name"], _lat(c), _f(c.get("entries_s")), floor, cpu])
    md += _table(
        [
            "setup",
            "p50 / p99 / p999 ms",
            "writes/s",
            "1 KiB fdatasync of the nodes' disk, ms",
            "CPU s by process",
        ],
        rows,
    )
    rows = []
    for c in cells:
        if c.get("kind") != "throughput":
            continue
        if "error" in c:
            rows.append([human_size(c["entry_size"]), "failed", "", "", ""])
            continue
        q_nodes = [r["usage"].get("nodes", {}).get("cpu_s_per_gb") for r in c["quorum"]]
        rows.append(
            [
                human_size(c["entry_size"]),
                f"{_f(c['memory_mb_s'])} ({', '.join(_f(r['mb_s']) for r in c['memory'])})",
                f"{_f(c['quorum_mb_s'])} ({', '.join(_f(r['mb_s']) for r in c['quorum'])})",
                f"{100 * c['ratio']:.0f}%",
                ", ".join(_f(x, 2) for x in q_nodes),
            ]
        )
    md += [
        "Throughput of `write_async` on S3 (one producer; median MB/s of alternating rounds, "
        "each round in brackets; QuorumBuffer counts what the nodes acked, their flushes to "
        "S3 run behind it):",
        "",
        *_table(
            [
                "entry",
                "MemoryBuffer MB/s",
                "QuorumBuffer MB/s",
                "QuorumBuffer / MemoryBuffer",
                "nodes' CPU s/GB",
            ],
            rows,
        ),
    ]
    rows = []
    for c in cells:
        if c.get("kind") != "cost":
            continue
        name = (
            f"QuorumBuffer {c['durability']}"
            if c.get("durability")
            else f"MemoryBuffer, `uploader.linger_ms` {_f(c.get('linger_ms'))}"
        )
        if "error" in c:
            rows.append([name, "failed", "", "", "", ""])
            continue
        m = c["monthly"]
        rows.append(
            [
                name,
                _f(c["achieved_mb_s"]),
                f"{_f(c['ack_p50_ms'], 2)} / {_f(c['ack_p99_ms'], 2)}",
                approx_size(c["mean_block_bytes"]),
                _f(c["puts_per_gb"]),
                f"${m['total_usd']:,.2f}",
            ]
        )
    md += [
        "Cost and latency at 10 MB/s of 16 KiB entries on S3, default settings (the "
        "QuorumBuffer PUTs are the nodes' flushes, counted after they drained):",
        "",
        *_table(
            [
                "setup",
                "achieved MB/s",
                "ack p50 / p99 ms",
                "mean object",
                "PUT/GB",
                "$/month PUT + GET",
            ],
            rows,
        ),
    ]
    return md


def _resources(writes: list[dict[str, Any]], nats: list[dict[str, Any]]) -> list[str]:
    md = ["## Resources: CPU seconds per GB and peak RSS per process", ""]
    rows = []
    picks = [c for c in _ok(writes) if c["producers"] == 1 and c["api"] == "write_async"]
    picks += [c for c in _ok(nats) if c["api"] == "publish_async"]
    for c in picks:
        label = (
            f"WP {c['backend']} write_async {human_size(c['entry_size'])}"
            if c["suite"] == "write"
            else f"NATS sync={c['sync']} {human_size(c['entry_size'])}"
        )
        for role, u in c["usage"].items():
            rows.append(
                [
                    label,
                    role,
                    str(u["processes"]),
                    _f(u["cpu_s"], 2),
                    _f(u.get("cpu_s_per_gb"), 2),
                    _f(u["peak_rss_mib"]),
                ]
            )
    md += _table(["measurement", "process", "count", "CPU s", "CPU s/GB", "peak RSS MiB"], rows)
    md += [
        "RSS includes the shared-memory arena pages a process touched (a producer's 64 MiB "
        "arena is mapped by it and by the uploaders), so peaks are per process, not additive."
        " Every cell's figures are in report.json.",
        "",
    ]
    return md
