"""docs/operations.md and its Grafana dashboard name only metrics the logstore exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import workers.maintenance  # registers every metric, maintenance action kinds included

ROOT = Path(workers.maintenance.__file__).resolve().parent.parent
DOC = ROOT / "docs" / "operations.md"
DASHBOARD = ROOT / "docs" / "grafana" / "woodpecker-logstore.json"
NAME = re.compile(r"\bwoodpecker_[a-z_]+")


def exported() -> set[str]:
    """Every sample name the registry exposes (counters' _total, histograms' _bucket ...)."""
    return {
        s.name
        for family in REGISTRY.collect()
        if family.name.startswith("woodpecker_")
        for s in family.samples
    }


def families() -> set[str]:
    return {
        f.name + ("_total" if f.type == "counter" else "")
        for f in REGISTRY.collect()
        if f.name.startswith("woodpecker_")
    }


def test_dashboard_parses_and_every_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= len(families()) - 1
    names = exported()
    for expr in exprs:
        used = NAME.findall(expr)
        assert used, expr
        for name in used:
            assert name in names, f"{expr!r} names {name}, which the logstore does not export"
    every_metric = {n for e in exprs for n in NAME.findall(e)}
    for family in families():
        assert any(n.startswith(family.removesuffix("_total")) for n in every_metric), family


def test_doc_lists_every_metric_and_its_alerts_name_exported_metrics() -> None:
    text = DOC.read_text()
    listed = set(re.findall(r"^\| `(woodpecker_[a-z_]+)` \|", text, re.MULTILINE))
    assert listed == families()
    names = exported()
    alerts = re.findall(r"^\s+expr: (.+)$", text, re.MULTILINE)
    assert len(alerts) >= 6
    for expr in alerts:
        for name in NAME.findall(expr):
            assert name in names, f"alert {expr!r} names {name}, which is not exported"
