"""The engine against a real broker: dispatch, workers, offsets, ordering, failure path, stats, clear."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import engine_jobs
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from conftest import read_jsonl, settings_tree, wait_for, write_config
from prometheus_client import REGISTRY

from protojobs.cli import queues
from protojobs.config import PayloadError
from protojobs.engine.dispatch import Dispatcher
from protojobs.kafka import admin
from protojobs.model import dead_letter, envelope
from protojobs.model import names as topics
from protojobs.observe import health, metrics
from protojobs.ops.stats import stats_data
from protojobs.testing import Cluster, profile

pytestmark = pytest.mark.broker
TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _clean_runs() -> Iterator[None]:
    engine_jobs.RUNS.clear()
    engine_jobs.HANG.clear()
    yield
    engine_jobs.HANG.set()  # release this test's hung handlers (they record nothing more)


def committed_equals_end(settings: Any, queue: str) -> bool:
    client = admin.client(settings)
    topic = topics.queue_topic(settings.kafka.topic_prefix, queue)
    marks = admin.watermarks(client, topic)
    done = admin.committed(client, settings.kafka.group_id, topic, marks)
    return all(done.get(p, low) == high for p, (low, high) in marks.items())


def test_dispatched_jobs_all_run_and_commit(make_settings, start_worker) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    dispatcher = Dispatcher(settings)
    result = dispatcher.dispatch_many("work", [{"n": i} for i in range(300)])
    assert result.ok and len(result.ids) == 300
    worker = start_worker(settings)
    wait_for(lambda: len(engine_jobs.RUNS) >= 300, what="300 runs")
    wait_for(lambda: committed_equals_end(settings, "work"), what="commits")
    worker.stop()
    assert sorted(r["n"] for r in engine_jobs.RUNS) == list(range(300))
    assert {r["id"] for r in engine_jobs.RUNS} == set(result.ids)
    data = stats_data(settings)
    assert data["queues"]["work"]["depth"] == 0


def committed_total(settings: Any, queue: str) -> int:
    client = admin.client(settings)
    topic = topics.queue_topic(settings.kafka.topic_prefix, queue)
    marks = admin.watermarks(client, topic)
    return sum(admin.committed(client, settings.kafka.group_id, topic, marks).values())


def quick_runs() -> list[dict[str, Any]]:
    return [r for r in engine_jobs.RUNS if r.get("phase") != "hang"]


def test_max_jobs_runs_and_commits_exactly_n(make_settings, start_worker) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    assert Dispatcher(settings).dispatch_many("work", [{"n": i} for i in range(100)]).ok
    first = start_worker(settings, max_jobs=40)
    wait_for(lambda: not first.thread.is_alive(), what="the worker to stop after 40 jobs")
    first.stop()
    assert len(engine_jobs.RUNS) == 40 and first.worker.counters.done == 40
    assert committed_total(settings, "work") == 40  # every job it ran, and only those
    second = start_worker(settings)  # the other 60 stayed queued: the next worker runs exactly them
    wait_for(lambda: committed_equals_end(settings, "work"), what="the rest to run and commit")
    second.stop()
    assert sorted(r["n"] for r in engine_jobs.RUNS) == list(range(100))  # each ran once


def test_uncommitted_window_is_bounded_behind_a_slow_job(make_settings, start_worker) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record", "partitions": 1, "concurrency": 4}})
    assert Dispatcher(settings).dispatch_many("work", [{"n": 0, "hang": 60}] + [{"n": i} for i in range(1, 61)]).ok
    worker = start_worker(settings, max_uncommitted=20)
    w = worker.worker
    topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    # behind the stuck head (offset 0) only 19 more jobs start: the partition is paused
    wait_for(lambda: len(quick_runs()) == 19 and (topic, 0) in w.partitions.withheld, what="the window to fill")
    paused_at = w.last_poll
    wait_for(lambda: w.last_poll > paused_at + 1.0, what="the loop to keep polling for a second")
    assert len(quick_runs()) == 19 and w.uncommitted == {"work": 20}
    metrics.sample_in_flight(w)
    assert REGISTRY.get_sample_value("protojobs_uncommitted", {"queue": "work"}) == 20
    engine_jobs.HANG.set()  # the head finishes: the window drains, the partition resumes
    wait_for(lambda: len(quick_runs()) == 60 and committed_equals_end(settings, "work"), what="the rest")
    worker.stop()
    assert sorted(r["n"] for r in quick_runs()) == list(range(1, 61))  # none skipped, none twice


def test_commits_on_a_count_of_finished_jobs(make_settings, start_worker) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    assert Dispatcher(settings).dispatch_many("work", [{"n": i} for i in range(60)]).ok
    worker = start_worker(settings, commit_interval=3600, commit_every=10)  # the interval never comes
    wait_for(lambda: len(engine_jobs.RUNS) == 60, what="60 runs")
    wait_for(lambda: committed_total(settings, "work") >= 50, what="commits every 10 finished jobs")
    worker.stop()
    assert committed_total(settings, "work") == 60  # and on shutdown


def test_hung_handlers_keep_the_lane_running_and_wedge_it(make_settings, start_worker, tmp_path: Path) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record", "partitions": 1, "concurrency": 2,
                                       "timeout": "1s", "retry": "once"}}, retry={"once": {"max_attempts": 1}})
    dispatcher = Dispatcher(settings)
    assert dispatcher.dispatch_many("work", [{"n": i, "hang": 120} for i in range(8)]).ok
    assert dispatcher.dispatch_many("work", [{"n": i} for i in range(8, 18)]).ok
    worker = start_worker(settings, max_hung=3)
    w = worker.worker
    # 8 handlers hang past their timeout, more than the old pool's 2 x 2 + 2 threads: the lane
    # still runs 2 jobs at a time and the 10 others run
    wait_for(lambda: len(quick_runs()) == 10, timeout=40, what="the jobs behind the hung ones")
    wait_for(lambda: committed_equals_end(settings, "work"), what="every job settled and committed")
    assert w.counters.dead == 8 and w.counters.done == 10
    topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    assert w.lanes[topic].hung == 8 and w.wedged() == {"work": 8}
    metrics.sample_in_flight(w)
    assert REGISTRY.get_sample_value("protojobs_hung_handlers", {"queue": "work"}) == 8
    health.write_heartbeat(tmp_path, 0, health.heartbeat(w))
    ok, reason = health.Checks(settings, tmp_path, [0]).healthz()
    assert not ok and "queue work wedged: 8 handlers hung past their timeout (limit 3)" in reason, reason
    started = time.monotonic()
    worker.stop()  # hung threads do not hold up the shutdown
    assert time.monotonic() - started < 10


def test_failed_hook_blocking_past_the_timeout_keeps_the_handlers_failure(make_settings, start_worker,
                                                                          kafka: Cluster) -> None:
    """A Job's failed() that blocks past the queue's timeout: it is called once, the job is
    dead-lettered with the handler's own error (not a TimeoutError decided a second time, which
    called failed() again on the replacement thread), and the jobs behind it run."""
    engine_jobs.FAILED_CALLS.clear()
    settings = make_settings({"work": {"handler": "engine_jobs:BlockingFailure", "partitions": 1, "concurrency": 2,
                                       "timeout": "1s", "retry": "once"},
                              "quick": {"handler": "engine_jobs:record", "partitions": 1}},
                             retry={"once": {"max_attempts": 1}})
    dispatcher = Dispatcher(settings)
    assert dispatcher.dispatch_many("work", [{"n": i, "block": 4} for i in range(2)]).ok
    assert dispatcher.dispatch_many("quick", [{"n": i} for i in range(2, 7)]).ok
    worker = start_worker(settings)
    records = [dead_letter.decode_dead_letter(v) for v in read_all(kafka.bootstrap,
                                                                     settings.kafka.dead_letter_topic, 2, timeout=30)]
    assert [r.error_type for r in records] == ["ValueError", "ValueError"], [r.reason for r in records]
    wait_for(lambda: committed_equals_end(settings, "work") and committed_equals_end(settings, "quick"),
             what="both queues committed")
    assert sorted(c["n"] for c in engine_jobs.FAILED_CALLS) == [0, 1]  # once per job
    assert {c["error"] for c in engine_jobs.FAILED_CALLS} == {"ValueError"}
    assert sorted(r["n"] for r in engine_jobs.RUNS if r["n"] >= 2) == [2, 3, 4, 5, 6]
    assert worker.worker.counters.dead == 2


def test_timed_out_attempt_in_a_blocking_retries_queue_keeps_its_key_waiting(make_settings, start_worker) -> None:
    """ordering = "key" with blocking retries, backoff (2 s) longer than the timeout (1 s): the
    first job of a key hangs past its timeout; its retry waits out the backoff in place and the
    key's later jobs start only after it succeeded (they ran first, and the retry went through a
    delay tier, before)."""
    settings = make_settings({"work": {"handler": "engine_jobs:hang_once", "partitions": 1, "concurrency": 2,
                                       "timeout": "1s", "ordering": "key", "key": "k", "blocking_retries": True,
                                       "retry": "slow"}},
                             retry={"slow": {"max_attempts": 3, "backoff": "fixed", "base": "2s", "jitter": 0}})
    dispatcher = Dispatcher(settings)
    assert dispatcher.dispatch_many("work", [{"n": 0, "k": "a", "hang": 3}]
                                    + [{"n": i, "k": "a"} for i in range(1, 4)]).ok
    start_worker(settings)
    wait_for(lambda: len(engine_jobs.RUNS) >= 4, timeout=40, what="four runs")
    runs = sorted(engine_jobs.RUNS, key=lambda r: r["t"])
    assert [r["n"] for r in runs] == [0, 1, 2, 3], runs
    assert runs[0]["attempt"] == 2 and runs[0]["offset"] == 0  # retried in place, not through a tier
    wait_for(lambda: committed_equals_end(settings, "work"), what="the queue committed")


def test_shutdown_waits_for_running_jobs_at_most_shutdown_timeout(make_settings, start_worker) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record", "partitions": 1, "timeout": "60s"}})
    assert Dispatcher(settings).dispatch_many("work", [{"n": 0, "hang": 120}, {"n": 1}]).ok
    worker = start_worker(settings, shutdown_timeout=1)
    wait_for(lambda: len(engine_jobs.RUNS) == 2, what="both jobs started")
    started = time.monotonic()
    worker.stop()  # the hung job is within its timeout: waited for 1 s, not 60
    assert time.monotonic() - started < 8
    assert committed_total(settings, "work") == 0  # not finished: the next owner runs it (and the one behind it)


def test_invalid_payload_refused_at_dispatch(make_settings, kafka: Cluster) -> None:
    settings = make_settings({"mail": {"handler": "engine_jobs:record", "schema": "schemas/send_email.json"}})
    dispatcher = Dispatcher(settings)
    with pytest.raises(PayloadError, match=r"data\.to"):
        dispatcher.dispatch("mail", {"to": "not an address"})
    with pytest.raises(PayloadError, match="to"):
        dispatcher.dispatch("mail", {"subject": "no recipient"})
    client = admin.client(settings)
    marks = admin.watermarks(client, topics.queue_topic(settings.kafka.topic_prefix, "mail"))
    assert sum(h for _, h in marks.values()) == 0  # nothing was sent


def test_garbage_record_is_dead_lettered_with_reason(make_settings, start_worker, kafka: Cluster) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record",
                                       "schema": "schemas/report.json"}})
    Dispatcher(settings).dispatch("work", {"report_id": "r1", "n": 1})
    topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(topic, b"\xff not json at all")
    wrong = envelope.encode(envelope.new_envelope("work", "x", {"nope": 1}, now_ms=1))
    producer.produce(topic, wrong)
    producer.flush(10)
    worker = start_worker(settings)
    wait_for(lambda: worker.worker.counters.dead >= 2 and worker.worker.counters.done >= 1, what="dead letters")
    worker.stop()
    records = read_all(kafka.bootstrap, settings.kafka.dead_letter_topic, 2)
    reasons = sorted(dead_letter.decode_dead_letter(v).reason for v in records)
    assert reasons == ["payload failed its schema on consume", "undecodable record"]
    raw = [dead_letter.decode_dead_letter(v) for v in records if dead_letter.decode_dead_letter(v).raw]
    assert raw and "not json" in (raw[0].raw or "") and raw[0].topic == topic


def test_permanent_failure_dead_letters_after_ack(make_settings, start_worker, kafka: Cluster) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:poison", "retry": "strict"}},
                             retry={"strict": {"max_attempts": 1}})
    job_id = Dispatcher(settings).dispatch("work", {"n": 7})
    worker = start_worker(settings)
    wait_for(lambda: worker.worker.counters.dead == 1, what="dead letter")
    wait_for(lambda: committed_equals_end(settings, "work"), what="commit after dead-letter")
    worker.stop()
    (value,) = read_all(kafka.bootstrap, settings.kafka.dead_letter_topic, 1)
    dead = dead_letter.decode_dead_letter(value)
    assert dead.envelope is not None and dead.envelope.id == job_id
    assert dead.error_type == "ValueError" and dead.attempts == 1 and "never succeed" in dead.error_message
    assert "Traceback" in dead.traceback and dead.topic.endswith("work") and dead.offset == 0


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 20) -> list[bytes]:
    consumer = Consumer(profile.consumer(bootstrap, f"reader-{time.monotonic_ns()}"))
    consumer.subscribe([topic])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        out += [m.value() for m in consumer.consume(100, 0.5) if m.error() is None]
    consumer.close()
    return out


@pytest.mark.parametrize("handler", ["engine_jobs:record", "engine_jobs:record_async"])
def test_key_order_kept_while_keys_interleave(make_settings, start_worker, handler: str) -> None:
    settings = make_settings({"work": {"handler": handler, "ordering": "key", "key": "k",
                                       "partitions": 1, "concurrency": 4}})
    items = [{"k": f"key{i % 4}", "n": i, "sleep": 0.01} for i in range(80)]
    assert Dispatcher(settings).dispatch_many("work", items).ok
    worker = start_worker(settings)
    wait_for(lambda: len(engine_jobs.RUNS) >= 80, what="80 runs")
    worker.stop()
    by_key: dict[str, list[int]] = defaultdict(list)
    for run in sorted(engine_jobs.RUNS, key=lambda r: r["t"]):
        by_key[run["key"]].append(run["n"])
    for ns in by_key.values():
        assert ns == sorted(ns)
    order = [r["key"] for r in sorted(engine_jobs.RUNS, key=lambda r: r["t"])]
    switches = sum(a != b for a, b in zip(order, order[1:], strict=False))
    assert switches > 20  # keys ran interleaved (one partition, yet parallel across keys)


def test_slow_handler_does_not_cause_rebalance(make_settings, start_worker) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record", "partitions": 1}})
    Dispatcher(settings).dispatch("work", {"n": 1, "sleep": 9})
    Dispatcher(settings).dispatch("work", {"n": 2})
    worker = start_worker(settings, consumer_extra={"max.poll.interval.ms": 6000})
    revokes: list[Any] = []
    original = worker.worker.partitions_revoking
    worker.worker.partitions_revoking = lambda keys: (revokes.append(keys), original(keys))  # type: ignore[method-assign]
    wait_for(lambda: len(engine_jobs.RUNS) >= 2, timeout=40, what="both jobs")
    time.sleep(1)
    during = list(revokes)  # closing the consumer revokes too: only count what came before
    worker.stop()
    assert sorted(r["n"] for r in engine_jobs.RUNS) == [1, 2]  # no duplicate
    assert during == []


def test_clear_deletes_and_stats_match_raw_count(make_settings, kafka: Cluster) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    assert Dispatcher(settings).dispatch_many("work", [{"n": i} for i in range(57)]).ok
    data = stats_data(settings)
    raw = len(read_all(kafka.bootstrap, topics.queue_topic(settings.kafka.topic_prefix, "work"), 57, timeout=10))
    assert data["queues"]["work"]["depth"] == raw == 57
    config_file = write_config(Path(os.environ.get("TMPDIR", "/tmp")) / f"{settings.kafka.topic_prefix}jobs.toml",
                               dict(settings.raw))
    assert queues.clear(str(config_file), "work", yes=False) == 2
    assert queues.clear(str(config_file), "work", yes=True) == 0
    assert stats_data(settings)["queues"]["work"]["depth"] == 0
    assert read_all(kafka.bootstrap, topics.queue_topic(settings.kafka.topic_prefix, "work"), 1, timeout=4) == []


# --- real worker processes --------------------------------------------------------------------


def spawn_worker(config_file: Path, record: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A real `protojobs run` process; its output goes to worker-<n>.log beside the record."""
    env = dict(os.environ, PROTOJOBS_TEST_RECORD=str(record), PYTHONPATH=str(TESTS), PYTHONFAULTHANDLER="1")
    log = record.parent / f"worker-{len(list(record.parent.glob('worker-*.log')))}.log"
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "protojobs.cli", "run", "--config", str(config_file), *extra],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def runs(record: Path) -> list[dict[str, Any]]:
    """The runs recorded so far (worker processes may be appending: a torn last line is skipped)."""
    return read_jsonl(record)


def test_runs_tolerates_a_torn_last_line(tmp_path: Path) -> None:
    record = tmp_path / "runs.jsonl"
    assert runs(record) == []
    record.write_text('{"n": 1}\n{"n": 2}\n{"n": 3, "pi')  # a worker is writing line 3 right now
    assert runs(record) == [{"n": 1}, {"n": 2}]
    with open(record, "a") as fh:
        fh.write('d": 7}\n')
    assert runs(record) == [{"n": 1}, {"n": 2}, {"n": 3, "pid": 7}]
    record.write_text('{"n": 1}\nnot json\n{"n": 3}\n')  # a complete bad line is a real error
    with pytest.raises(ValueError, match="runs.jsonl:2"):
        runs(record)


@pytest.fixture
def worker_config(kafka: Cluster, fresh_prefix: str, tmp_path: Path):
    def make(**queue: Any) -> tuple[Any, Path]:
        from protojobs import config

        tree = settings_tree(kafka.bootstrap, fresh_prefix, {"work": {"handler": "engine_jobs:record", **queue}})
        path = write_config(tmp_path / "jobs.toml", tree)
        return config.from_dict(tree, TESTS.parent), path
    return make


def test_sigkill_redelivers_only_uncommitted(worker_config, tmp_path: Path) -> None:
    settings, path = worker_config(concurrency=2)
    record = tmp_path / "runs.jsonl"
    assert Dispatcher(settings).dispatch_many("work", [{"n": i, "sleep": 0.02} for i in range(200)]).ok
    proc = spawn_worker(path, record)
    try:
        wait_for(lambda: len(runs(record)) >= 60, what="some progress")
        time.sleep(1.2)  # at least one commit interval
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    client = admin.client(settings)
    topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    committed = admin.committed(client, settings.kafka.group_id, topic, range(3))
    first = runs(record)
    assert 0 < len(first) < 200
    proc = spawn_worker(path, record)
    try:
        wait_for(lambda: {r["n"] for r in runs(record)} == set(range(200)), timeout=60, what="all jobs")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    second = [r for r in runs(record)[len(first):]]
    for r in second:
        assert r["offset"] >= committed.get(r["partition"], 0), ("a committed job ran again", r)


def test_sigterm_finishes_in_flight_and_commits_and_sigusr1_dumps_stacks(worker_config, tmp_path: Path) -> None:
    settings, path = worker_config(concurrency=4)
    record = tmp_path / "runs.jsonl"
    assert Dispatcher(settings).dispatch_many("work", [{"n": i, "sleep": 2, "announce": True}
                                                       for i in range(4)]).ok
    proc = spawn_worker(path, record)
    wait_for(lambda: len(runs(record)) == 4, timeout=30, what="4 jobs started")
    log = tmp_path / "worker-0.log"
    proc.send_signal(signal.SIGUSR1)  # every thread's stack to stderr; the worker goes on
    wait_for(lambda: "Current thread" in log.read_text(errors="replace"), timeout=10, what="a stack dump")
    assert proc.poll() is None
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert time.monotonic() - started < 20
    finished = [r["n"] for r in runs(record) if r.get("phase") != "start"]
    assert sorted(finished) == [0, 1, 2, 3]  # in-flight jobs finished before the exit
    assert "engine/worker.py" in log.read_text(errors="replace")  # the dump showed the loop
    assert committed_equals_end(settings, "work")


def _assigned_members(settings: Any) -> int:
    members = admin.group_members(admin.client(settings), settings.kafka.group_id)
    return sum(1 for m in members if m["assignment"])


def test_two_processes_share_partitions_without_loss(worker_config, tmp_path: Path) -> None:
    settings, path = worker_config(concurrency=2, partitions=4)
    record = tmp_path / "runs.jsonl"
    dispatcher = Dispatcher(settings)
    assert dispatcher.dispatch_many("work", [{"n": i, "sleep": 0.01} for i in range(150)]).ok
    first = spawn_worker(path, record)
    wait_for(lambda: len(runs(record)) >= 20, what="first worker running")
    second = spawn_worker(path, record)
    wait_for(lambda: _assigned_members(settings) == 2, timeout=30, what="second member has partitions")
    assert dispatcher.dispatch_many("work", [{"n": i, "sleep": 0.01} for i in range(150, 300)]).ok
    wait_for(lambda: len({r["pid"] for r in runs(record)}) == 2, timeout=30, what="both workers ran jobs")
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    assert dispatcher.dispatch_many("work", [{"n": i} for i in range(300, 400)]).ok
    try:
        wait_for(lambda: {r["n"] for r in runs(record)} == set(range(400)), timeout=60, what="all 400 jobs")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert committed_equals_end(settings, "work")


def test_processes_option_runs_supervised_children(worker_config, tmp_path: Path) -> None:
    settings, path = worker_config(partitions=4)
    record = tmp_path / "runs.jsonl"
    proc = spawn_worker(path, record, "--processes", "2")
    try:
        wait_for(lambda: _assigned_members(settings) == 2, timeout=40, what="two members with partitions")
        assert Dispatcher(settings).dispatch_many("work", [{"n": i, "sleep": 0.05} for i in range(200)]).ok
        wait_for(lambda: {r["n"] for r in runs(record)} == set(range(200)), timeout=60, what="all jobs")
        assert len({r["pid"] for r in runs(record)}) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@pytest.mark.parametrize("flag, value", [("--max-jobs", "-1"), ("--max-uncommitted", "-5"), ("--commit-every", "x"),
                                         ("--max-hung", "-1"), ("--shutdown-timeout", "nan"),
                                         ("--shutdown-timeout", "-2")])
def test_run_refuses_a_bad_limit(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from protojobs.cli import main

    assert main.main(["run", flag, value]) == 2
    assert flag in capsys.readouterr().err


def test_processes_recycle_a_wedged_child_and_hung_handlers_do_not_hold_up_exit(
        kafka: Cluster, fresh_prefix: str, tmp_path: Path) -> None:
    from protojobs import config

    tree = settings_tree(kafka.bootstrap, fresh_prefix, {"work": {
        "handler": "engine_jobs:record", "partitions": 1, "concurrency": 1, "timeout": "1s"}},
        retry={"default": {"max_attempts": 1}})
    path = write_config(tmp_path / "jobs.toml", tree)
    settings = config.from_dict(tree, TESTS.parent)
    record = tmp_path / "runs.jsonl"
    dispatcher = Dispatcher(settings)
    proc = spawn_worker(path, record, "--processes", "2", "--max-hung", "1")
    log = tmp_path / "worker-0.log"
    try:
        wait_for(lambda: len(admin.group_members(admin.client(settings), settings.kafka.group_id)) == 2,
                 timeout=40, what="two members in the group")
        # two handlers hang past their 1 s timeout in the child owning the one partition: more
        # than --max-hung 1, so it commits what finished (both dead-lettered) and exits 4
        assert dispatcher.dispatch_many("work", [{"n": i, "hang": 120} for i in range(2)]).ok
        wait_for(lambda: "exited with 4 (wedged" in log.read_text(), timeout=40, what="the wedged child to exit")
        assert dispatcher.dispatch_many("work", [{"n": i} for i in range(2, 12)]).ok
        wait_for(lambda: {r["n"] for r in runs(record) if r.get("phase") != "hang"} == set(range(2, 12))
                 and committed_equals_end(settings, "work"), timeout=60, what="the jobs after the recycle")
        assert sorted(r["n"] for r in runs(record) if r.get("phase") == "hang") == [0, 1]  # committed: never again
        # one more hung handler (not wedged): SIGTERM ends the command although it still hangs
        assert dispatcher.dispatch("work", {"n": 12, "hang": 120})
        wait_for(lambda: committed_equals_end(settings, "work"), timeout=30, what="the hung job timed out")
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert time.monotonic() - stopped < 15, "a hung handler held up the exit"
    finally:
        proc.kill()
        proc.wait(10)


def test_committed_offsets_after_drain_match_consumer_position(make_settings, start_worker) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record", "partitions": 2}})
    assert Dispatcher(settings).dispatch_many("work", [{"n": i} for i in range(40)]).ok
    worker = start_worker(settings)
    wait_for(lambda: committed_equals_end(settings, "work"), what="committed == end offsets")
    worker.stop()
    topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    c = Consumer(profile.consumer(settings.kafka.brokers, settings.kafka.group_id))
    got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    c.close()
    assert sum(tp.offset for tp in got) == 40
