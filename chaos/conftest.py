"""Fixtures of the chaos suite: the clusters, hypothesis profiles, the report and schedule files.

Clusters: `single` is the plugin's session `kafka` (1 node, clients behind toxiproxy); `cluster`
is a 3-node chaos-profile cluster (RF 3, min ISR 2; INTERNAL and CONTROLLER traffic through
toxiproxy too), whose proxies are created before it starts. State lives under
$PROTOJOBS_TEST_STATE (`make chaos`: .protojobs/chaos), ports from $PROTOJOBS_TEST_PORT_BASE.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from chaos.harness import ChaosEnv
from chaos.report import REPORTS, Report
from protojobs.testing import Cluster, Toxiproxy
from protojobs.testing.plugin import _port_base, _state_root

# Registered and loaded explicitly: with CI=true hypothesis would otherwise load its derandomized
# "ci" profile. No shrinking (an example ran against real brokers: shrinking would re-run it with
# different timing and prove nothing), no example database, no deadline.
settings.register_profile(
    "chaos",
    max_examples=int(os.environ.get("CHAOS_EXAMPLES") or "4"),
    stateful_step_count=int(os.environ.get("CHAOS_STEPS") or "8"),
    phases=[Phase.explicit, Phase.generate],
    deadline=None,
    database=None,
    derandomize=False,
    print_blob=False,
    report_multiple_bugs=False,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile("chaos")

SEED = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
REPLAY = os.environ.get("REPLAY") or os.environ.get("CHAOS_REPLAY") or ""
SCHEDULES = REPORTS / "schedules"


@pytest.fixture(scope="session")
def chaos_report() -> Iterator[Report]:
    if not REPLAY:
        shutil.rmtree(SCHEDULES, ignore_errors=True)
    report = Report(SEED)
    yield report
    if report.rows:
        report.write()


class Numbering:
    def __init__(self) -> None:
        self.n = 0

    def next(self, stem: str = "") -> Path:
        self.n += 1
        return SCHEDULES / f"{stem}{self.n}.json"


@pytest.fixture(scope="session")
def schedule_numbers() -> Numbering:
    return Numbering()


@pytest.fixture(scope="session")
def chaos_cluster(pytestconfig: pytest.Config, protojobs_toxiproxy_server: Toxiproxy) -> Iterator[Cluster]:
    cluster = Cluster(_state_root(pytestconfig) / "chaos3", nodes=3, base_port=_port_base() + 200, chaos=True)
    for name, listen, upstream in cluster.proxy_routes():
        protojobs_toxiproxy_server.create(name, listen, upstream)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def chaos_env(request: pytest.FixtureRequest, pytestconfig: pytest.Config,
              protojobs_toxiproxy_server: Toxiproxy) -> ChaosEnv:
    name = request.param
    cluster = request.getfixturevalue("protojobs_kafka" if name == "single" else "chaos_cluster")
    work = _state_root(pytestconfig) / "chaos-runs"
    work.mkdir(parents=True, exist_ok=True)
    return ChaosEnv(name, cluster, protojobs_toxiproxy_server, work)


def env_for(request: pytest.FixtureRequest, pytestconfig: pytest.Config, server: Toxiproxy, name: str) -> ChaosEnv:
    cluster = request.getfixturevalue("protojobs_kafka" if name == "single" else "chaos_cluster")
    work = _state_root(pytestconfig) / "chaos-runs"
    work.mkdir(parents=True, exist_ok=True)
    return ChaosEnv(name, cluster, server, work)


def replay_path() -> Path | None:
    return Path(REPLAY).resolve() if REPLAY else None
