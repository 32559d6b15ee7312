"""Shared fixtures: the real etcd and S3 servers started by ``scripts/services``.

Integration tests never skip: when the services are not configured or do not
answer, the fixture fails the test with the command that fixes it. Every test under
``tests/integration/`` carries the ``integration`` marker, given here by directory.
"""

from __future__ import annotations

import functools
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos.nodes import NodePool, NodePools, NodeProcess

from woodpecker.config import Config
from woodpecker.local_nodes import free_port

_HOW = 'start them with: eval "$(scripts/services start)"  (scripts/test does this)'
INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _service_settings() -> dict[str, str]:
    names = [
        "WOODPECKER_ETCD_ENDPOINTS",
        "WOODPECKER_S3_ENDPOINT",
        "WOODPECKER_S3_BUCKET",
        "WOODPECKER_S3_ACCESS_KEY",
        "WOODPECKER_S3_SECRET_KEY",
    ]
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.fail(f"integration services not configured ({', '.join(missing)} unset); {_HOW}")
    return {n: os.environ[n] for n in names}


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """Endpoints of the real etcd and S3 servers, checked to answer."""
    import minio
    import pyetcd

    settings = _service_settings()
    host, _, port = settings["WOODPECKER_ETCD_ENDPOINTS"].split(",")[0].rpartition(":")
    try:
        pyetcd.client(host=host, port=int(port), timeout=3).status()
    except Exception as e:
        pytest.fail(f"etcd at {host}:{port} does not answer ({e}); {_HOW}")
    try:
        s3 = minio.Minio(
            settings["WOODPECKER_S3_ENDPOINT"],
            access_key=settings["WOODPECKER_S3_ACCESS_KEY"],
            secret_key=settings["WOODPECKER_S3_SECRET_KEY"],
            secure=False,
        )
        if not s3.bucket_exists(settings["WOODPECKER_S3_BUCKET"]):
            pytest.fail(f"S3 bucket {settings['WOODPECKER_S3_BUCKET']} missing; {_HOW}")
    except pytest.fail.Exception:
        raise
    except Exception as e:
        pytest.fail(f"S3 at {settings['WOODPECKER_S3_ENDPOINT']} does not answer ({e}); {_HOW}")
    return settings


@pytest.fixture
def unique() -> str:
    """A name no other test (or earlier run) uses: isolates etcd prefixes and S3 prefixes."""
    return uuid.uuid4().hex[:12]


ConfigFactory = Callable[..., Config]


def _test_settings(
    services: dict[str, str], backend: str, root: Path, name: str
) -> dict[str, object]:
    """The settings of a deployment of the tests on the real services, named ``name``."""
    return {
        "storage_type": backend,
        "storage_root": str(root),
        "etcd_endpoints": services["WOODPECKER_ETCD_ENDPOINTS"],
        "etcd_prefix": f"/wp-test/{name}",
        "s3_endpoint": services["WOODPECKER_S3_ENDPOINT"],
        "s3_bucket": services["WOODPECKER_S3_BUCKET"],
        "s3_access_key": services["WOODPECKER_S3_ACCESS_KEY"],
        "s3_secret_key": services["WOODPECKER_S3_SECRET_KEY"],
        "s3_secure": False,
        "s3_prefix": f"wp-test/{name}",
        "retry_deadline": 5.0,
        # AF_UNIX paths are limited to 108 bytes: keep the socket out of deep tmp paths
        "logstore_socket": _socket(name),
        "logstore_idle_exit": 1.0,
        # acks as soon as the block is stored, on S3 too (its default lingers for fewer
        # PUTs, proven in test_write_pipeline): keeps the suite's sync writes fast
        "uploader_linger_ms": 0.0,
    }


def _socket(name: str) -> str:
    return f"/tmp/wp-test-{name}/logstore.sock"


@pytest.fixture
def make_config(services: dict[str, str], tmp_path: Path, unique: str) -> ConfigFactory:
    """Build a Config on the real services, isolated under a per-test prefix.

    ``make_config("s3")`` or ``make_config("local")``; keywords override anything.
    """

    def build(backend: str = "local", **overrides: object) -> Config:
        settings = _test_settings(services, backend, tmp_path / "root", unique)
        settings.update(overrides)
        return Config(env={}, **settings)

    return build


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    """Runs a test once per storage backend."""
    return request.param


@pytest.fixture(scope="session")
def config_env() -> Callable[[Config], dict[str, str]]:
    """The environment of a subprocess (``python -m woodpecker ...``) that runs this checkout
    with ``config`` as WOODPECKER_* variables, as an operator would set them."""
    root = str(Path(__file__).resolve().parent.parent)

    def build(config: Config) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": root, **config.environment()}

    return build


@pytest.fixture
def start_node(
    make_config: ConfigFactory, config_env: Callable[[Config], dict[str, str]], tmp_path: Path
) -> Iterator[Callable[..., NodeProcess]]:
    """Start ``woodpecker node`` processes on this test's config; killed at the end."""
    started: list[NodeProcess] = []

    def start(node_id: str = "n1", port: int = 0, **overrides: object) -> NodeProcess:
        port = port or free_port()
        config = make_config(node_listen=f"127.0.0.1:{port}", node_id=node_id, **overrides)
        node = NodeProcess(config, config_env(config), tmp_path / f"node-{len(started)}.log")
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop(signal.SIGKILL)
        node.meta.close()


@pytest.fixture(scope="session")
def node_pools(
    services: dict[str, str],
    config_env: Callable[[Config], dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NodePools]:
    pools = NodePools(functools.partial(_test_settings, services), config_env, tmp_path_factory)
    yield pools
    pools.close()


@pytest.fixture
def quorum_pool(node_pools: NodePools, backend: str, unique: str) -> Iterator[NodePool]:
    """Three registered quorum nodes (memory durability) of a deployment on ``backend``,
    shared with the other tests that leave them as they found them.

    ``quorum_pool.config(**overrides)`` is a quorum-mode configuration of that deployment
    (with this test's own logstore); ``kill``, ``terminate``, ``restart`` and ``spare``
    change the pool, which is then replaced before the next test. Nodes with other
    settings (disk durability, flush sizes) come from ``start_node``.
    """
    pool = node_pools.get(backend)
    pool.logstore_socket = _socket(unique)
    yield pool
    node_pools.release(backend)
