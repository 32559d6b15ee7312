"""Fixtures of the hot-path micro-benchmarks (``pytest bench/ --benchmark-only``).

The commit-txn benchmark needs the real etcd (``eval "$(scripts/services start)"``);
like the integration tests it fails, never skips, when etcd is not configured.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from woodpecker.config import Config


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
