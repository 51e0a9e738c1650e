"""Exactly-once queues against a real broker: crashes and zombies never publish a result twice."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from conftest import settings_tree, wait_for, write_config
from test_engine import committed_equals_end, runs, spawn_worker

from protojobs import config
from protojobs.engine.dispatch import Dispatcher
from protojobs.model import envelope
from protojobs.model import names as topics
from protojobs.testing import Cluster, profile

pytestmark = pytest.mark.broker


@pytest.fixture
def eo_config(kafka: Cluster, fresh_prefix: str, tmp_path: Path):
    tree = settings_tree(kafka.bootstrap, fresh_prefix, {
        "work": {"handler": "engine_jobs:chain", "delivery": "exactly_once", "partitions": 2, "concurrency": 2},
        "followups": {"handler": "engine_jobs:record"},
    })
    return config.from_dict(tree, tmp_path), write_config(tmp_path / "jobs.toml", tree)


def committed_followups(settings: Any, expected: int, timeout: float = 20) -> Counter[int]:
    """Follow-up jobs visible to a read_committed consumer, counted by source job number."""
    topic = topics.queue_topic(settings.kafka.topic_prefix, "followups")
    consumer = Consumer(profile.consumer(settings.kafka.brokers, f"check-{time.monotonic_ns()}",
                                         **{"isolation.level": "read_committed"}))
    consumer.subscribe([topic])
    seen: Counter[int] = Counter()
    deadline = time.monotonic() + timeout
    quiet_until = None
    while time.monotonic() < deadline:
        msgs = [m for m in consumer.consume(200, 0.5) if m.error() is None]
        for m in msgs:
            seen[envelope.decode(m.value()).data["n"]] += 1
        if sum(seen.values()) >= expected:
            quiet_until = quiet_until or time.monotonic() + 2  # keep reading a little: duplicates?
            if time.monotonic() > quiet_until:
                break
    consumer.close()
    return seen


def kill_once_then_settle(settings: Any, path: Path, record: Path, n: int) -> tuple[Counter[int], int, Counter[int]]:
    """A worker SIGKILLed once 40 source jobs ran, then a fresh one until every source job ran and
    its offset is committed. Asserts each follow-up was published once (read_committed); returns
    the follow-ups seen, the runs before the kill, and the executions per source job."""
    proc = spawn_worker(path, record, "--queue", "work")
    try:
        wait_for(lambda: len(runs(record)) >= 40, timeout=40, what="progress")
        proc.send_signal(signal.SIGKILL)  # jobs ran, their follow-ups were dispatched, offsets not committed
        proc.wait(10)
    finally:
        proc.kill()
    first_runs = len(runs(record))
    proc = spawn_worker(path, record, "--queue", "work")
    try:
        wait_for(lambda: {r["n"] for r in runs(record)} >= set(range(n)), timeout=60, what="every source job")
        wait_for(lambda: committed_equals_end(settings, "work"), timeout=30, what="source offsets committed")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    seen = committed_followups(settings, n)
    assert set(seen) == set(range(n))
    assert max(seen.values()) == 1, {k: v for k, v in seen.items() if v > 1}
    return seen, first_runs, Counter(r["n"] for r in runs(record))


def test_sigkill_mid_transaction_publishes_each_followup_once(eo_config, tmp_path: Path) -> None:
    settings, path = eo_config
    record = tmp_path / "runs.jsonl"
    n = 120
    assert Dispatcher(settings).dispatch_many("work", [{"n": i, "sleep": 0.03} for i in range(n)]).ok
    seen, first_runs, executions = kill_once_then_settle(settings, path, record, n)
    assert first_runs >= 40 and sum(executions.values()) >= n  # some jobs may have run twice...
    # ...but their Kafka-side effect (the follow-up) is committed exactly once (kill_once_then_settle).


def test_zombie_worker_is_fenced(eo_config, tmp_path: Path) -> None:
    settings, path = eo_config
    record = tmp_path / "runs.jsonl"
    dispatcher = Dispatcher(settings)
    assert dispatcher.dispatch_many("work", [{"n": i, "sleep": 0.02} for i in range(40)]).ok
    zombie = spawn_worker(path, record, "--queue", "work", "--no-router")
    try:
        wait_for(lambda: len(runs(record)) >= 5, timeout=40, what="zombie running")
        zombie.send_signal(signal.SIGSTOP)
        assert dispatcher.dispatch_many("work", [{"n": i, "sleep": 0.02} for i in range(40, 80)]).ok
        heir = spawn_worker(path, record, "--queue", "work", "--no-router")  # same host and slot
        try:
            wait_for(lambda: {r["n"] for r in runs(record)} >= set(range(80)), timeout=60, what="heir took over")
            zombie.send_signal(signal.SIGCONT)
            # The zombie rejoins the group; the first transaction it tries is fenced and it stops.
            assert dispatcher.dispatch_many("work", [{"n": i, "sleep": 0.02} for i in range(80, 120)]).ok
            assert zombie.wait(60) != 0  # fenced: it stops instead of publishing
            wait_for(lambda: {r["n"] for r in runs(record)} >= set(range(120)), timeout=60, what="all jobs")
            wait_for(lambda: committed_equals_end(settings, "work"), timeout=30, what="heir committed")
        finally:
            heir.send_signal(signal.SIGTERM)
            heir.wait(30)
    finally:
        zombie.send_signal(signal.SIGCONT)
        zombie.kill()
        zombie.wait(10)
    seen = committed_followups(settings, 120)
    assert set(seen) == set(range(120)) and max(seen.values()) == 1
    log = (tmp_path / "worker-0.log").read_text()
    assert "fenced" in log.lower(), log[-2000:]


def test_failed_job_dead_letters_inside_the_transaction(kafka: Cluster, fresh_prefix: str, tmp_path: Path,
                                                        start_worker) -> None:
    tree = settings_tree(kafka.bootstrap, fresh_prefix, {
        "work": {"handler": "engine_jobs:poison", "delivery": "exactly_once", "retry": "once"}},
        retry={"once": {"max_attempts": 1}})
    settings = config.from_dict(tree, tmp_path)
    Dispatcher(settings).dispatch("work", {"n": 1})
    worker = start_worker(settings)
    wait_for(lambda: worker.worker.counters.dead == 1, what="dead letter")
    wait_for(lambda: committed_equals_end(settings, "work"), what="offset committed in the transaction")
    worker.stop()
    txn = worker.worker.partitions.txn
    assert txn is not None and txn.committed >= 1
    consumer = Consumer(profile.consumer(kafka.bootstrap, f"dl-{time.monotonic_ns()}",
                                         **{"isolation.level": "read_committed"}))
    consumer.subscribe([settings.kafka.dead_letter_topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 15
    while not got and time.monotonic() < deadline:
        got = [m.value() for m in consumer.consume(10, 0.5) if m.error() is None]
    consumer.close()
    assert len(got) == 1 and json.loads(got[0])["error"]["type"] == "ValueError"


def test_a_transaction_commits_once_a_window_is_half_full_not_per_commit_every(kafka: Cluster, fresh_prefix: str,
                                                                                tmp_path: Path, start_worker) -> None:
    tree = settings_tree(kafka.bootstrap, fresh_prefix, {
        "work": {"handler": "engine_jobs:record", "delivery": "exactly_once", "partitions": 1}})
    settings = config.from_dict(tree, tmp_path)
    assert Dispatcher(settings).dispatch_many("work", [{"n": i} for i in range(9)]).ok
    # the interval never comes; commit_every would commit after every 2 jobs
    worker = start_worker(settings, commit_interval=3600, commit_every=2, max_uncommitted=20)
    wait_for(lambda: worker.worker.counters.done == 9, what="9 jobs")
    seen = worker.worker.last_poll
    wait_for(lambda: worker.worker.last_poll > seen + 0.5, what="the loop to run on for half a second")
    txn = worker.worker.partitions.txn
    assert txn is not None and txn.committed == 0  # 9 < half the window: no transaction yet
    assert Dispatcher(settings).dispatch_many("work", [{"n": i} for i in range(9, 12)]).ok
    wait_for(lambda: txn.committed >= 1, what="a transaction at half the window (10 jobs)")
    wait_for(lambda: worker.worker.counters.done == 12, what="12 jobs")
    worker.stop()  # commits the rest on shutdown
    assert committed_equals_end(settings, "work")


def test_jobs_run_on_while_a_transaction_commits_up_to_the_backlog_bound(kafka: Cluster, fresh_prefix: str,
                                                                          tmp_path: Path, start_worker) -> None:
    from protojobs.engine.worker import EO_BACKLOG

    tree = settings_tree(kafka.bootstrap, fresh_prefix, {
        "work": {"handler": "engine_jobs:record", "delivery": "exactly_once", "partitions": 1}})
    settings = config.from_dict(tree, tmp_path)
    worker = start_worker(settings, commit_interval=3600, max_uncommitted=10)
    wait_for(lambda: worker.worker.partitions.txn is not None and bool(worker.worker.assigned),
             what="an exactly-once worker with its partition")
    txn = worker.worker.partitions.txn
    begun, release = threading.Event(), threading.Event()
    commit = txn.producer.commit

    def slow_commit(*args: Any) -> None:  # the broker's part of a transaction, held until released
        begun.set()
        assert release.wait(60)
        commit(*args)

    txn.producer.commit = slow_commit  # type: ignore[method-assign]
    assert Dispatcher(settings).dispatch_many("work", [{"n": i} for i in range(100)]).ok
    assert begun.wait(60), "no transaction began at half the window (5 jobs)"
    counters = worker.worker.counters
    bound = EO_BACKLOG * 10
    wait_for(lambda: counters.done >= bound - 5, what="jobs running on while the first transaction commits")
    seen = worker.worker.last_poll
    wait_for(lambda: worker.worker.last_poll > seen + 0.5, what="the loop to run on for half a second")
    assert txn.in_flight and counters.done <= bound  # nothing committed yet: at most the bound started
    release.set()
    wait_for(lambda: counters.done == 100, what="every job once the transactions commit")
    worker.stop()
    assert txn.committed >= 2
    assert committed_equals_end(settings, "work")
