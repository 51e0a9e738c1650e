"""pytest plugin (entry point `pytest11`): real Kafka and toxiproxy as session fixtures.

Fixtures (prefixed `protojobs_`, so they do not collide with a project's own)
- `protojobs_kafka`: a single combined broker+controller node (`Cluster`), started once per session.
- `protojobs_kafka_cluster`: three nodes, replication factor 3, min.insync.replicas 2.
- `protojobs_toxiproxy`: the toxiproxy server (`protojobs_toxiproxy_server`) with one client
  proxy per broker of both clusters; every proxy is re-enabled and every toxic removed after
  each test.
- `protojobs_fresh_prefix` / `protojobs_fresh_topic`: names no other test uses (topics, groups).
- `protojobs_worker`: `protojobs_worker(app)` (a `protojobs.App`, or a Settings whose handlers
  jobs.toml names) runs a worker and the delay router in threads against the real broker;
  `.drain(timeout=...)` waits until every job (retries included) is finished and committed.
The unprefixed names of the previous release (`kafka`, `kafka_cluster`, `toxiproxy`,
`toxiproxy_server`, `fresh_prefix`, `fresh_topic`) still work for this release, with a
DeprecationWarning.

State (pidfiles, logs, data) lives in `<rootdir>/.protojobs/test` (or $PROTOJOBS_TEST_STATE);
ports start at `$PROTOJOBS_TEST_PORT_BASE` (default 29100): +0 single node, +100 cluster,
+300 toxiproxy API. Kafka comes from the checkout's `.cache` or, installed from a wheel, from
~/.cache/protojobs (fetched with Maven on first use; see `protojobs.local.cluster.cache_dir`).

Whose processes are stopped: the plugin sets $PROTOJOBS_OWNER to its session (pid, start time,
project directory), so every broker and toxiproxy started during the session records it as
owner beside its pidfile (`protojobs.local.pidfiles`). At interpreter exit, as a last resort, the
session stops the processes under the state directory that it started (its owner, or its
children); when the fixtures (or a test, through `_state_root`) first use the state directory,
it stops what a killed earlier session of the same project left behind there. Nothing else is
touched: a project that installs protojobs
but does not use these fixtures, another live session, a `protojobs broker` or another project's
processes are never signalled.
"""

from __future__ import annotations

import atexit
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from protojobs.local.cluster import Cluster
from protojobs.local.pidfiles import (
    OWNER_ENV,
    Owner,
    all_pidfiles,
    left_behind,
    started_by,
    stop_pidfiles,
)
from protojobs.local.toxiproxy import Proxy, Toxiproxy

if TYPE_CHECKING:
    from protojobs.testing.draining import DrainingWorker

_OWNER: dict[str, Owner] = {}  # "session": this process's session, set by pytest_configure
_AT_EXIT: set[Path] = set()  # state directories whose processes of this session _stop_own stops
_CLEANED: set[Path] = set()  # state directories already cleared of a killed session's leftovers


def _state_path(config: pytest.Config) -> Path:
    return Path(os.environ.get("PROTOJOBS_TEST_STATE", config.rootpath / ".protojobs" / "test"))


def _state_root(config: pytest.Config) -> Path:
    """The state directory, for fixtures and for tests that start their own `Cluster` there. The
    first use in a session stops what a killed earlier session of this project left running there."""
    root = _state_path(config)
    if root not in _CLEANED:
        _CLEANED.add(root)
        stop_left_behind(root, _session(config).project)
    return root


def _port_base() -> int:
    return int(os.environ.get("PROTOJOBS_TEST_PORT_BASE", "29100"))


def _session(config: pytest.Config) -> Owner:
    if "session" not in _OWNER:  # one per process, however often pytest is configured in it
        _OWNER["session"] = Owner.current(config.rootpath)
    return _OWNER["session"]


def pytest_configure(config: pytest.Config) -> None:
    """Name this session as the owner of what it starts; stop it at exit. Signals nothing now."""
    owner = _session(config)
    os.environ[OWNER_ENV] = owner.token()
    root = _state_path(config)
    if root not in _AT_EXIT:
        _AT_EXIT.add(root)
        atexit.register(_stop_own, root, owner)


def _stop_own(root: Path, owner: Owner) -> list[int]:
    """Stop the processes under `root` that `owner` started (last resort at interpreter exit)."""
    return stop_pidfiles([p for p in all_pidfiles([root]) if started_by(p, owner)], timeout=10)


def stop_left_behind(root: Path, project: str | Path) -> list[int]:
    """Stop the processes under `root` that a session of `project` started and did not live to
    stop (a killed run): they would hold the ports. Nobody else's are touched."""
    return stop_pidfiles([p for p in all_pidfiles([root]) if left_behind(p, str(project))], timeout=10)


@pytest.fixture(scope="session")
def protojobs_toxiproxy_server(pytestconfig: pytest.Config) -> Iterator[Toxiproxy]:
    server = Toxiproxy(_state_root(pytestconfig) / "toxiproxy", port=_port_base() + 300).start()
    yield server
    if server.spawned:  # not one that another live session runs from the same state directory
        server.stop()


def _start(pytestconfig: pytest.Config, server: Toxiproxy, name: str, nodes: int, offset: int) -> Cluster:
    cluster = Cluster(_state_root(pytestconfig) / name, nodes=nodes, base_port=_port_base() + offset)
    for proxy_name, listen, upstream in cluster.proxy_routes():
        server.create(proxy_name, listen, upstream)
    return cluster.start()


@pytest.fixture(scope="session")
def protojobs_kafka(pytestconfig: pytest.Config, protojobs_toxiproxy_server: Toxiproxy) -> Iterator[Cluster]:
    cluster = _start(pytestconfig, protojobs_toxiproxy_server, "single", 1, 0)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def protojobs_kafka_cluster(pytestconfig: pytest.Config, protojobs_toxiproxy_server: Toxiproxy) -> Iterator[Cluster]:
    cluster = _start(pytestconfig, protojobs_toxiproxy_server, "cluster", 3, 100)
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
def protojobs_toxiproxy(protojobs_toxiproxy_server: Toxiproxy) -> Iterator[Faults]:
    faults = Faults(protojobs_toxiproxy_server)
    faults.reset()
    yield faults
    faults.reset()


@pytest.fixture
def protojobs_fresh_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix (and group-name stem) unique to this test: `t-<test>-<random>-`."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40].strip("-").lower()
    return f"t-{stem}-{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def protojobs_fresh_topic(protojobs_fresh_prefix: str) -> Callable[[str], str]:
    """`fresh_topic("orders")` -> a topic name unique to this test."""

    def name(stem: str = "topic") -> str:
        return f"{protojobs_fresh_prefix}{stem}"

    return name


# --- the names of the previous release: aliases for one release --------------------------------


DEPRECATED: dict[str, str] = {}  # old fixture name -> its new name


def _deprecated(old: str, new: str, scope: Literal["session", "function"]) -> Any:
    DEPRECATED[old] = new

    def alias(request: pytest.FixtureRequest) -> Any:
        warnings.warn(f"the pytest fixture {old!r} is deprecated (it goes in the next release): use {new!r}",
                      DeprecationWarning, stacklevel=2)
        return request.getfixturevalue(new)

    alias.__name__ = old
    return pytest.fixture(scope=scope, name=old)(alias)


kafka = _deprecated("kafka", "protojobs_kafka", "session")
kafka_cluster = _deprecated("kafka_cluster", "protojobs_kafka_cluster", "session")
toxiproxy_server = _deprecated("toxiproxy_server", "protojobs_toxiproxy_server", "session")
toxiproxy = _deprecated("toxiproxy", "protojobs_toxiproxy", "function")
fresh_prefix = _deprecated("fresh_prefix", "protojobs_fresh_prefix", "function")
fresh_topic = _deprecated("fresh_topic", "protojobs_fresh_topic", "function")


# --- protojobs_worker: a real worker, drained ------------------------------------------------------


@pytest.fixture
def protojobs_worker() -> Iterator[Callable[..., DrainingWorker]]:
    """`protojobs_worker(app_or_settings, queues=None, **WorkerOptions)`: a worker (and the delay
    router) running in threads against the broker the settings name, stopped after the test."""
    started: list[DrainingWorker] = []

    def start(app: Any, queues: list[str] | None = None, **options: Any) -> DrainingWorker:
        from protojobs.testing.draining import DrainingWorker

        worker = DrainingWorker(app, queues, **options)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
