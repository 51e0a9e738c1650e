"""The wheel works without the checkout: build it, install it into a clean virtualenv outside the
checkout, and run the installed `protojobs` command against the test broker.

- The wheel carries its package data: the config JSON Schema (protojobs/config/, read with
  importlib.resources) and the Kafka pom (protojobs/local/pom.xml).
- Installed, `protojobs validate` / `dispatch` / `run --max-jobs 1` run a job of a project of
  its own (jobs.toml, a payload schema and a handler module in a temporary directory).
- The same with every dependency at the floor pyproject.toml declares (`name>=X` installed as
  `name==X`): the floors are tested, not guessed.
- Installed, protojobs fetches Kafka with Maven from its packaged pom into its cache
  ($PROTOJOBS_CACHE here; ~/.cache/protojobs by default), and its pytest plugin starts a broker
  from there.

The sources are copied (pyproject.toml, README.md, protojobs/) and built in a temporary directory,
so nothing is written into the checkout; pip's cache makes the install of the dependencies quick
(about 10 s for build, virtualenv and install).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from protojobs.local.cluster import KAFKA_VERSION
from protojobs.local.toxiproxy import ensure_toxiproxy
from protojobs.testing import Cluster, profile

ROOT = Path(__file__).resolve().parents[1]
INNER_PORT_BASE = int(os.environ.get("PROTOJOBS_TEST_PORT_BASE", "29100")) + 550

pytestmark = pytest.mark.timeout(420)


def run(cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def must(cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = run(cmd, timeout, **kwargs)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


class Installed:
    """A virtualenv outside the checkout with the wheel (and its dependencies) installed."""

    def __init__(self, venv: Path) -> None:
        self.venv = venv
        self.python = venv / "bin" / "python"
        self.protojobs = venv / "bin" / "protojobs"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a user of the wheel: no checkout on the path, no protojobs settings."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PROTOJOBS_", "PYTHON", "PYTEST_", "VIRTUAL_ENV"))}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        return env | extra

    def pip_install(self, *what: str) -> None:
        must([sys.executable, "-m", "pip", "--python", str(self.python), "install", "-q",
              "--disable-pip-version-check", *what], timeout=300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "protojobs", src / "protojobs", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    must([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
          "-w", str(dist), str(src)], timeout=300)
    [built] = dist.glob("protojobs-*.whl")
    return built


def make_venv(tmp_path_factory: pytest.TempPathFactory, *requirements: str) -> Installed:
    venv = tmp_path_factory.mktemp("venv")
    assert not venv.is_relative_to(ROOT)
    # No pip inside: the running pip installs into it (--python), which is quicker than ensurepip.
    must([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], timeout=120)
    env = Installed(venv)
    env.pip_install(*requirements)
    return env


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel and the newest versions of its dependencies."""
    return make_venv(tmp_path_factory, str(wheel))


def floors() -> list[str]:
    """Every dependency of pyproject.toml pinned at its floor: `name>=X` -> `name==X`."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    pins = [re.sub(r"\s*>=\s*", "==", d.split(";")[0].strip()) for d in deps]
    assert all("==" in p and "," not in p for p in pins), f"each dependency needs one floor: {deps}"
    return pins


def test_wheel_carries_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"protojobs/config/protojobs.schema.json", "protojobs/local/pom.xml", "protojobs/py.typed"} <= names
    assert {"protojobs/dashboard/templates/overview.html", "protojobs/dashboard/static/live.js"} <= names
    assert not [n for n in names if n.startswith(("tests/", "schemas/", "bench/", "chaos/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "protojobs = protojobs.cli.main:main" in text and "protojobs = protojobs.testing.plugin" in text


PROBE = """
import importlib.resources as r, json, pathlib
import protojobs, protojobs.config
from protojobs.local import cluster
schema = r.files("protojobs.config").joinpath("protojobs.schema.json")
pom = r.files("protojobs.local").joinpath("pom.xml")
print(json.dumps({
    "package": str(pathlib.Path(protojobs.__file__).resolve()),
    "schema": str(schema), "schema_title": json.loads(schema.read_text())["title"],
    "loaded_defs": sorted(protojobs.config.config_schema()["$defs"]),
    "pom_has_kafka": "kafka" in pom.read_text(),
    "cache_dir": str(cluster.cache_dir()), "home_cache": str(pathlib.Path.home() / ".cache" / "protojobs"),
}))
"""


def test_installed_wheel_reads_its_data_without_the_checkout(installed: Installed, tmp_path: Path) -> None:
    done = must([str(installed.python), "-c", PROBE], timeout=60, cwd=tmp_path, env=installed.env())
    probe = json.loads(done.stdout)
    site = installed.venv.resolve()
    assert Path(probe["package"]).is_relative_to(site), probe
    assert Path(probe["schema"]).resolve().is_relative_to(site) and probe["schema_title"], probe
    assert {"kafka", "queueKeys", "retryPolicy"} <= set(probe["loaded_defs"]), probe
    assert probe["pom_has_kafka"], probe
    assert probe["cache_dir"] == probe["home_cache"], probe  # not a checkout: ~/.cache/protojobs


@pytest.fixture(scope="module")
def fetched(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed package fetches Kafka with Maven from its packaged pom into $PROTOJOBS_CACHE
    (Maven's ~/.m2 already holds the jars after `make install`: no download)."""
    if shutil.which("mvn") is None:
        pytest.skip("mvn is not on PATH")
    cache = tmp_path_factory.mktemp("cache")
    code = "from protojobs.local.cluster import ensure_kafka; print(ensure_kafka())"
    done = must([str(installed.python), "-c", code], timeout=240, cwd=cache,
                env=installed.env(PROTOJOBS_CACHE=str(cache)))
    lib = Path(done.stdout.strip())
    assert lib == cache / "kafka" / "lib"
    assert (lib / f"kafka_2.13-{KAFKA_VERSION}.jar").exists()
    return cache


def test_installed_wheel_fetches_kafka_into_its_cache(fetched: Path) -> None:
    assert (fetched / "kafka" / "pom.xml").exists()  # the packaged pom, copied out for Maven


JOBS_TOML = """\
[kafka]
brokers = "{bootstrap}"
group_id = "{prefix}group"
topic_prefix = "{prefix}"
auto_offset_reset = "earliest"

[kafka.producer]
{producer}

[kafka.consumer]
{consumer}

[defaults]
partitions = 1
replication_factor = 1

[queues.greet]
handler = "wheel_jobs:greet"
schema = "greet.json"
"""

HANDLER = '''\
"""The handler of the wheel test's queue: records the job's data next to this file."""
import json
from pathlib import Path


def greet(data):
    done = Path(__file__).with_name("done.json")
    done.with_suffix(".tmp").write_text(json.dumps(data))
    done.with_suffix(".tmp").replace(done)
'''

GREET_SCHEMA = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}},
                "additionalProperties": False}


def toml_table(values: dict[str, object]) -> str:
    return "\n".join(f'"{k}" = {json.dumps(v)}' for k, v in values.items())


def write_project(work: Path, kafka: Cluster, prefix: str) -> Path:
    """jobs.toml with one queue, its payload schema and its handler module, in `work`."""
    work.mkdir()
    (work / "jobs.toml").write_text(JOBS_TOML.format(
        bootstrap=kafka.bootstrap, prefix=prefix,
        producer=toml_table(profile.PRODUCER), consumer=toml_table(profile.CONSUMER)))
    (work / "wheel_jobs.py").write_text(HANDLER)
    (work / "greet.json").write_text(json.dumps(GREET_SCHEMA))
    return work


def round_trip(installed: Installed, work: Path) -> None:
    """validate, dispatch (a refused and an accepted payload), run --max-jobs 1: the job ran."""
    env = installed.env(PYTHONPATH=str(work))
    cli = [str(installed.protojobs)]
    validated = must([*cli, "validate", "--config", "jobs.toml"], timeout=60, cwd=work, env=env)
    assert "valid (1 queue" in validated.stdout
    refused = run([*cli, "dispatch", "greet", '{"name": ""}', "--config", "jobs.toml"], timeout=60, cwd=work, env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr  # the payload schema, packaged validators
    dispatched = must([*cli, "dispatch", "greet", '{"name": "wheel"}', "--config", "jobs.toml"],
                      timeout=60, cwd=work, env=env)
    assert dispatched.stdout.strip()  # the job id
    # `run --max-jobs 1` returns once the job is done: the condition this test waits on, bounded.
    must([*cli, "run", "--config", "jobs.toml", "--max-jobs", "1"], timeout=120, cwd=work, env=env)
    assert json.loads((work / "done.json").read_text()) == {"name": "wheel"}


@pytest.mark.broker
def test_installed_wheel_runs_a_job(installed: Installed, kafka: Cluster, fresh_prefix: str, tmp_path: Path) -> None:
    round_trip(installed, write_project(tmp_path / "project", kafka, fresh_prefix))


FLOOR_PROBE = """
import datetime
from protojobs.config.payloads import _fast_validator
from protojobs.model import schedules
import protojobs.observe.metrics  # prometheus-client: Gauge(multiprocess_mode="livemostrecent")

assert _fast_validator({"type": "object"}) is not None, "jsonschema-rs: validator_for(validate_formats=)"
rule = schedules.cron_rule("0 3 * * *", "Europe/Paris")
now = int(datetime.datetime(2026, 3, 30, 12, tzinfo=datetime.timezone.utc).timestamp() * 1000)
assert schedules.prev_fire(rule, now) < now < schedules.next_fire(rule, now)  # cronsim reverse=
print("ok")
"""


@pytest.mark.broker
def test_wheel_at_the_dependency_floors(wheel: Path, tmp_path_factory: pytest.TempPathFactory, kafka: Cluster,
                                        fresh_prefix: str, tmp_path: Path) -> None:
    """The lowest versions pyproject.toml allows: the job runs, the admin calls of `stats` and
    `clear` work (confluent-kafka), config layering (dynaconf) and the probes above pass."""
    pinned = make_venv(tmp_path_factory, str(wheel), *floors())
    assert must([str(pinned.python), "-c", FLOOR_PROBE], timeout=60, cwd=tmp_path, env=pinned.env()).stdout == "ok\n"
    work = write_project(tmp_path / "project", kafka, fresh_prefix)
    round_trip(pinned, work)
    # an env layer replacing an array (dynaconf's object_merge(list_merge="shallow"))
    env = pinned.env(PYTHONPATH=str(work), PROTOJOBS_DELAYS__TIERS='["2s", "9s"]')
    cli = [str(pinned.protojobs)]
    shown = must([*cli, "config", "show", "--format", "json", "--config", "jobs.toml"], timeout=60, cwd=work, env=env)
    assert json.loads(shown.stdout)["delays"]["tiers"] == ["2s", "9s"]
    stats = json.loads(must([*cli, "stats", "--json", "--config", "jobs.toml"], timeout=60, cwd=work, env=env).stdout)
    assert stats, stats
    must([*cli, "clear", "greet", "--yes", "--config", "jobs.toml"], timeout=60, cwd=work, env=env)


INNER_TEST = '''\
import os
from pathlib import Path

import protojobs
from confluent_kafka.admin import AdminClient
from protojobs.local import cluster


def test_kafka_fixture_of_the_installed_plugin(kafka, fresh_topic):
    assert "site-packages" in protojobs.__file__
    assert cluster.kafka_lib_dir() == Path(os.environ["PROTOJOBS_CACHE"]) / "kafka" / "lib"
    assert Path(kafka.state_dir).is_relative_to(Path(os.environ["PROTOJOBS_TEST_STATE"]))
    metadata = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10)
    assert len(metadata.brokers) == 1
    assert fresh_topic("x").startswith("t-test-kafka-fixture")
'''


@pytest.mark.broker
def test_installed_plugin_starts_kafka_without_the_checkout(installed: Installed, fetched: Path,
                                                            tmp_path: Path) -> None:
    """Another project that installs protojobs and pytest: the `kafka` fixture works from the wheel,
    with Kafka from the package's cache (toxiproxy from the checkout's, not to build it again)."""
    installed.pip_install("pytest>=8")
    project, state = tmp_path / "project", tmp_path / "state"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_inner.py").write_text(INNER_TEST)
    env = installed.env(PROTOJOBS_CACHE=str(fetched), PROTOJOBS_TOXIPROXY=str(ensure_toxiproxy()),
                        PROTOJOBS_TEST_STATE=str(state), PROTOJOBS_TEST_PORT_BASE=str(INNER_PORT_BASE))
    done = run([str(installed.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], timeout=300,
               cwd=project, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert not list(state.rglob("*.pid")), "the inner session left a broker or toxiproxy running"
