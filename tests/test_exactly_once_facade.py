"""Exactly-once through every dispatch path: inside a running exactly-once job, `Jobs.dispatch` (and
any Dispatcher of the same cluster) joins the job's transaction, as `ctx.dispatch` does; one
that cannot join refuses loudly. tests/test_exactly_once.py proves the same for ctx.dispatch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import engine_jobs
import pytest
from confluent_kafka import Consumer
from conftest import settings_tree, wait_for, write_config
from test_engine import committed_equals_end
from test_exactly_once import kill_once_then_settle

from protojobs import Jobs, config
from protojobs.engine import dispatch
from protojobs.engine.dispatch import Dispatcher, DispatchError
from protojobs.model import names as topics
from protojobs.testing import Cluster, profile

pytestmark = pytest.mark.broker
QUEUES = {"work": {"jobs": ["eo_facade_jobs:FacadeChain", "eo_facade_jobs:DispatchThenFail",
                            "eo_facade_jobs:DispatchThenFailAsync"],
                   "delivery": "exactly_once", "partitions": 2, "concurrency": 2},
          "followups": {"jobs": ["eo_facade_jobs:FollowUp"]}}


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    engine_jobs.RUNS.clear()
    Jobs.reset()
    yield
    Jobs.reset()


def test_facade_dispatch_in_an_exactly_once_job_survives_sigkill_once(kafka: Cluster, fresh_prefix: str,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    tree = settings_tree(kafka.bootstrap, fresh_prefix, QUEUES)
    settings, path = config.from_dict(tree, tmp_path), write_config(tmp_path / "jobs.toml", tree)
    monkeypatch.setenv("PROTOJOBS_CONFIG", str(path))  # the worker's default Jobs instance reads it
    record = tmp_path / "runs.jsonl"
    n = 120
    assert Dispatcher(settings).dispatch_many("work", [{"n": i, "sleep": 0.03} for i in range(n)],
                                              job="FacadeChain").ok
    _seen, _first_runs, executions = kill_once_then_settle(settings, path, record, n)
    assert sum(executions.values()) > n  # jobs did run twice: only their follow-ups are once


@pytest.mark.parametrize("job", ["DispatchThenFail", "DispatchThenFailAsync"])
def test_a_failed_exactly_once_job_publishes_no_facade_dispatch(kafka: Cluster, fresh_prefix: str, tmp_path: Path,
                                                                 start_worker, job: str) -> None:
    """The job dispatches a follow-up with Jobs.dispatch (in its thread, or in its coroutine),
    then fails for good: its dead-letter copy is committed, its follow-up never published."""
    tree = settings_tree(kafka.bootstrap, fresh_prefix, QUEUES, retry={"default": {"max_attempts": 1}})
    settings = config.from_dict(tree, tmp_path)
    Jobs.configure(settings)
    Dispatcher(settings).dispatch("work", {"n": 7}, job=job)
    worker = start_worker(settings, queues=["work"])
    wait_for(lambda: worker.worker.counters.dead == 1, what="dead letter")
    wait_for(lambda: committed_equals_end(settings, "work"), what="offset committed with the dead letter")
    worker.stop()
    assert [r["n"] for r in engine_jobs.RUNS] == [7]
    topic = topics.queue_topic(settings.kafka.topic_prefix, "followups")
    consumer = Consumer(profile.consumer(kafka.bootstrap, f"check-{time.monotonic_ns()}",
                                         **{"isolation.level": "read_uncommitted"}))
    consumer.subscribe([topic])  # read_uncommitted: not even an aborted copy was produced
    got: list[Any] = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        got += [m for m in consumer.consume(10, 0.3) if m.error() is None]
    consumer.close()
    assert got == []


# ---------------------------------------------------------------- no broker


def test_a_dispatch_that_cannot_join_the_running_job_is_refused(make_settings_offline: Any) -> None:
    here, elsewhere = make_settings_offline("127.0.0.1:9"), make_settings_offline("127.0.0.1:8,127.0.0.1:7")
    buffered: list[tuple[str, str]] = []
    txn = dispatch.JobTransaction("127.0.0.1:9", lambda env, topic: buffered.append((env.id, topic)), "job-1")
    token = dispatch.RUNNING_JOB.set(txn)
    try:
        same, other = Dispatcher(here, ensure_topics=False), Dispatcher(here, ensure_topics=False)
        for d in (same, other):
            d.send = never_sends  # type: ignore[method-assign]
        job_id = same.dispatch("q", {"n": 1})  # joins: buffered, not produced
        assert buffered == [(job_id, "p-q")]
        assert other.dispatch_many("q", [{"n": 2}, {"n": 3}]).ok
        assert len(buffered) == 3
        with pytest.raises(DispatchError, match="other brokers .* cannot be published atomically"):
            Dispatcher(elsewhere, ensure_topics=False).dispatch("q", {"n": 4})
        txn.close()  # the job's attempt ended; a thread it left behind dispatches
        with pytest.raises(DispatchError, match="job job-1 has finished"):
            same.dispatch("q", {"n": 5})
        assert len(buffered) == 3
    finally:
        dispatch.RUNNING_JOB.reset(token)


def never_sends(*_args: Any) -> None:
    raise AssertionError("a dispatch inside an exactly-once job produced instead of joining its transaction")


@pytest.fixture
def make_settings_offline(tmp_path: Path) -> Any:
    def make(brokers: str) -> config.Settings:
        return config.from_dict({"kafka": {"brokers": brokers, "topic_prefix": "p-"},
                                 "queues": {"q": {"handler": "json:dumps"}}}, tmp_path, env={})
    return make
