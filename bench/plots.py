"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from stats import human_size

STYLE = {1: "-o", 2: "--s", 4: ":^"}


def _ok(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cells if "error" not in c]


def _series(cells: list[dict[str, Any]], key: str, **want: Any) -> tuple[list[int], list[float]]:
    chosen = sorted(
        (c for c in _ok(cells) if all(c.get(k) == v for k, v in want.items())),
        key=lambda c: c["entry_size"],
    )
    return [c["entry_size"] for c in chosen], [_get(c, key) for c in chosen]


def _get(cell: dict[str, Any], key: str) -> float:
    value: Any = cell
    for part in key.split("."):
        value = value[part]
    return value


def _size_axis(ax: Any, sizes: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([human_size(s) for s in sizes], fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


def write_throughput(results: dict[str, Any], path: Path) -> None:
    writes, nats = results.get("write", []), results.get("nats", [])
    if not _ok(writes) and not _ok(nats):
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, backend in zip(axes, ("local", "s3"), strict=True):
        sizes = sorted({c["entry_size"] for c in _ok(writes) if c["backend"] == backend})
        for p, style in STYLE.items():
            x, y = _series(writes, "mb_s", backend=backend, api="write_async", producers=p)
            if x:
                ax.plot(x, y, style, label=f"write_async x{p}")
        for api, style in (("write", "-x"), ("write_batch", "-d")):
            x, y = _series(writes, "mb_s", backend=backend, api=api, producers=1)
            if x:
                ax.plot(x, y, style, label=f"{api} x1")
        if backend == "local":
            for sync, style in (("default", "-.v"), ("always", "-.P")):
                x, y = _series(nats, "mb_s", sync=sync, api="publish_async")
                if x:
                    ax.plot(x, y, style, color="grey", label=f"NATS sync={sync}")
        ceiling = results.get("ceilings", {}).get(backend, {})
        if ceiling.get("write_ceiling_mb_s"):
            ax.axhline(
                ceiling["write_ceiling_mb_s"],
                color="red",
                linestyle="--",
                label="raw ceiling (block size, parallel)",
            )
            ax.axhline(
                ceiling["write_1mib_serial_mb_s"],
                color="salmon",
                linestyle=":",
                label="raw 1 MiB serial",
            )
        if sizes:
            _size_axis(ax, sizes)
        _label(ax, f"Woodpecker write throughput, {backend}", "entry size", "MB/s (acked)")
    _save(fig, path)


def write_latency(results: dict[str, Any], path: Path) -> None:
    writes, nats = results.get("write", []), results.get("nats", [])
    if not _ok(writes) and not _ok(nats):
        return
    fig, ax = plt.subplots(figsize=(8, 4.8))
    sizes: set[int] = set()
    for backend, color in (("local", "tab:blue"), ("s3", "tab:orange")):
        for q, style in (("p50_ms", "-o"), ("p99_ms", "--o")):
            x, y = _series(writes, f"latency.{q}", backend=backend, api="write", producers=1)
            sizes.update(x)
            if x:
                ax.plot(x, y, style, color=color, label=f"WP {backend} write {q[:3]}")
    for sync, color in (("default", "grey"), ("always", "black")):
        for q, style in (("p50_ms", "-.v"), ("p99_ms", ":v")):
            x, y = _series(nats, f"latency.{q}", sync=sync, api="publish")
            sizes.update(x)
            if x:
                ax.plot(x, y, style, color=color, label=f"NATS sync={sync} {q[:3]}")
    if sizes:
        _size_axis(ax, sorted(sizes))
    ax.set_yscale("log")
    _label(ax, "Synchronous append latency (one producer)", "entry size", "ms")
    _save(fig, path)


def read_throughput(results: dict[str, Any], path: Path) -> None:
    cells = [c for c in _ok(results.get("read", [])) if c["mode"] in ("sealed", "tail")]
    if not cells:
        return
    fig, ax = plt.subplots(figsize=(8, 4.8))
    labels = [f"{c['backend']} {c['mode']}\n{human_size(c['entry_size'])}" for c in cells]
    ax.bar(range(len(cells)), [c["mb_s"] for c in cells], color="tab:green")
    for backend, color in (("local", "red"), ("s3", "orange")):
        ceiling = results.get("ceilings", {}).get(backend, {}).get("read_ceiling_mb_s")
        if ceiling:
            ax.axhline(ceiling, color=color, linestyle="--", label=f"raw {backend} read ceiling")
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels(labels, fontsize=7)
    _label(ax, "Read throughput (one reader)", "", "MB/s")
    _save(fig, path)


def cost(results: dict[str, Any], path: Path) -> None:
    cells = _ok(results.get("cost", []))
    if not cells:
        return
    fig, ax = plt.subplots(figsize=(9, 4.8))
    x = range(len(cells))
    put = [c["monthly"]["put_usd"] for c in cells]
    get = [c["monthly"]["get_usd"] for c in cells]
    ax.bar(x, put, label="PUT")
    ax.bar(x, get, bottom=put, label="GET (read once)")
    ax.set_xticks(list(x))
    ax.set_xticklabels(
        [
            f"{c['target_mb_s']} MB/s\nlinger {c.get('linger_ms', 0):.0f} ms"
            f"\n{c['puts_per_gb']:.0f} PUT/GB"
            for c in cells
        ],
        fontsize=7,
    )
    _label(ax, "S3 request cost of one log", "", "$ per month (requests only)")
    _save(fig, path)


def _label(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(results: dict[str, Any], out: Path) -> list[str]:
    """Every plot the data allows; returns the file names written."""
    made = []
    for name, draw in (
        ("write_throughput.png", write_throughput),
        ("write_latency.png", write_latency),
        ("read_throughput.png", read_throughput),
        ("cost.png", cost),
    ):
        draw(results, out / name)
        if (out / name).exists():
            made.append(name)
    return made
