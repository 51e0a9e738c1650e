"""The seed's facade (protojobs.jobs): Jobs.configure/dispatch/work/stats/clear/failed_jobs/retry,
events and the Job hooks, against a real broker."""

from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import facade_jobs
import pytest
from conftest import settings_tree, wait_for, write_config
from facade_jobs import (
    BrokenHookJob,
    CleanupJob,
    FlakyJob,
    NoRetryJob,
    NowhereJob,
    SendEmailJob,
    ToggleJob,
    TwoAttemptsJob,
)
from test_engine import read_all

from protojobs import Hooks, Jobs
from protojobs.api.events import EVENTS, JobEvent
from protojobs.config import ConfigError, Settings
from protojobs.engine.dispatch import DispatchError
from protojobs.kafka import admin
from protojobs.model import envelope
from protojobs.model import names as topics
from protojobs.testing import Cluster, profile

pytestmark = pytest.mark.broker
DEFAULT_JOBS = ["facade_jobs:CleanupJob", "facade_jobs:FlakyJob", "facade_jobs:NoRetryJob",
                "facade_jobs:BrokenHookJob", "facade_jobs:ToggleJob"]
QUEUES = {"emails": {"handler": "facade_jobs:SendEmailJob"}, "default": {"jobs": DEFAULT_JOBS}}


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    facade_jobs.RUNS.clear()
    facade_jobs.FAILED.clear()
    facade_jobs.SWITCH["broken"] = True
    Jobs.reset()
    yield
    Jobs.stop()
    Jobs.reset()


class Background:
    """`Jobs.work(...)` (or any call) in a thread."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised by join()
            self.error = exc

    def join(self, timeout: float = 30) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.error is not None:
            raise self.error
        return self.result


def record_events(target: Any = Jobs) -> list[JobEvent]:
    seen: list[JobEvent] = []
    for name in EVENTS:
        target.listen(name, seen.append)
    return seen


def started(target: Any = Jobs) -> threading.Event:
    flag = threading.Event()
    target.listen("worker.starting", lambda _event: flag.set())
    return flag


def work_in_thread(queue: str = "default", target: Any = Jobs) -> Background:
    flag = started(target)
    running = Background(lambda: target.work(queue))
    assert flag.wait(30), "worker.starting was not emitted"
    return running


def records(settings: Settings, topic: str, expected: int, timeout: float = 15) -> list[bytes]:
    return read_all(settings.kafka.brokers, topic, expected, timeout)


def count(settings: Settings, topic: str) -> int:
    """Records in `topic` (retrying the broker's transient errors right after topic creation)."""
    marks = admin.watermarks(admin.client(settings), topic)
    return sum(high - low for low, high in marks.values())


def queue_topic(settings: Settings, queue: str) -> str:
    return topics.queue_topic(settings.kafka.topic_prefix, queue)


# --- configure ----------------------------------------------------------------------------------


def test_configure_takes_the_seed_dict_a_nested_dict_and_a_path(kafka: Cluster, fresh_prefix: str,
                                                                 tmp_path: Path, monkeypatch) -> None:
    Jobs.configure({"driver": "kafka", "brokers": kafka.bootstrap, "group_id": "my-app-jobs-consumer",
                    "topic_prefix": fresh_prefix, "compression": "lz4", "debug": ""})
    settings = Jobs.default().settings
    assert (settings.kafka.brokers, settings.kafka.group_id) == (kafka.bootstrap, "my-app-jobs-consumer")
    assert settings.kafka.compression == "lz4" and list(settings.queues) == ["default"]
    Jobs.configure({"driver": "kafka", "kafka": {"brokers": "a:1,b:2", "topic_prefix": fresh_prefix},
                    "queues": {"emails": {"handler": "facade_jobs:SendEmailJob"}}})
    assert Jobs.default().settings.kafka.brokers == "a:1,b:2"
    assert list(Jobs.default().settings.queues) == ["emails"]
    path = write_config(tmp_path / "jobs.toml", settings_tree(kafka.bootstrap, fresh_prefix, QUEUES))
    Jobs.configure(str(path))
    assert Jobs.default().settings.source == path and set(Jobs.default().settings.queues) == {"emails", "default"}
    with pytest.raises(ConfigError, match="driver: 'database' is not supported"):
        Jobs.configure({"driver": "database"})
    with pytest.raises(ConfigError, match="kafka.brokers: given both"):
        Jobs.configure({"brokers": "x:1", "kafka": {"brokers": "y:1"}})
    with pytest.raises(ConfigError, match="connection"):
        Jobs.configure({"driver": "kafka", "connection": "default"})  # a database-driver key
    assert Jobs.default().settings.source == path  # a refused configure changes nothing
    Jobs.reset()  # unconfigured: $PROTOJOBS_CONFIG, else ./jobs.toml
    monkeypatch.delenv("PROTOJOBS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(ConfigError, match="not configured: call Jobs.configure"):
        Jobs.dispatch(CleanupJob, {})
    monkeypatch.chdir(tmp_path)
    assert Jobs.default().settings.source == path


def test_seed_worker_flow_on_the_default_queue_and_event_order(kafka: Cluster, fresh_prefix: str) -> None:
    """The seed's script: configure with its flat keys, dispatch a Job class, work('default', 1)."""
    Jobs.configure({"driver": "kafka", "brokers": kafka.bootstrap, "group_id": f"{fresh_prefix}workers",
                    "topic_prefix": fresh_prefix, "kafka": {"producer": dict(profile.PRODUCER),
                                                            "consumer": dict(profile.CONSUMER)}})
    seen = record_events()
    job_id = Jobs.dispatch(CleanupJob, {"n": 1})
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    counters = Jobs.work("default", 1)  # main thread: stops after one job
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert counters.done == 1 and facade_jobs.RUNS == [{"job": "CleanupJob", "data": {"n": 1},
                                                        "attempt": None, "queue": None}]
    assert [e.name for e in seen] == ["job.queuing", "job.queued", "worker.starting", "job.processing",
                                      "job.processed", "worker.stopped"]
    by_name = {e.name: e for e in seen}
    assert by_name["job.queuing"].job.id == by_name["job.queued"]["id"] == job_id
    assert by_name["job.queued"].job.job == "CleanupJob" and by_name["job.queued"].queue == "default"
    processed = by_name["job.processed"]
    assert processed.job.id == job_id and processed.result == {"n": 1}
    assert processed.execution_time == processed.duration and 0 <= processed.duration < 10
    assert by_name["worker.starting"].queue == "default" and by_name["worker.stopped"].processed == 1


# --- dispatch -----------------------------------------------------------------------------------


def test_dispatch_by_class_and_by_name_routes_by_the_class_queue(make_settings) -> None:
    settings = make_settings(QUEUES)
    Jobs.configure(settings)
    by_class = Jobs.dispatch(SendEmailJob, {"to": "user@example.com"})
    by_name = Jobs.dispatch("SendEmailJob", {"to": "b@example.com"})
    by_instance = Jobs.dispatch(CleanupJob(), {"n": 2})
    by_name_and_queue = Jobs.dispatch("CleanupJob", {"n": 3}, "default")
    with pytest.raises(DispatchError, match="unknown queue 'nowhere'"):
        Jobs.dispatch(NowhereJob, {})
    with pytest.raises(TypeError, match="Job class"):
        Jobs.dispatch(42, {})  # type: ignore[arg-type]
    emails = [envelope.decode(v) for v in records(settings, queue_topic(settings, "emails"), 2)]
    default = [envelope.decode(v) for v in records(settings, queue_topic(settings, "default"), 2)]
    assert {(e.id, e.job, e.queue) for e in emails} == {(by_class, "SendEmailJob", "emails"),
                                                        (by_name, "SendEmailJob", "emails")}
    assert {(e.id, e.job) for e in default} == {(by_instance, "CleanupJob"), (by_name_and_queue, "CleanupJob")}
    # a Job class named as a queue's handler in jobs.toml runs, and its result is the event's
    results: list[Any] = []
    Jobs.listen("job.processed", lambda event: results.append(event.result))
    assert Jobs.work("emails", 2).done == 2
    assert sorted(r["sent_to"] for r in results) == ["b@example.com", "user@example.com"]
    assert {r["job"] for r in facade_jobs.RUNS} == {"SendEmailJob"}


def test_dispatch_later_waits_in_a_delay_tier(make_settings) -> None:
    settings = make_settings(QUEUES)
    Jobs.configure(settings)
    ids = [Jobs.dispatch_later("5m", CleanupJob, {"n": 1}),
           Jobs.dispatchLater(2.5, CleanupJob, {"n": 2}),  # the seed's spelling; seconds
           Jobs.dispatch(CleanupJob, {"n": 3}, delay=30)]
    assert len(set(ids)) == 3
    assert count(settings, queue_topic(settings, "default")) == 0  # not in the queue yet
    delayed = sum(count(settings, topics.delay_topic(settings.kafka.topic_prefix, t)) for t in settings.tiers_ms)
    assert delayed == 3 and Jobs.stats("default")["delayed"] == 3
    with pytest.raises(ValueError, match="0 or more seconds"):
        Jobs.dispatch_later(-1, CleanupJob, {})
    with pytest.raises(ValueError, match="not a delay"):
        Jobs.dispatch_later("soon", CleanupJob, {})


def test_dispatch_later_without_delay_tiers_is_refused(make_settings) -> None:
    with pytest.raises(ConfigError, match="delays.tiers"):
        make_settings(QUEUES, delays={"tiers": []})  # the schema wants at least one tier
    settings = dataclasses.replace(make_settings(QUEUES), tiers_ms=())
    Jobs.configure(settings)
    with pytest.raises(DispatchError, match="needs delay tiers"):
        Jobs.dispatch_later(60, CleanupJob, {"n": 1})
    with pytest.raises(DispatchError, match="needs delay tiers"):
        Jobs.dispatch(CleanupJob, {"n": 2}, delay="1s")
    assert count(settings, queue_topic(settings, "default")) == 0  # never a silent immediate run
    Jobs.dispatch_later(0, CleanupJob, {"n": 3})  # no delay: sent at once
    assert count(settings, queue_topic(settings, "default")) == 1


# --- work and stop ------------------------------------------------------------------------------


def test_work_in_a_thread_runs_until_stop(make_settings) -> None:
    Jobs.configure(make_settings(QUEUES))
    before = signal.getsignal(signal.SIGTERM)
    running = work_in_thread("default")
    assert signal.getsignal(signal.SIGTERM) == before  # not the main thread: nothing installed
    for n in range(3):
        Jobs.dispatch(CleanupJob, {"n": n})
    wait_for(lambda: len(facade_jobs.RUNS) == 3, what="3 jobs")
    time.sleep(0.5)
    assert running.thread.is_alive()  # max_jobs 0: forever
    Jobs.stop()
    counters = running.join()
    assert counters.done == 3 and sorted(r["data"]["n"] for r in facade_jobs.RUNS) == [0, 1, 2]


def test_instances_are_independent_of_the_default(make_settings) -> None:
    settings = make_settings(QUEUES)
    own = Jobs(settings)
    own_events, default_events = record_events(own), record_events(Jobs)
    Jobs.configure(settings)
    Jobs.dispatch(CleanupJob, {"n": 1})
    assert [e.name for e in default_events] == ["job.queuing", "job.queued"] and own_events == []
    own.dispatch(CleanupJob, {"n": 2})
    assert [e.name for e in own_events] == ["job.queuing", "job.queued"]
    assert own.work("default", 2).done == 2 and len(default_events) == 2
    with pytest.raises(ValueError, match="unknown event 'job.done'"):
        Jobs.listen("job.done", print)
    assert Jobs.__dict__["dispatchLater"] is Jobs.__dict__["dispatch_later"]
    assert Jobs.__dict__["failedJobs"] is Jobs.__dict__["failed_jobs"]


WORKER_SCRIPT = """
import signal, sys
from protojobs import Jobs
Jobs.configure({"driver": "kafka", "brokers": sys.argv[1], "group_id": sys.argv[2] + "workers",
                "topic_prefix": sys.argv[2]})
if sys.argv[3] == "own":  # the seed's script installs its own handlers
    signal.signal(signal.SIGTERM, lambda *_: Jobs.stop())
Jobs.listen("worker.starting", lambda _e: print("started", flush=True))
counters = Jobs.work("default")
print("stopped", counters.done, flush=True)
"""


@pytest.mark.parametrize("handlers", ["own", "installed by work"])
def test_sigterm_stops_a_worker_script(kafka: Cluster, fresh_prefix: str, handlers: str) -> None:
    with subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, kafka.bootstrap, fresh_prefix, handlers],
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert proc.stdout.read().strip() == "stopped 0"
        finally:
            proc.kill()


# --- failures, hooks and events -----------------------------------------------------------------


def test_job_failed_event_carries_error_and_attempts(make_settings) -> None:
    Jobs.configure(make_settings(QUEUES))
    failed: list[JobEvent] = []
    done = threading.Event()
    Jobs.listen("job.failed", failed.append)
    Jobs.listen("job.processed", lambda _e: done.set())
    job_id = Jobs.dispatch(FlakyJob, {"fail": 2})
    running = work_in_thread("default")
    assert done.wait(30), "the job never succeeded"
    Jobs.stop()
    running.join()
    assert [(e.job.id, e.attempts, e.final) for e in failed] == [(job_id, 1, False), (job_id, 2, False)]
    assert all(isinstance(e.error, RuntimeError) and e.exception is e.error for e in failed)
    assert "attempt 1 fails on purpose" in str(failed[0].error)
    assert [r["attempt"] for r in facade_jobs.RUNS] == [1, 2, 3]


def test_a_raising_listener_breaks_neither_dispatch_nor_the_worker(make_settings, caplog) -> None:
    Jobs.configure(make_settings(QUEUES))

    def broken(event: JobEvent) -> None:
        raise RuntimeError(f"listener broken on {event.name}")

    for name in EVENTS:
        Jobs.listen(name, broken)
    seen = record_events()  # registered after the broken ones: still called
    with caplog.at_level(logging.ERROR, logger="protojobs.api.events"):
        job_id = Jobs.dispatch(CleanupJob, {"n": 1})
        assert Jobs.work("default", 1).done == 1
    assert [e.name for e in seen] == ["job.queuing", "job.queued", "worker.starting", "job.processing",
                                      "job.processed", "worker.stopped"]
    assert facade_jobs.RUNS[0]["data"] == {"n": 1} and seen[-2].job.id == job_id
    logged = [r for r in caplog.records if "listener" in r.getMessage()]
    assert len(logged) == 6 and all(r.exc_info and "listener broken" in str(r.exc_info[1]) for r in logged)


def test_typed_hooks_run_off_the_polling_thread(make_settings) -> None:
    settings = make_settings(QUEUES)
    Jobs.configure(settings)
    seen: list[tuple[str, str, str]] = []

    class Recorder(Hooks):
        def before_dispatch(self, queue: str, data: Any, options: dict[str, Any]) -> None:
            seen.append(("dispatch", queue, threading.current_thread().name))

        def worker_started(self, queues: list[str]) -> None:
            seen.append(("started", ",".join(queues), threading.current_thread().name))

        def after_process(self, job: Any, result: Any, duration: float) -> None:
            seen.append(("processed", job.job, threading.current_thread().name))

        def after_dead_letter(self, job: Any, queue: str, target: str, reason: str) -> None:
            seen.append(("dead", reason, threading.current_thread().name))

    Jobs.add_hooks(Recorder())
    Jobs.dispatch(CleanupJob, {"n": 1})
    Jobs.dispatch(NoRetryJob, {"to": "x@example.com"})
    running = work_in_thread("default")
    wait_for(lambda: {s[0] for s in seen} >= {"processed", "dead"}, what="the hooks of both jobs")
    Jobs.stop()
    running.join()
    by_kind = {kind: (what, thread) for kind, what, thread in seen}
    poll_thread = by_kind["started"][1]  # worker_started runs on the thread that polls Kafka
    assert [s for s in seen if s[0] == "dispatch"] == [("dispatch", "default", threading.current_thread().name)] * 2
    assert by_kind["processed"][0] == "CleanupJob" and by_kind["processed"][1].startswith("protojobs-default")
    assert by_kind["dead"] == ("should_retry returned False", "protojobs-hooks")
    assert poll_thread not in (by_kind["processed"][1], by_kind["dead"][1])


def test_should_retry_false_dead_letters_at_once(make_settings) -> None:
    settings = make_settings(QUEUES)
    Jobs.configure(settings)
    failed: list[JobEvent] = []
    Jobs.listen("job.failed", failed.append)
    job_id = Jobs.dispatch(NoRetryJob, {"to": "x@example.com"})
    running = work_in_thread("default")
    wait_for(lambda: count(settings, settings.kafka.dead_letter_topic) == 1, what="the dead letter")
    time.sleep(1)  # a retry would have run by now (200 ms tier)
    Jobs.stop()
    running.join()
    assert [r["attempt"] for r in facade_jobs.RUNS] == [1]  # the policy allows 3 attempts
    assert [(e.attempts, e.final) for e in failed] == [(1, True)]
    assert len(facade_jobs.FAILED) == 1
    assert isinstance(facade_jobs.FAILED[0]["error"], ConnectionError)
    assert facade_jobs.FAILED[0]["data"] == {"to": "x@example.com"}
    (entry,) = Jobs.failed_jobs()
    assert entry.job_id == job_id and entry.dead is not None
    assert entry.dead.reason == "should_retry returned False" and entry.dead.error_type == "ConnectionError"


def test_a_raising_failed_hook_does_not_stop_the_worker(make_settings, caplog) -> None:
    settings = make_settings(QUEUES)
    Jobs.configure(settings)
    with caplog.at_level(logging.ERROR, logger="protojobs.engine.attempt"):
        broken = Jobs.dispatch(BrokenHookJob, {"n": 1})
        Jobs.dispatch(CleanupJob, {"n": 2})
        running = work_in_thread("default")
        wait_for(lambda: any(r["job"] == "CleanupJob" for r in facade_jobs.RUNS), what="the next job")
        wait_for(lambda: count(settings, settings.kafka.dead_letter_topic) == 1, what="the dead letter")
        assert running.thread.is_alive()
        Jobs.dispatch(CleanupJob, {"n": 3})  # still working after the broken hook
        wait_for(lambda: len(facade_jobs.RUNS) == 3, what="a job after the broken hook")
        Jobs.stop()
        running.join()
    assert [f["job"] for f in facade_jobs.FAILED] == ["BrokenHookJob"]  # called once
    (logged,) = [r for r in caplog.records if "failed() hook" in r.getMessage()]
    assert logged.exc_info is not None and "hook itself is broken" in str(logged.exc_info[1])
    assert [e.job_id for e in Jobs.failed_jobs()] == [broken]


def test_max_retries_counts_attempts_where_the_file_sets_none(make_settings) -> None:
    settings = make_settings({"default": {"jobs": ["facade_jobs:TwoAttemptsJob"]}},
                             retry={"default": {"backoff": "fixed", "base": "200ms", "jitter": 0}})
    assert settings.retry["default"].max_attempts == 5  # the schema's default...
    Jobs.configure(settings)
    Jobs.dispatch(TwoAttemptsJob, {"n": 1})
    running = work_in_thread("default")
    wait_for(lambda: len(facade_jobs.FAILED) == 1, what="the failed hook")
    time.sleep(1)
    Jobs.stop()
    running.join()
    assert [r["attempt"] for r in facade_jobs.RUNS] == [1, 2]  # ...but the class says 2
    (entry,) = Jobs.failed_jobs()
    assert entry.dead is not None and "2 of 2 attempts" in entry.dead.reason


# --- stats, clear, failed jobs ------------------------------------------------------------------


def test_stats_and_clear_count_real_records(make_settings) -> None:
    settings = make_settings(QUEUES)
    Jobs.configure(settings)
    for n in range(7):
        Jobs.dispatch(CleanupJob, {"n": n})
    Jobs.dispatch(SendEmailJob, {"to": "a@example.com"})
    stats = Jobs.stats("default")
    assert (stats["queue"], stats["depth"], stats["delayed"], stats["dead_lettered"]) == ("default", 7, 0, 0)
    assert sum(stats["partitions"].values()) == 7 and stats["members"] == []
    assert {name: s["depth"] for name, s in Jobs.stats().items()} == {"default": 7, "emails": 1}
    assert Jobs.clear("default") == 7
    assert Jobs.stats("default")["depth"] == 0 and Jobs.stats("emails")["depth"] == 1
    assert Jobs.clear("default") == 0
    with pytest.raises(ValueError, match="unknown queue 'nope'"):
        Jobs.clear("nope")


def test_failed_jobs_and_retry_redrive_a_dead_job(make_settings) -> None:
    pytest.importorskip("protojobs.ops.dlq")
    settings = make_settings(QUEUES, retry={"default": {"max_attempts": 1}})
    Jobs.configure(settings)
    job_id = Jobs.dispatch(ToggleJob, {"n": 1})
    other = Jobs.dispatch(NoRetryJob, {"n": 2})
    succeeded = threading.Event()
    Jobs.listen("job.processed", lambda e: e.job.id == job_id and e.result == "fixed" and succeeded.set())
    running = work_in_thread("default")
    wait_for(lambda: count(settings, settings.kafka.dead_letter_topic) == 2, what="two dead letters")
    newest_first = [e.job_id for e in Jobs.failedJobs()]
    assert sorted(newest_first) == sorted([job_id, other])
    assert [e.job_id for e in Jobs.failed_jobs(limit=1, offset=1)] == newest_first[1:]
    assert Jobs.failed_jobs(limit=5, offset=2) == []
    facade_jobs.SWITCH["broken"] = False
    assert Jobs.retry(job_id) is True
    assert succeeded.wait(30), "the retried job did not run"
    assert Jobs.retry("no-such-job") is False
    Jobs.stop()
    running.join()
    assert [r["attempt"] for r in facade_jobs.RUNS if r["job"] == "ToggleJob"] == [1, 1]  # replayed as attempt 1


def test_import_protojobs_stays_light() -> None:
    code = ("import sys, protojobs\n"
            "assert 'confluent_kafka' not in sys.modules\n"
            "from protojobs import Job, PermanentError, RetryLater\n"
            "assert 'confluent_kafka' not in sys.modules, 'Job imported the Kafka client'\n"
            "assert protojobs.Jobs.__module__ == 'protojobs.api.facade'\n"
            "assert PermanentError.__module__ == RetryLater.__module__ == 'protojobs.model.retry'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
