"""A compacted log is plain Arrow: pyarrow, Polars and DuckDB read its objects whole."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import duckdb
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import woodpecker as wp
from woodpecker.cli import main

GRACE = 2.0


def test_a_log_compacted_by_gc_is_read_whole_by_pyarrow_polars_and_duckdb(
    make_config, monkeypatch, capsysbinary
):
    config = make_config(
        "local",
        segment_max_blocks=6,
        compaction_min_blocks=2,
        retention_orphan_grace=GRACE,
    )
    for flat, value in config.overrides().items():
        monkeypatch.setenv(
            f"WOODPECKER_{flat.upper()}", ",".join(value) if isinstance(value, list) else str(value)
        )
    payloads = [f"entry {i:03d} ".encode() * (i % 7 + 1) for i in range(40)]
    with wp.Client(config) as client:
        log = client.create_log("plain")
        with log.open_writer() as w:  # one block per sync write: 7 segments of up to 6 blocks
            for p in payloads:
                w.write(p)
    root = Path(config.storage.root) / "data" / str(log.log_id)
    with pytest.raises(pa.ArrowInvalid):  # control: blocks are IPC streams, not IPC files
        ds.dataset(root, format="ipc").to_table()

    assert main(["gc", "--json"]) == 0
    report = orjson.loads(capsysbinary.readouterr().out)
    assert len([a for a in report["actions"] if a["action"] == "compact-segment"]) == 7
    time.sleep(GRACE + 0.5)
    assert main(["gc"]) == 0  # the replaced block objects go once the grace passed
    capsysbinary.readouterr()

    files = sorted(root.rglob("*.arrow"), key=lambda f: (int(f.parent.name), f.name))
    assert len(files) == 7 and all(f.name.startswith("compacted-") for f in files)
    # every object read whole, in segment order, yields every entry once and in order
    tables = [pa.ipc.open_file(f).read_all() for f in files]
    assert pa.concat_tables(tables).column("payload").to_pylist() == payloads
    expected = collections.Counter(payloads)

    dataset = ds.dataset(root, format="ipc")
    assert collections.Counter(dataset.to_table().column("payload").to_pylist()) == expected

    scanned = pl.scan_ipc(sorted(map(str, root.rglob("*.arrow")))).collect()
    assert collections.Counter(scanned["payload"].to_list()) == expected
    read = pl.concat([pl.read_ipc(f) for f in files])
    assert read["payload"].to_list() == payloads

    rows = duckdb.sql("select payload, count(*) as n from dataset group by payload").fetchall()
    assert {bytes(p): n for p, n in rows} == expected

    # and Woodpecker's own reader still reads it by ranged, checksummed reads
    with wp.Client(config) as client:
        reader = client.open_log("plain").open_reader(wp.EARLIEST)
        with reader:
            assert reader.read_until(None).column("payload").to_pylist() == payloads
