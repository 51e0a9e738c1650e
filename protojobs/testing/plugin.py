"""pytest plugin (entry point `pytest11`): real Kafka and toxiproxy as session fixtures.

Fixtures
- `kafka`: a single combined broker+controller node (`Cluster`), started once per session.
- `kafka_cluster`: three nodes, replication factor 3, min.insync.replicas 2.
- `toxiproxy`: the toxiproxy server with one client proxy per broker of both clusters; every
  proxy is re-enabled and every toxic removed after each test.
- `fresh_prefix` / `fresh_topic`: names no other test uses (topics, groups).

State (pidfiles, logs, data) lives in `<rootdir>/.protojobs/test`; ports start at
`$PROTOJOBS_TEST_PORT_BASE` (default 29100): +0 single node, +100 cluster, +300 toxiproxy API.
Every process is stopped at session end, and at interpreter exit as a last resort.
"""

from __future__ import annotations

import atexit
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from protojobs.local.cluster import Cluster, all_pidfiles, stop_pidfiles
from protojobs.local.toxiproxy import Proxy, Toxiproxy


def _state_root(config: pytest.Config) -> Path:
    return Path(os.environ.get("PROTOJOBS_TEST_STATE", config.rootpath / ".protojobs" / "test"))


def _port_base() -> int:
    return int(os.environ.get("PROTOJOBS_TEST_PORT_BASE", "29100"))


def pytest_configure(config: pytest.Config) -> None:
    root = _state_root(config)
    stop_pidfiles(all_pidfiles([root]), timeout=10)  # leftovers of a killed earlier run
    atexit.register(lambda: stop_pidfiles(all_pidfiles([root]), timeout=10))


@pytest.fixture(scope="session")
def toxiproxy_server(pytestconfig: pytest.Config) -> Iterator[Toxiproxy]:
    server = Toxiproxy(_state_root(pytestconfig) / "toxiproxy", port=_port_base() + 300).start()
    yield server
    server.stop()


def _start(pytestconfig: pytest.Config, server: Toxiproxy, name: str, nodes: int, offset: int) -> Cluster:
    cluster = Cluster(_state_root(pytestconfig) / name, nodes=nodes, base_port=_port_base() + offset)
    for proxy_name, listen, upstream in cluster.proxy_routes():
        server.create(proxy_name, listen, upstream)
    return cluster.start()


@pytest.fixture(scope="session")
def kafka(pytestconfig: pytest.Config, toxiproxy_server: Toxiproxy) -> Iterator[Cluster]:
    cluster = _start(pytestconfig, toxiproxy_server, "single", 1, 0)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def kafka_cluster(pytestconfig: pytest.Config, toxiproxy_server: Toxiproxy) -> Iterator[Cluster]:
    cluster = _start(pytestconfig, toxiproxy_server, "cluster", 3, 100)
    yield cluster
    cluster.stop()


class Faults:
    """The toxiproxy handle a test gets: client proxies by cluster and node."""

    def __init__(self, server: Toxiproxy) -> None:
        self.server = server

    def client_proxy(self, cluster: Cluster, node: int = 0) -> Proxy:
        return self.server.proxy(f"{cluster.state_dir.name}-client-{node + 1}")

    def client_proxies(self, cluster: Cluster) -> list[Proxy]:
        return [self.client_proxy(cluster, i) for i in range(cluster.nodes)]

    def reset(self) -> None:
        self.server.reset()


@pytest.fixture
def toxiproxy(toxiproxy_server: Toxiproxy) -> Iterator[Faults]:
    faults = Faults(toxiproxy_server)
    faults.reset()
    yield faults
    faults.reset()


@pytest.fixture
def fresh_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix (and group-name stem) unique to this test: `t-<test>-<random>-`."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40].strip("-").lower()
    return f"t-{stem}-{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def fresh_topic(fresh_prefix: str) -> Callable[[str], str]:
    """`fresh_topic("orders")` -> a topic name unique to this test."""

    def name(stem: str = "topic") -> str:
        return f"{fresh_prefix}{stem}"

    return name
