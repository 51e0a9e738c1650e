"""The dead-letter queue against a real broker: list/show with filters, replay (dry run, by id,
the replay-loop guard), purge, and the CLI's exit codes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import engine_jobs
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from conftest import ROOT, settings_tree, wait_for, write_config

from protojobs import config
from protojobs.cli import dlq as dlq_cli
from protojobs.cli import main
from protojobs.cli.common import parse_since
from protojobs.engine.dispatch import Dispatcher, now_ms
from protojobs.kafka import admin
from protojobs.model import envelope
from protojobs.model import names as topics
from protojobs.ops import dlq
from protojobs.testing import Cluster, profile

pytestmark = pytest.mark.broker
STRICT = {"strict": {"max_attempts": 1}}


@pytest.fixture(autouse=True)
def _clean_runs() -> None:
    engine_jobs.RUNS.clear()


@pytest.fixture
def setup(kafka: Cluster, fresh_prefix: str, tmp_path: Path):
    """(settings, jobs.toml path) for `queues` on a fresh prefix; `name` picks the file."""

    def make(queues: dict[str, dict[str, Any]], name: str = "jobs.toml") -> tuple[config.Settings, str]:
        tree = settings_tree(kafka.bootstrap, fresh_prefix, queues, retry=STRICT)
        path = write_config(tmp_path / name, tree)
        return config.from_dict(tree, ROOT), str(path)

    return make


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def high_watermarks(settings: config.Settings, topic: str) -> int:
    return sum(high for _, high in admin.watermarks(admin.client(settings), topic).values())


def test_list_filters_and_show(setup, start_worker, capsys, kafka: Cluster) -> None:
    settings, path = setup({"reports": {"handler": "engine_jobs:poison", "retry": "strict"},
                            "emails": {"handler": "engine_jobs:flaky", "retry": "strict"}})
    dispatcher = Dispatcher(settings)
    reports = [dispatcher.dispatch("reports", {"n": i}) for i in range(2)]
    producer = Producer(profile.producer(kafka.bootstrap))
    prefix = settings.kafka.topic_prefix
    producer.produce(topics.queue_topic(prefix, "reports"), b"\xff raw, not a job")  # dead-lettered raw
    producer.produce(settings.kafka.dead_letter_topic, b"not a dead-letter record")  # undecodable
    assert producer.flush(10) == 0
    worker = start_worker(settings)
    wait_for(lambda: worker.worker.counters.dead == 3, what="3 dead letters")
    time.sleep(0.05)
    since = now_ms()
    emails = [dispatcher.dispatch("emails", {"n": i, "fail": 99}) for i in range(2)]
    wait_for(lambda: worker.worker.counters.dead == 5, what="5 dead letters")
    worker.stop()

    entries = dlq.read(settings)
    assert len(entries) == 6
    by_id = {e.job_id: e for e in entries if e.job_id}
    assert set(by_id) == set(reports + emails)
    for job_id in reports:
        e = by_id[job_id]
        assert (e.queue, e.error_type, e.dead and e.dead.attempts, e.replays) == ("reports", "ValueError", 1, 0)
        assert e.topic == settings.kafka.dead_letter_topic
    assert {by_id[i].error_type for i in emails} == {"RuntimeError"}
    (raw,) = [e for e in entries if e.dead is not None and e.envelope is None]
    assert raw.queue == "reports" and raw.dead and "raw, not a job" in (raw.dead.raw or "")
    (bad,) = [e for e in entries if e.dead is None]
    assert bad.problem and "not a dead-letter record" in (bad.value or "")

    assert {e.job_id for e in dlq.read(settings, queue="reports")} == {*reports, None}
    assert {e.job_id for e in dlq.read(settings, queue="emails")} == set(emails)
    assert {e.job_id for e in dlq.read(settings, error="ValueError")} == set(reports)
    assert dlq.read(settings, error="Error") == []  # exact class name only
    assert [e.job_id for e in dlq.read(settings, ids=[emails[1]])] == [emails[1]]
    assert {e.job_id for e in dlq.read(settings, since_ms=since)} == set(emails)
    assert len(dlq.read(settings, limit=2)) == 2

    code, out, _ = run_cli(capsys, "dlq", "list", "--config", path, "--queue", "emails", "--json")
    assert code == 0
    listed = json.loads(out)
    assert {row["id"] for row in listed} == set(emails)
    assert all(row["queue"] == "emails" and row["error"]["type"] == "RuntimeError" and row["attempts"] == 1
               and row["failed_at_iso"].endswith("Z") and "traceback" not in row["error"] for row in listed)
    code, out, _ = run_cli(capsys, "dlq", "list", "--config", path, "--error", "ValueError", "--since", "1h")
    assert code == 0 and len(out.splitlines()) == 2 and all("reports  ValueError  attempts=1" in ln
                                                             for ln in out.splitlines())
    code, out, _ = run_cli(capsys, "dlq", "list", "--config", path, "--limit", "1")
    assert code == 0 and out.splitlines() == [dlq_cli.line(dlq.read(settings)[-1])]
    assert run_cli(capsys, "dlq", "list", "--config", path, "--since", "yesterday")[0] == 2

    code, out, _ = run_cli(capsys, "dlq", "show", reports[0], "--config", path)
    assert code == 0
    shown = json.loads(out)
    assert shown["envelope"]["id"] == reports[0] and shown["envelope"]["queue"] == "reports"
    assert "Traceback" in shown["error"]["traceback"] and "never succeed" in shown["error"]["traceback"]
    assert shown["origin"]["topic"] == topics.queue_topic(prefix, "reports") and shown["host"]
    code, _, err = run_cli(capsys, "dlq", "show", "NO-SUCH-JOB", "--config", path)
    assert code == 1 and "NO-SUCH-JOB" in err
    assert run_cli(capsys, "dlq", "show", "--config", path)[0] == 2


def queued_records(settings: config.Settings, queue: str, start: int) -> list[Any]:
    """The records of a one-partition queue topic from offset `start` to its end."""
    topic = topics.queue_topic(settings.kafka.topic_prefix, queue)
    end = high_watermarks(settings, topic)
    consumer = Consumer(profile.consumer(settings.kafka.brokers, f"peek-{time.monotonic_ns()}"))
    consumer.assign([TopicPartition(topic, 0, start)])
    out: list[Any] = []
    deadline = time.monotonic() + 15
    while len(out) < end - start and time.monotonic() < deadline:
        out += [m for m in consumer.consume(10, 0.5) if m.error() is None]
    consumer.close()
    return out


def test_replay_dry_run_by_id_guard_and_success(setup, start_worker, capsys) -> None:
    queue = {"handler": "engine_jobs:poison", "retry": "strict", "partitions": 1}
    settings, path = setup({"work": queue})
    first, second = (Dispatcher(settings).dispatch("work", {"n": i}) for i in range(2))
    topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    worker = start_worker(settings)
    wait_for(lambda: worker.worker.counters.dead == 2, what="2 dead letters")

    assert run_cli(capsys, "dlq", "replay", "--config", path)[0] == 2  # no filter, no --all
    before = high_watermarks(settings, topic)
    code, out, _ = run_cli(capsys, "dlq", "replay", "--all", "--dry-run", "--config", path)
    assert code == 0 and out.count("would replay") == 3 and "would replay 2, skipped 0" in out
    assert high_watermarks(settings, topic) == before  # a dry run sends nothing

    code, out, _ = run_cli(capsys, "dlq", "replay", "--id", first, "--config", path)
    assert code == 0 and "replayed 1, skipped 0, not replayable 0, failed 0" in out
    wait_for(lambda: worker.worker.counters.dead == 3, what="the replayed job fails again")
    worker.stop()
    (sent,) = queued_records(settings, "work", before)
    again = envelope.decode(sent.value())
    assert (again.id, again.attempt, again.replays) == (first, 1, 1)
    assert envelope.header_value(sent.headers(), dlq.H_REPLAYS) == "1"
    records = dlq.read(settings, ids=[first])
    assert [e.replays for e in records] == [0, 1]  # the old record stays: Kafka is append-only
    assert dlq.failed_jobs(settings, limit=1)[0].where == records[-1].where  # newest first

    code, out, _ = run_cli(capsys, "dlq", "replay", "--id", first, "--max-replays", "1", "--config", path)
    assert code == 0 and "replayed 0, skipped 2" in out
    assert "superseded" in out and "already replayed 1 time(s)" in out
    assert high_watermarks(settings, topic) == before + 1  # the guard sent nothing
    assert run_cli(capsys, "dlq", "replay", "--id", "NO-SUCH-JOB", "--config", path)[0] == 1

    fixed, _ = setup({"work": {**queue, "handler": "engine_jobs:record"}}, name="fixed.toml")
    engine_jobs.RUNS.clear()
    assert dlq.retry(fixed, second) is True
    assert dlq.retry(fixed, "NO-SUCH-JOB") is False
    worker = start_worker(fixed)
    wait_for(lambda: any(r["id"] == second for r in engine_jobs.RUNS), what="the replayed job succeeds")
    worker.stop()
    assert [(r["id"], r["attempt"]) for r in engine_jobs.RUNS] == [(second, 1)]
    assert len(dlq.read(settings)) == 3  # a success adds no record


def test_purge_needs_yes_and_empties_the_topics(setup, start_worker, capsys, fresh_prefix: str) -> None:
    own = f"{fresh_prefix}own-dead-letter"
    settings, path = setup({"work": {"handler": "engine_jobs:poison", "retry": "strict"},
                            "own": {"handler": "engine_jobs:poison", "retry": "strict", "dead_letter": own}})
    dispatcher = Dispatcher(settings)
    work_id, own_id = dispatcher.dispatch("work", {"n": 1}), dispatcher.dispatch("own", {"n": 2})
    worker = start_worker(settings)
    wait_for(lambda: worker.worker.counters.dead == 2, what="2 dead letters")
    worker.stop()
    assert sorted(dlq.dead_letter_topics(settings)) == sorted([settings.kafka.dead_letter_topic, own])
    assert {e.topic for e in dlq.read(settings)} == {settings.kafka.dead_letter_topic, own}

    code, _, err = run_cli(capsys, "dlq", "purge", "--config", path)
    assert code == 2 and "would delete 1 record(s)" in err
    code, _, err = run_cli(capsys, "dlq", "purge", "--queue", "work", "--yes", "--config", path)
    assert code == 2 and "shares the dead-letter topic" in err
    assert len(dlq.read(settings)) == 2  # nothing was deleted

    assert run_cli(capsys, "dlq", "purge", "--queue", "own", "--yes", "--config", path)[0] == 0
    assert [e.job_id for e in dlq.read(settings)] == [work_id]
    assert own_id not in {e.job_id for e in dlq.read(settings)}
    code, out, _ = run_cli(capsys, "dlq", "purge", "--yes", "--config", path)
    assert code == 0 and "purged 1 record(s)" in out
    assert dlq.read(settings) == []
    code, out, _ = run_cli(capsys, "dlq", "list", "--config", path)
    assert code == 0 and out == ""


def test_parse_since() -> None:
    assert parse_since("1h", now=10_000_000) == 10_000_000 - 3_600_000
    assert parse_since("2027-01-01T00:00:00Z") == 1_798_761_600_000
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")
