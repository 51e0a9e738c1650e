"""Shared helpers for engine tests: settings on a fresh prefix, an in-process worker."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from protojobs import config
from protojobs.engine.worker import Worker, WorkerOptions
from protojobs.testing import Cluster, profile

ROOT = Path(__file__).resolve().parents[1]


# The plugin's fixtures are `protojobs_*`; its unprefixed names warn (deprecated). This suite
# keeps the short names as plain forwards (no warning): new tests use the prefixed names.
@pytest.fixture(scope="session")
def kafka(protojobs_kafka: Cluster) -> Cluster:
    return protojobs_kafka


@pytest.fixture(scope="session")
def kafka_cluster(protojobs_kafka_cluster: Cluster) -> Cluster:
    return protojobs_kafka_cluster


@pytest.fixture(scope="session")
def toxiproxy_server(protojobs_toxiproxy_server: Any) -> Any:
    return protojobs_toxiproxy_server


@pytest.fixture
def toxiproxy(protojobs_toxiproxy: Any) -> Any:
    return protojobs_toxiproxy


@pytest.fixture
def fresh_prefix(protojobs_fresh_prefix: str) -> str:
    return protojobs_fresh_prefix


@pytest.fixture
def fresh_topic(protojobs_fresh_topic: Callable[[str], str]) -> Callable[[str], str]:
    return protojobs_fresh_topic


def settings_tree(bootstrap: str, prefix: str, queues: dict[str, dict[str, Any]], **sections: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {
        "kafka": {"brokers": bootstrap, "group_id": f"{prefix}group", "topic_prefix": prefix,
                  "compression": "lz4", "producer": dict(profile.PRODUCER), "consumer": dict(profile.CONSUMER)},
        "delays": {"tiers": ["200ms", "1s", "3s"]},
        "retry": {"default": {"max_attempts": 3, "backoff": "fixed", "base": "200ms", "jitter": 0}},
        "defaults": {"partitions": 3, "concurrency": 4, "timeout": "20s"},
        "queues": queues,
    }
    for name, value in sections.items():
        tree[name] = value
    return tree


@pytest.fixture
def make_settings(kafka: Cluster, fresh_prefix: str) -> Callable[..., config.Settings]:
    def make(queues: dict[str, dict[str, Any]], bootstrap: str | None = None, **sections: Any) -> config.Settings:
        return config.from_dict(settings_tree(bootstrap or kafka.bootstrap, fresh_prefix, queues, **sections), ROOT)
    return make


def write_config(path: Path, tree: dict[str, Any]) -> Path:
    from protojobs.config import to_toml

    path.write_text(to_toml(tree))
    return path


class Running:
    """A Worker running in a thread of this process."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def stop(self, timeout: float = 30) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def start_worker() -> Iterator[Callable[..., Running]]:
    """`start_worker(settings, hooks=[...], worker=None, **WorkerOptions)`: a Worker running in a
    thread (the one given, or a new one), stopped at the end of the test."""
    running: list[Running] = []

    def start(settings: config.Settings, hooks: list[Any] | None = None, worker: Worker | None = None,
              **options: Any) -> Running:
        r = Running(worker or Worker(settings, WorkerOptions(**options), hooks=hooks or []))
        running.append(r)
        return r

    yield start
    for r in running:
        if r.thread.is_alive():
            r.worker.stop(at_once=True)
            r.thread.join(30)


def wait_for(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file that other processes may be appending to right now: a last
    line without its newline is a write in progress and is left out (the next read gets it);
    a complete line that is not JSON is an error."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines[:-1], 1):  # lines[-1]: "" or the torn tail of a write
        if line:
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"{path}:{number}: not a JSON line: {line[:200]!r}") from err
    return rows


Write = Callable[..., Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """`write(text, name="jobs.toml")`: a dedented file in the test's tmp_path (its path)."""
    def _write(text: str, name: str = "jobs.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write
