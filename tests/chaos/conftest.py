"""Fixtures of the reliability tests: run length (short in CI, ``--long``), seeds, fleets.

The short versions run inside the normal suite. The long ones run with
``scripts/chaos --long`` (``WOODPECKER_CHAOS_LONG=1``, or ``--chaos-long`` when
pytest is pointed at ``tests/chaos``); see ``chaos.scale``.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.services import EtcdCluster, Seaweed
from chaos.workload import Fleet, Plan


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-long",
        action="store_true",
        default=False,
        help="run the long reliability loops (also WOODPECKER_CHAOS_LONG=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--chaos-long", default=False):
        os.environ["WOODPECKER_CHAOS_LONG"] = "1"


@pytest.fixture
def rng() -> random.Random:
    """The random source of fault timing; its seed is printed (shown when a test fails).

    Reproduce a run with ``WOODPECKER_CHAOS_SEED=<seed>``.
    """
    seed = int(os.environ.get("WOODPECKER_CHAOS_SEED") or time.time_ns() % 1_000_000_007)
    print(f"chaos seed: {seed} (WOODPECKER_CHAOS_SEED={seed} reproduces the fault timing)")
    return random.Random(seed)


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator:
    """``fleet_factory(config, log_name, plan=Plan())``: producers that die with the test."""
    fleets: list[Fleet] = []

    def build(config, log_name: str, plan: Plan | None = None) -> Fleet:
        fleet = Fleet(config, log_name, tmp_path, plan or Plan())
        fleets.append(fleet)
        return fleet

    yield build
    for fleet in fleets:
        fleet.kill_all()


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A one-member etcd of this test only: it may be killed and restarted."""
    cluster = EtcdCluster(tmp_path / "etcd", size=1)
    yield cluster
    cluster.close()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A three-member etcd cluster on loopback ports."""
    cluster = EtcdCluster(tmp_path / "etcd3", size=3)
    yield cluster
    cluster.close()


@pytest.fixture
def private_seaweed(tmp_path: Path) -> Iterator[Seaweed]:
    """A SeaweedFS of this test only (every port moved): it may be killed and restarted."""
    server = Seaweed(tmp_path / "weed")
    yield server
    server.close()
