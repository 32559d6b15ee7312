"""Fixtures and plugins of the pytest-benchmark runs (``pytest bench/ --benchmark-only``).

The commit-txn benchmark and the throughput runs need the real services
(``eval "$(scripts/services start)"``); like the integration tests they fail, never
skip, when those are not configured. ``ratio_gate`` adds ``--benchmark-ratio-fail``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from ratio_gate import RatioGate, add_option

from woodpecker.config import Config


def pytest_addoption(parser: pytest.Parser) -> None:
    add_option(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(RatioGate(config), "ratio-gate")


@pytest.fixture
def etcd_config() -> Iterator[Config]:
    """A Config on the real etcd under a fresh prefix, deleted afterwards."""
    endpoints = os.environ.get("WOODPECKER_ETCD_ENDPOINTS")
    if not endpoints:
        pytest.fail('WOODPECKER_ETCD_ENDPOINTS unset; run: eval "$(scripts/services start)"')
    config = Config(env={}, etcd_endpoints=endpoints, etcd_prefix=f"/wp-bench/{uuid.uuid4().hex}")
    yield config
    import pyetcd

    host, _, port = endpoints.split(",")[0].rpartition(":")
    client = pyetcd.client(host=host, port=int(port), timeout=10)
    try:
        client.delete_prefix(config.etcd.prefix + "/")
    finally:
        client.close()
