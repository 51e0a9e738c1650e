"""Hostile records and rebalance races against a real broker.

The rule (README "Failure model"): every record ends in exactly one state, done, retried,
dead-lettered with a size-capped copy and the reason, or parked with a log line and a metric;
no input from any topic crashes a worker, its delay router or its scheduler, or makes one loop.
Hostile records are written with a raw producer, so they can hold what protojobs never writes.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import engine_jobs
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
from conftest import ROOT, Running, settings_tree, wait_for
from test_engine import read_all

from protojobs import config
from protojobs.engine.dispatch import Dispatcher, now_ms
from protojobs.engine.hooks import Hooks
from protojobs.engine.router import Router, RouterThread
from protojobs.engine.scheduler import Scheduler, SchedulerThread
from protojobs.engine.worker import Worker, WorkerOptions
from protojobs.kafka import admin
from protojobs.model import dead_letter, envelope
from protojobs.model import names as topics
from protojobs.ops import dlq
from protojobs.ops.clear import clear
from protojobs.testing import Cluster, profile

pytestmark = pytest.mark.broker
STRICT = {"strict": {"max_attempts": 1}}
TWICE = {"twice": {"max_attempts": 2, "backoff": "fixed", "base": "100ms", "jitter": 0}}


@pytest.fixture(autouse=True)
def _clean_runs() -> None:
    engine_jobs.RUNS.clear()


@pytest.fixture
def router() -> Iterator[Callable[[config.Settings], RouterThread]]:
    threads: list[RouterThread] = []

    def start(settings: config.Settings, router: Router | None = None) -> RouterThread:
        thread = RouterThread(router or Router(settings)).start()
        threads.append(thread)
        return thread

    yield start
    for thread in threads:
        thread.stop()


def alive(*threads: Running | RouterThread | SchedulerThread) -> bool:
    """True while every thread runs; raises the error of one that died (so a test fails at once)."""
    for t in threads:
        if t.error is not None:
            raise AssertionError(f"a thread died: {t.error!r}") from t.error
    return True


def settings_with(kafka: Cluster, prefix: str, queues: dict[str, dict[str, Any]],
                  producer: dict[str, Any] | None = None, **sections: Any) -> config.Settings:
    tree = settings_tree(kafka.bootstrap, prefix, queues, **sections)
    tree["kafka"]["producer"].update(producer or {})
    return config.from_dict(tree, ROOT)


def raw_producer(kafka: Cluster) -> Producer:
    return Producer(profile.producer(kafka.bootstrap))


def produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None,
            headers: list[tuple[str, bytes]] | None = None, partition: int = -1) -> None:
    errors: list[str] = []
    producer.produce(topic, value, key, partition=partition, headers=headers or [],
                     on_delivery=lambda err, _m: errors.append(err.str()) if err else None)
    assert producer.flush(15) == 0 and not errors, errors


def hand_written(queue: str, data_json: str, job_id: str = "hostile-1") -> bytes:
    """An envelope written by hand: its data may hold what Python's encoder refuses to write."""
    now = now_ms()
    return (f'{{"v":1,"id":"{job_id}","queue":"{queue}","job":"x","attempt":1,"dispatched_at":{now},'
            f'"available_at":{now},"key":null,"data":{data_json}}}').encode()


def set_topic_config(settings: config.Settings, topic: str, **values: str) -> None:
    entries = [ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET)
               for k, v in values.items()]
    client = admin.client(settings)  # kept alive until the futures resolve
    futures = client.incremental_alter_configs([ConfigResource(ConfigResource.Type.TOPIC, topic,
                                                               incremental_configs=entries)])
    for future in futures.values():
        future.result(15)


def dead_letters(settings: config.Settings, expected: int) -> list[tuple[bytes, dead_letter.DeadLetterRecord]]:
    values = read_all(settings.kafka.brokers, settings.kafka.dead_letter_topic, expected)
    assert len(values) == expected, f"{len(values)} dead-letter records, expected {expected}"
    return [(v, dead_letter.decode_dead_letter(v)) for v in values]


def committed(settings: config.Settings, group: str, topic: str, partitions: Any) -> dict[int, int]:
    """partition -> the group's committed offset, asked through a consumer that joins nothing.
    (AdminClient.list_consumer_group_offsets crashes librdkafka 2.16 when the coordinator answers
    NOT_COORDINATOR, e.g. for a group just created: librdkafka issue #5040.)"""
    consumer = Consumer(profile.consumer(settings.kafka.brokers, group))
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}


def group_committed_to_end(settings: config.Settings, group: str, topic: str) -> bool:
    marks = admin.watermarks(admin.client(settings), topic)
    done = committed(settings, group, topic, marks)
    return all(done.get(p, low) == high for p, (low, high) in marks.items())


def committed_equals_end(settings: config.Settings, queue: str) -> bool:
    return group_committed_to_end(settings, settings.kafka.group_id, topics.queue_topic(settings.kafka.topic_prefix,
                                                                                        queue))


class Recorder(Hooks):
    inline = True

    def __init__(self) -> None:
        self.parked: list[tuple[str, int, int, str]] = []

    def after_park(self, topic: str, partition: int, offset: int, reason: str) -> None:
        self.parked.append((topic, partition, offset, reason))


# --- finding 1: one bad record must not stop a worker -------------------------------------------


def test_lone_surrogate_job_is_retried_then_dead_lettered(kafka: Cluster, fresh_prefix: str, start_worker,
                                                          router) -> None:
    """Valid JSON from a JavaScript producer: it decodes, and its copies must encode too."""
    settings = settings_with(kafka, fresh_prefix, {"work": {"handler": "engine_jobs:poison", "retry": "twice"}},
                             retry=TWICE)
    topic = topics.queue_topic(fresh_prefix, "work")
    admin.ensure_topics(settings)
    produce(raw_producer(kafka), topic, hand_written("work", '{"s":"\\ud800 lone","n":1}'))
    normal = Dispatcher(settings).dispatch("work", {"n": 2})
    routing = router(settings)
    worker = start_worker(settings)
    wait_for(lambda: alive(worker, routing) and worker.worker.counters.dead == 2, timeout=40, what="2 dead letters")
    wait_for(lambda: committed_equals_end(settings, "work"), what="commits")
    assert worker.worker.counters.retried == 2
    by_id = {d.envelope.id: d for _, d in dead_letters(settings, 2) if d.envelope is not None}
    assert set(by_id) == {"hostile-1", normal}
    assert by_id["hostile-1"].envelope.data == {"s": "\ud800 lone", "n": 1}  # type: ignore[union-attr]
    assert by_id["hostile-1"].attempts == 2


def test_huge_undecodable_record_dead_letters_a_capped_copy(make_settings, kafka: Cluster, start_worker) -> None:
    """900 KB of NUL and 0xFF bytes: as JSON text it would be 5.4 MB, over message.max.bytes."""
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    dispatcher = Dispatcher(settings)
    dispatcher.dispatch("work", {"n": 1})
    produce(raw_producer(kafka), topic, b"\x00\xff" * 450_000)
    dispatcher.dispatch("work", {"n": 2})
    worker = start_worker(settings)
    wait_for(lambda: alive(worker) and worker.worker.counters.done == 2 and worker.worker.counters.dead == 1,
             what="2 done, 1 dead letter")
    wait_for(lambda: committed_equals_end(settings, "work"), what="commits")
    ((value, dead),) = dead_letters(settings, 1)
    assert len(value) < 1_000_000
    assert dead.reason == "undecodable record" and dead.raw is not None and dead.raw.startswith("\x00\ufffd")
    assert "bytes" in dead.raw[-100:] and dead.truncated


@pytest.mark.parametrize(("delivery", "policy"), [("at_least_once", "twice"), ("at_least_once", "strict"),
                                                  ("exactly_once", "twice")])
def test_job_whose_copies_exceed_the_producer_limit(kafka: Cluster, fresh_prefix: str, start_worker, router,
                                                     delivery: str, policy: str) -> None:
    """A job just under the worker's message.max.bytes: its retry copy (a few bytes longer) is
    refused, so it is dead-lettered; its dead-letter copy keeps the envelope's metadata and a
    truncated payload. Exactly-once: the same, instead of aborting and rewinding forever."""
    limit = 200_000
    settings = settings_with(kafka, fresh_prefix, {"work": {"handler": "engine_jobs:poison", "retry": policy,
                                                            "delivery": delivery}},
                             producer={"message.max.bytes": limit}, retry={**STRICT, **TWICE})
    admin.ensure_topics(settings)
    env = envelope.new_envelope("work", "x", {"n": 1, "blob": ""}, now_ms=now_ms(), id="big-1")
    pad = limit - 60 - len(envelope.encode(env))
    env = envelope.new_envelope("work", "x", {"n": 1, "blob": "x" * pad}, now_ms=now_ms(), id="big-1")
    produce(raw_producer(kafka), topics.queue_topic(fresh_prefix, "work"), envelope.encode(env),
            headers=envelope.headers(env))
    routing = router(settings)
    worker = start_worker(settings)
    wait_for(lambda: alive(worker, routing) and worker.worker.counters.dead == 1, timeout=40, what="a dead letter")
    wait_for(lambda: committed_equals_end(settings, "work"), what="commits")
    ((value, dead),) = dead_letters(settings, 1)
    assert len(value) < limit and dead.truncated
    assert dead.envelope is not None and dead.envelope.id == "big-1" and dead.envelope.queue == "work"
    assert isinstance(dead.envelope.data, str) and "bytes" in dead.envelope.data
    if policy == "twice":
        assert "retry copy" in dead.reason and "MSG_SIZE_TOO_LARGE" in dead.reason
    entries = dlq.read(settings)
    report = dlq.replay(settings, entries, dry_run=True)
    assert not report.replayed and "truncated" in report.unreplayable[0][1]


def test_deep_payload_failing_a_recursive_schema_is_dead_lettered(kafka: Cluster, fresh_prefix: str, start_worker,
                                                                   tmp_path: Path) -> None:
    schema = tmp_path / "tree.json"
    schema.write_text(json.dumps({"$defs": {"node": {"type": "object", "properties": {"c": {"$ref": "#/$defs/node"}}}},
                                  "$ref": "#/$defs/node"}))
    settings = settings_with(kafka, fresh_prefix, {"work": {"handler": "engine_jobs:record", "schema": str(schema)}})
    admin.ensure_topics(settings)
    deep = '{"c":' * 400 + "5" + "}" * 400  # the innermost node is not an object
    produce(raw_producer(kafka), topics.queue_topic(fresh_prefix, "work"), hand_written("work", deep))
    Dispatcher(settings).dispatch("work", {"c": {"n": 2}})
    worker = start_worker(settings)
    wait_for(lambda: alive(worker) and worker.worker.counters.done == 1 and worker.worker.counters.dead == 1,
             what="1 done, 1 dead letter")
    wait_for(lambda: committed_equals_end(settings, "work"), what="commits")
    ((_, dead),) = dead_letters(settings, 1)
    assert dead.error_type == "RecursionError" and "schema" in dead.reason


def test_copy_no_dead_letter_topic_takes_is_parked(make_settings, kafka: Cluster, start_worker) -> None:
    """The dead-letter topic refuses every copy (max.message.bytes 64): after the smaller copy is
    refused too, the record is parked (log line, metric, offset finished), never re-sent forever."""
    from protojobs.observe import metrics

    settings = make_settings({"work": {"handler": "engine_jobs:poison", "retry": "strict"}}, retry=STRICT)
    admin.ensure_topics(settings)
    set_topic_config(settings, settings.kafka.dead_letter_topic, max_message_bytes="64")
    dispatcher = Dispatcher(settings)
    for i in range(2):
        dispatcher.dispatch("work", {"n": i})
    recorder, counted = Recorder(), metrics.JobMetrics()
    worker = start_worker(settings, hooks=[recorder, counted])
    wait_for(lambda: alive(worker) and committed_equals_end(settings, "work"), timeout=40, what="commits")
    assert worker.worker.counters.parked == 2 and worker.worker.counters.dead == 0
    topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    assert len(recorder.parked) == 2 and all(t == topic for t, *_ in recorder.parked), recorder.parked
    assert all("MSG_SIZE_TOO_LARGE" in reason for *_, reason in recorder.parked), recorder.parked
    counted.flush()
    assert metrics.REGISTRY.get_sample_value("protojobs_parked_total", {"topic": topic}) == 2


# --- the delay router: same rule ------------------------------------------------------------------


def tier_headers(queue: str, available_at: int, dispatched_at: bytes) -> list[tuple[str, bytes]]:
    return [(envelope.H_QUEUE, queue.encode()), (envelope.H_AVAILABLE_AT, str(available_at).encode()),
            (envelope.H_DISPATCHED_AT, dispatched_at)]


def test_router_survives_hostile_tier_records(make_settings, kafka: Cluster, start_worker, router) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    admin.ensure_topics(settings)
    tier = topics.delay_topic(settings.kafka.topic_prefix, 200)
    producer = raw_producer(kafka)
    odd = envelope.new_envelope("work", "x", {"n": 1}, now_ms=now_ms(), id="odd-header")
    # '²'.isdigit() is True, int('²') raises
    produce(producer, tier, envelope.encode(odd), headers=tier_headers("work", now_ms() - 1, "²".encode()))
    produce(producer, tier, b"\x00\xff" * 450_000)  # no headers, undecodable, 900 KB
    routing = router(settings)
    worker = start_worker(settings)
    later = Dispatcher(settings).dispatch("work", {"n": 2}, delay="300ms")
    wait_for(lambda: alive(worker, routing) and {"odd-header", later} <= {r["id"] for r in engine_jobs.RUNS},
             timeout=40, what="both jobs forwarded and run")
    wait_for(lambda: alive(routing) and group_committed_to_end(settings, routing.router.group, tier),
             what="tier committed")
    ((value, dead),) = dead_letters(settings, 1)
    assert len(value) < 1_000_000 and dead.truncated and dead.raw is not None


def test_router_dead_letters_a_forward_the_queue_refuses(make_settings, kafka: Cluster, router) -> None:
    """The queue topic refuses the forwarded record for good (its max.message.bytes): the router
    dead-letters it instead of re-sending it forever."""
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    admin.ensure_topics(settings)
    queue_topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    set_topic_config(settings, queue_topic, max_message_bytes="10000")
    tier = topics.delay_topic(settings.kafka.topic_prefix, 200)
    blob = base64.b64encode(os.urandom(40_000)).decode()  # incompressible: lz4 cannot bring it under the limit
    env = envelope.new_envelope("work", "x", {"blob": blob}, now_ms=now_ms(), id="too-big-for-queue")
    produce(raw_producer(kafka), tier, envelope.encode(env),
            headers=tier_headers("work", now_ms() - 1, str(env.dispatched_at).encode()))
    routing = router(settings)
    wait_for(lambda: alive(routing) and group_committed_to_end(settings, routing.router.group, tier),
             timeout=40, what="tier committed")
    ((_, dead),) = dead_letters(settings, 1)
    assert dead.envelope is not None and dead.envelope.id == "too-big-for-queue"
    assert "MSG_SIZE_TOO_LARGE" in dead.reason


# --- finding 2: dlq replay after clear -------------------------------------------------------------


def test_replay_after_clear_runs_the_replayed_job(make_settings, start_worker) -> None:
    failing = make_settings({"work": {"handler": "engine_jobs:poison", "retry": "strict"}}, retry=STRICT)
    job_id = Dispatcher(failing).dispatch("work", {"n": 1})
    worker = start_worker(failing)
    wait_for(lambda: worker.worker.counters.dead == 1, what="dead letter")
    worker.stop()
    engine_jobs.RUNS.clear()
    clear(failing, "work")
    report = dlq.replay_matching(failing, queue="work")
    assert [e.job_id for e in report.replayed] == [job_id]
    fixed = make_settings({"work": {"handler": "engine_jobs:record"}})  # same prefix: same topics and group
    worker = start_worker(fixed)
    wait_for(lambda: job_id in {r["id"] for r in engine_jobs.RUNS}, what="the replayed job runs")
    worker.stop()


# --- finding 3: a record of a partition revoked inside fetch ---------------------------------------


class WrappedConsumer:
    """A real consumer whose every fetch (`consume` and `poll`) goes through `_served` first."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def consume(self, *args: Any) -> Any:
        return self._served(self.real.consume(*args))

    def poll(self, *args: Any) -> Any:
        msg = self.real.poll(*args)
        self._served([msg] if msg is not None else [])
        return msg

    def _served(self, msgs: list[Any]) -> list[Any]:
        return msgs


class RebalanceInsideFetch(WrappedConsumer):
    """The worker's (or router's) consumer, with a rebalance of the first polled record's partition
    served right after that record was taken from librdkafka: what happens when a revoke
    arrives inside `fetch`, between `poll` and `consume` or inside a batch."""

    def __init__(self, partitions: Any, reassign: bool) -> None:
        super().__init__(partitions.consumer)
        self.partitions = partitions
        self.reassign = reassign
        self.hit: tuple[str, int] | None = None

    def _served(self, msgs: list[Any]) -> list[Any]:
        records = [m for m in msgs if m.error() is None]
        if self.hit is None and records:
            tp = TopicPartition(records[0].topic(), records[0].partition())
            self.hit = (tp.topic, tp.partition)
            self.partitions._on_revoke(self.real, [tp])  # what librdkafka's rebalance callback does
            self.real.incremental_unassign([tp])
            if self.reassign:  # the callback, then the assignment librdkafka makes when it did not
                again = [TopicPartition(tp.topic, tp.partition)]
                self.partitions._on_assign(self.real, again)
                if not self.partitions.paused:
                    self.real.incremental_assign(again)
        return msgs


@pytest.mark.parametrize("reassign", [False, True], ids=["revoked", "revoked-and-reassigned"])
def test_worker_never_runs_or_commits_a_record_taken_before_a_revoke(make_settings, start_worker,
                                                                     reassign: bool) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    dispatched = Dispatcher(settings).dispatch_many("work", [{"n": i} for i in range(30)])
    topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    marks = admin.watermarks(admin.client(settings), topic)
    worker = Worker(settings, WorkerOptions())
    spy = RebalanceInsideFetch(worker.partitions, reassign)
    worker.partitions.consumer = spy
    running = start_worker(settings, worker=worker)
    wait_for(lambda: alive(running) and spy.hit is not None, what="the rebalance")
    _, revoked = spy.hit  # type: ignore[misc]
    others = sum(high for p, (_, high) in marks.items() if p != revoked)
    if reassign:  # every job runs exactly once, and everything is committed
        wait_for(lambda: alive(running) and len(engine_jobs.RUNS) >= 30 and committed_equals_end(settings, "work"),
                 what="every job and the commits")
        running.stop()
        assert Counter(r["id"] for r in engine_jobs.RUNS) == Counter(dispatched.ids)
        return
    wait_for(lambda: alive(running) and sum(r["partition"] != revoked for r in engine_jobs.RUNS) >= others,
             what="the other partitions' jobs")
    wait_for(lambda: all(committed(settings, settings.kafka.group_id, topic, marks).get(p) == high
                         for p, (_, high) in marks.items() if p != revoked), what="the other partitions' commits")
    running.stop()
    assert not [r for r in engine_jobs.RUNS if r["partition"] == revoked], "a record of a revoked partition ran"
    assert revoked not in committed(settings, settings.kafka.group_id, topic, marks)


def test_router_never_forwards_or_commits_a_record_taken_before_a_revoke(make_settings, kafka: Cluster,
                                                                          router) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    admin.ensure_topics(settings)
    tier = topics.delay_topic(settings.kafka.topic_prefix, 200)
    producer = raw_producer(kafka)
    for p in range(3):
        for i in range(3):
            env = envelope.new_envelope("work", "x", {"tier_partition": p, "i": i}, now_ms=now_ms())
            produce(producer, tier, envelope.encode(env), partition=p,
                    headers=tier_headers("work", now_ms() - 1, str(env.dispatched_at).encode()))
    routing = Router(settings)
    spy = RebalanceInsideFetch(routing.partitions, reassign=False)
    routing.partitions.consumer = spy
    thread = router(settings, routing)
    wait_for(lambda: alive(thread) and spy.hit is not None, what="the rebalance")
    _, revoked = spy.hit  # type: ignore[misc]
    client = admin.client(settings)
    marks = admin.watermarks(client, tier)
    wait_for(lambda: alive(thread) and all(committed(settings, routing.group, tier, marks).get(p) == 3
                                           for p in marks if p != revoked), what="the other partitions' commits")
    queue_topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    forwarded = sum(high for _, high in admin.watermarks(client, queue_topic).values())
    values = read_all(kafka.bootstrap, queue_topic, forwarded)
    assert sorted(envelope.decode(v).data["tier_partition"] for v in values) == sorted(
        p for p in range(3) for _ in range(3) if p != revoked)
    assert revoked not in committed(settings, routing.group, tier, marks)


# --- finding 5: control and schedules topics, dead threads in /healthz -------------------------------


def test_malformed_control_records_stop_no_worker_or_router(make_settings, kafka: Cluster, start_worker,
                                                           router) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record"}, "other": {"handler": "engine_jobs:record"}})
    admin.ensure_topics(settings)
    control = topics.control_topic(settings.kafka.topic_prefix)
    producer = raw_producer(kafka)
    for key, value in [(b"clear/work", b"not json"), (b"clear/work", b"[1, 2]"),
                       (b"clear/work", b'{"cleared_at": "soon"}'), (b"clear/work", b'{"at": 1}'),
                       (b"clear/\xff\xfe", b'{"cleared_at": 1}'), (b"clear/work", b'{"cleared_at": 1e400}'),
                       (b"clear/work", b'{"cleared_at": null}')]:
        produce(producer, control, value, key)
    future = now_ms() + 3_600_000
    produce(producer, control, json.dumps({"cleared_at": future}).encode(), b"clear/other")
    routing = router(settings)
    worker = start_worker(settings)
    dispatcher = Dispatcher(settings)
    ids = {dispatcher.dispatch("work", {"n": 1}), dispatcher.dispatch("work", {"n": 2}, delay="300ms")}
    wait_for(lambda: alive(worker, routing) and ids <= {r["id"] for r in engine_jobs.RUNS}, timeout=40,
             what="a job and a delayed job")
    assert worker.worker.epochs is not None and worker.worker.epochs.epochs == {"other": future}


def test_malformed_schedule_records_stop_no_scheduler(kafka: Cluster, fresh_prefix: str) -> None:
    work = {"work": {"handler": "engine_jobs:record"}}
    settings = config.from_dict(settings_tree(kafka.bootstrap, fresh_prefix, work,
                                              schedules={"tick": {"queue": "work", "every": "1s"}}), ROOT)
    admin.ensure_topics(settings)
    producer = raw_producer(kafka)
    schedules_topic = topics.schedules_topic(fresh_prefix)
    for key, value in [(b"state/tick", b'{"last_tick": "x"}'), (b"state/tick", b"[]"), (b"ctl/tick", b'"paused"'),
                       (b"ctl/tick", b'{"paused": true, "at": "x"}'), (b"state/tick", b'{"last_tick": 1e400}'),
                       (b"def/x", b'{"weird": 1}'), (b"\xff", b"{}")]:
        produce(producer, schedules_topic, value, key)
    thread = SchedulerThread(Scheduler(settings)).start()
    try:
        queue_topic = topics.queue_topic(fresh_prefix, "work")
        client = admin.client(settings)
        wait_for(lambda: alive(thread) and sum(h for _, h in admin.watermarks(client, queue_topic).values()) > 0,
                 timeout=40, what="a tick dispatched")
    finally:
        thread.stop()
    assert thread.error is None


@pytest.mark.parametrize("dying", ["scheduler", "delay router"])
def test_a_dead_thread_turns_healthz_503_and_stops_the_process(kafka: Cluster, fresh_prefix: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, dying: str) -> None:
    from protojobs.cli import run
    from protojobs.observe import health

    work = {"work": {"handler": "engine_jobs:record"}}
    settings = config.from_dict(settings_tree(kafka.bootstrap, fresh_prefix, work), ROOT)
    (tmp_path / "heartbeat").mkdir()
    monkeypatch.setenv(health.ENV_DIR, str(tmp_path))

    def boom(*_args: Any) -> None:
        raise RuntimeError(f"{dying} boom (test)")

    monkeypatch.setattr(*((Scheduler, "_tick", boom) if dying == "scheduler" else (Router, "_release_due", boom)))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    watchdog = threading.Timer(60, lambda: os.kill(os.getpid(), signal.SIGTERM))  # a process that would run on
    watchdog.start()
    try:
        code = run.work(settings, WorkerOptions())
    finally:
        watchdog.cancel()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    ok, reason = health.Checks(settings, tmp_path / "heartbeat", [0]).healthz()
    assert (code, ok) == (1, False), (code, reason)
    assert f"the {dying} thread died" in reason and "boom (test)" in reason


class PositionResetAfterFetch(WrappedConsumer):
    """Wraps a consumer: once a fetch served offset 2 of a partition, its position goes back to
    0 without the owner asking (what librdkafka's own offset reset does, e.g. on
    OFFSET_OUT_OF_RANGE after a leader change under faults)."""

    def __init__(self, real: Any) -> None:
        super().__init__(real)
        self.reset: tuple[str, int] | None = None

    def _served(self, msgs: list[Any]) -> list[Any]:
        for m in msgs:
            if self.reset is None and m.error() is None and m.offset() == 2:
                self.reset = (m.topic(), m.partition())
                self.real.seek(TopicPartition(m.topic(), m.partition(), 0))
        return msgs


def test_router_survives_a_fetch_position_that_goes_back_by_itself(make_settings, kafka: Cluster, router) -> None:
    """The delay router died ('offset 0 started after offset 12: offsets must ascend') when a
    tier partition came back from offset 0 under an isolate fault in `make chaos`: the records
    run again (a rewind), nothing crashes, everything is forwarded and committed."""
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    admin.ensure_topics(settings)
    tier = topics.delay_topic(settings.kafka.topic_prefix, 200)
    producer = raw_producer(kafka)
    ids = []
    for i in range(4):
        env = envelope.new_envelope("work", "x", {"i": i}, now_ms=now_ms())
        ids.append(env.id)
        produce(producer, tier, envelope.encode(env), partition=0,
                headers=tier_headers("work", now_ms() - 1, str(env.dispatched_at).encode()))
    routing = Router(settings)
    spy = PositionResetAfterFetch(routing.partitions.consumer)
    routing.partitions.consumer = spy
    thread = router(settings, routing)
    wait_for(lambda: alive(thread) and spy.reset is not None and group_committed_to_end(settings, routing.group, tier),
             timeout=40, what="the reset, then every tier record committed")
    queue_topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    forwarded = sum(high for _, high in admin.watermarks(admin.client(settings), queue_topic).values())
    values = read_all(kafka.bootstrap, queue_topic, forwarded)
    assert alive(thread) and set(ids) <= {envelope.decode(v).id for v in values}
