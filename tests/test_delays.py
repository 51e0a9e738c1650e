"""Delay tiers and retries against a real broker: never early, bounded lateness, nothing lost."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import engine_jobs
import pytest
from conftest import settings_tree, wait_for, write_config
from test_engine import read_all, runs, spawn_worker

from protojobs import config
from protojobs.engine.dispatch import Dispatcher
from protojobs.engine.router import Router, RouterThread
from protojobs.model import dead_letter, envelope
from protojobs.model import names as topics
from protojobs.testing import Cluster

pytestmark = pytest.mark.broker
SMALLEST_TIER = 0.2  # tests use tiers 200ms, 1s, 3s
SLACK = 1.5  # processing lag allowed on a loaded 2-core machine, on top of the smallest tier


@pytest.fixture(autouse=True)
def _clean_runs() -> None:
    engine_jobs.RUNS.clear()


@pytest.fixture
def router() -> Iterator[Any]:
    threads: list[RouterThread] = []

    def start(settings: config.Settings) -> Router:
        thread = RouterThread(Router(settings)).start()
        threads.append(thread)
        return thread.router

    yield start
    for thread in threads:
        thread.stop()
        assert thread.error is None, thread.error


def test_delayed_jobs_never_run_early(make_settings, start_worker, router) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    dispatcher = Dispatcher(settings)
    dispatcher.dispatch("work", {"n": -1})  # creates the topics
    routing = router(settings)
    worker = start_worker(settings)
    # Lateness is measured from a running pipeline: wait until both consumers own partitions.
    wait_for(lambda: len(engine_jobs.RUNS) == 1 and routing.partitions.assigned, timeout=40, what="pipeline up")
    engine_jobs.RUNS.clear()
    delays_ms = [0, 50, 150, 200, 350, 800, 1000, 1500, 2500, 3000, 4200, 6500] * 3
    random.Random(7).shuffle(delays_ms)
    ids = {dispatcher.dispatch("work", {"n": i}, delay=f"{d}ms"): d for i, d in enumerate(delays_ms)}
    wait_for(lambda: len(engine_jobs.RUNS) >= len(ids), timeout=40, what="every delayed job")
    worker.stop()
    assert sorted(r["id"] for r in engine_jobs.RUNS) == sorted(ids)  # each ran once
    for run in engine_jobs.RUNS:
        lateness = run["t"] - run["due"]
        assert lateness >= 0, f"job ran {-lateness:.3f}s early: {run}"
        assert lateness <= SMALLEST_TIER + SLACK, f"job ran {lateness:.3f}s late: {run}"


def test_long_delay_hops_through_tiers(make_settings, kafka: Cluster) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    job_id = Dispatcher(settings).dispatch("work", {"n": 1}, delay="60s")
    prefix = settings.kafka.topic_prefix
    (value,) = read_all(kafka.bootstrap, topics.delay_topic(prefix, 3000), 1, timeout=10)
    env = envelope.decode(value)
    assert env.id == job_id and env.available_at - env.dispatched_at == 60_000


@pytest.mark.parametrize("fails", [0, 2])
def test_flaky_job_retries_through_tiers(make_settings, start_worker, router, fails: int) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:flaky"}},
                             retry={"default": {"max_attempts": 3, "backoff": "fixed", "base": "500ms", "jitter": 0}})
    Dispatcher(settings).dispatch("work", {"n": 1, "fail": fails})
    router(settings)
    worker = start_worker(settings)
    wait_for(lambda: worker.worker.counters.done == 1, timeout=30, what="success")
    time.sleep(0.5)
    worker.stop()
    attempts = sorted(engine_jobs.RUNS, key=lambda r: r["attempt"])
    assert [r["attempt"] for r in attempts] == list(range(1, fails + 2))  # exactly k+1 runs
    for before, after in zip(attempts, attempts[1:], strict=False):
        assert after["t"] - before["t"] >= 0.5  # never sooner than the policy's delay


def test_exhausted_retries_dead_letter_with_metadata(make_settings, start_worker, router, kafka: Cluster) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:flaky"}},
                             retry={"default": {"max_attempts": 3, "backoff": "fixed", "base": "200ms", "jitter": 0}})
    job_id = Dispatcher(settings).dispatch("work", {"n": 1, "fail": 5})
    router(settings)
    worker = start_worker(settings)
    wait_for(lambda: worker.worker.counters.dead == 1, timeout=30, what="dead letter")
    worker.stop()
    assert [r["attempt"] for r in sorted(engine_jobs.RUNS, key=lambda r: r["t"])] == [1, 2, 3]
    (value,) = read_all(kafka.bootstrap, settings.kafka.dead_letter_topic, 1)
    dead = dead_letter.decode_dead_letter(value)
    assert dead.envelope is not None and dead.envelope.id == job_id
    assert dead.attempts == 3 and dead.error_type == "RuntimeError" and "attempts exhausted" in dead.reason
    assert dead.first_failed_at is not None and dead.first_failed_at < dead.failed_at


def test_blocking_retries_keep_key_order(make_settings, start_worker) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:flaky", "ordering": "key", "key": "k",
                                       "blocking_retries": True, "partitions": 1}},
                             retry={"default": {"max_attempts": 3, "backoff": "fixed", "base": "200ms", "jitter": 0}})
    items = [{"k": f"k{i % 3}", "n": i, "fail": 1 if i % 4 == 0 else 0} for i in range(24)]
    assert Dispatcher(settings).dispatch_many("work", items).ok
    worker = start_worker(settings)
    wait_for(lambda: worker.worker.counters.done == 24, timeout=40, what="all jobs")
    worker.stop()
    successes: dict[str, list[int]] = {}
    failed_first = {i for i in range(24) if i % 4 == 0}
    for run in sorted(engine_jobs.RUNS, key=lambda r: r["t"]):
        if run["n"] in failed_first and run["attempt"] == 1:
            continue
        successes.setdefault(run["key"], []).append(run["n"])
    for ns in successes.values():
        assert ns == sorted(ns)


def test_blocking_retry_backoff_longer_than_the_timeout_keeps_order_and_runs_once(make_settings,
                                                                                 start_worker) -> None:
    """A blocking retry waits its backoff with the job's timeout suspended: the job is not declared
    timed out mid-sleep, the next job of its key waits for it, and nothing runs twice."""
    settings = make_settings({"work": {"handler": "engine_jobs:flaky", "ordering": "key", "key": "k",
                                       "blocking_retries": True, "partitions": 1, "timeout": "1s"}},
                             retry={"default": {"max_attempts": 3, "backoff": "fixed", "base": "2s", "jitter": 0}})
    dispatcher = Dispatcher(settings)
    first = dispatcher.dispatch("work", {"k": "a", "n": 1, "fail": 1})
    second = dispatcher.dispatch("work", {"k": "a", "n": 2})
    worker = start_worker(settings)
    wait_for(lambda: worker.worker.counters.done == 2, timeout=40, what="both jobs")
    time.sleep(0.5)  # a duplicate run from a timed-out first attempt would show up by now
    worker.stop()
    runs = sorted(engine_jobs.RUNS, key=lambda r: r["t"])
    assert [(r["id"], r["attempt"]) for r in runs] == [(first, 1), (first, 2), (second, 1)]
    assert runs[1]["t"] - runs[0]["t"] >= 2.0  # the whole backoff, in place
    c = worker.worker.counters
    assert (c.done, c.failed, c.retried, c.dead) == (2, 0, 0, 0)


def test_worker_killed_while_jobs_wait_in_tiers(kafka: Cluster, fresh_prefix: str, tmp_path: Path) -> None:
    tree = settings_tree(kafka.bootstrap, fresh_prefix, {"work": {"handler": "engine_jobs:record"}})
    path = write_config(tmp_path / "jobs.toml", tree)
    settings = config.from_dict(tree, tmp_path)
    dispatcher = Dispatcher(settings)
    delays_ms = [1500, 2500, 3500, 4500, 5500] * 4
    ids = {dispatcher.dispatch("work", {"n": i}, delay=f"{d}ms") for i, d in enumerate(delays_ms)}
    record = tmp_path / "runs.jsonl"
    proc = spawn_worker(path, record)
    time.sleep(2.5)  # the router holds paused tier partitions now; some jobs may have run
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc = spawn_worker(path, record)
    try:
        wait_for(lambda: {r["id"] for r in runs(record)} >= ids, timeout=40, what="every delayed job")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    for run in runs(record):
        assert run["t"] >= run["due"], f"ran early: {run}"


def test_clear_drops_the_queues_jobs_waiting_in_tiers(make_settings, start_worker, router, tmp_path: Path) -> None:
    from protojobs.cli import queues
    settings = make_settings({"work": {"handler": "engine_jobs:record"}, "other": {"handler": "engine_jobs:record"}})
    dispatcher = Dispatcher(settings)
    doomed = {dispatcher.dispatch("work", {"n": i}, delay="1500ms") for i in range(5)}
    doomed |= set(dispatcher.dispatch_many("work", [{"n": i} for i in range(5, 10)]).ids)
    kept_other = dispatcher.dispatch("other", {"n": 100}, delay="1500ms")
    path = write_config(tmp_path / "jobs.toml", dict(settings.raw))
    time.sleep(0.05)
    assert queues.clear(str(path), "work", yes=True) == 0
    kept = dispatcher.dispatch("work", {"n": 200}, delay="500ms")
    router(settings)
    worker = start_worker(settings)
    wait_for(lambda: {kept, kept_other} <= {r["id"] for r in engine_jobs.RUNS}, timeout=30, what="kept jobs")
    time.sleep(2.5)  # every doomed job is due by now
    worker.stop()
    assert not doomed & {r["id"] for r in engine_jobs.RUNS}
