"""Prometheus metrics of the logstore: off by default, scraped after a known workload."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

import woodpecker as wp
from woodpecker.config import Config

ROOT = Path(wp.__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def logstore_process(config: Config) -> psutil.Process:
    for proc in psutil.process_iter(["cmdline"]):
        if "workers.logstore" not in " ".join(proc.info["cmdline"] or []):
            continue
        try:
            if any(f.path == str(config.logstore_lock) for f in proc.open_files()):
                return proc
        except psutil.Error:
            continue
    raise AssertionError("no logstore process holds this config's lock")


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_metrics_are_off_by_default(make_config):
    config = make_config("local")
    assert config.metrics.port == 0
    with wp.Client(config) as client:
        client.open_log("quiet", create=True).open_writer().close()
        listening = [
            c for c in logstore_process(config).net_connections("inet") if c.status == "LISTEN"
        ]
        assert listening == []


def test_embedded_logstore_counts_a_known_workload_exactly(make_config):
    port = free_port()
    # retention.interval: one maintenance pass at start, none during the workload
    config = make_config("local", metrics_port=port, retention_interval=3600)
    with wp.Client(config) as client:
        log = client.open_log("metered", create=True)
        with log.open_writer() as w:
            for i in range(20):  # one batch, one block, one commit each
                w.write(b"x" * (100 + i))
            w.write_batch([b"y" * 10] * 30)  # one batch of 30 entries
            before_close = scrape(port)
        wait_for(lambda: scrape(port)[("woodpecker_etcd_txn_seconds_count", (("op", "seal"),))])
        after = scrape(port)
        meta = client.meta_store()
        segments = log.segments()
        blocks = sum(s.block_count for s in segments)
        stored = sum(b.size for s in segments for b in meta.list_blocks(log.log_id, s.segment_id))

    assert blocks == 21
    assert before_close[("woodpecker_appends_total", ())] == 50
    assert before_close[("woodpecker_append_bytes_total", ())] == stored
    assert before_close[("woodpecker_ack_latency_seconds_count", ())] == 21
    # on the local backend each block is appended to the segment's file, not put
    assert before_close[("woodpecker_object_requests_total", (("op", "append"),))] == 21
    assert before_close[("woodpecker_object_requests_total", (("op", "put"),))] == 0
    assert before_close[("woodpecker_etcd_txn_seconds_count", (("op", "create"),))] == 1
    assert before_close[("woodpecker_etcd_txn_seconds_count", (("op", "commit"),))] == 21
    assert before_close[("woodpecker_arena_used_bytes", ())] == 0
    assert before_close[("woodpecker_fenced_total", ())] == 0
    assert before_close[("woodpecker_uploader_restarts_total", ())] == 0
    assert after[("woodpecker_etcd_txn_seconds_count", (("op", "seal"),))] == 1
    # the first maintenance pass ran before the log existed: it listed, saw no segment
    assert after[("woodpecker_object_requests_total", (("op", "list"),))] >= 1
    assert after[("woodpecker_segments", (("state", "active"),))] == 0
    kinds = {dict(k[1])["kind"] for k in after if k[0] == "woodpecker_maintenance_actions_total"}
    assert "delete-orphans" in kinds  # every action kind is a series from the start


def test_standalone_logstore_serves_metrics_with_the_flag(make_config, config_env):
    port = free_port()
    config = make_config("s3", logstore_idle_exit=600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "woodpecker", "logstore", "--metrics-port", str(port)],
        env=config_env(config),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: config.logstore_socket.exists() and _answers(port), 60)
        with wp.Client(config) as client:
            with client.open_log("standalone", create=True).open_writer() as w:
                w.write_batch([b"z" * 1000] * 7)
            metrics = scrape(port)
        assert metrics[("woodpecker_appends_total", ())] == 7
        assert metrics[("woodpecker_object_requests_total", (("op", "put"),))] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert f"serving Prometheus metrics on http://127.0.0.1:{port}/metrics" in err.decode()


def test_metrics_port_in_use_is_a_clear_error(make_config, config_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config("local", logstore_idle_exit=600)
        result = subprocess.run(
            [sys.executable, "-m", "woodpecker", "logstore", "--metrics-port", str(port)],
            env=config_env(config),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True
