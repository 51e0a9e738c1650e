"""`TransactionalProducer.commit` follows librdkafka's error classification: a retriable error
(a timed-out commit may still complete) is retried, never aborted; an abortable one aborts; a
fatal one fences. Unit tests with real KafkaError objects, then one commit through a slowed
broker proxy."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from protojobs.kafka import admin, transactions
from protojobs.kafka.clients import ErrorWatch
from protojobs.kafka.transactions import Aborted, Fenced, TransactionalProducer
from protojobs.model import names
from protojobs.testing import Cluster, profile

TIMED_OUT = KafkaError(KafkaError._TIMED_OUT, "Transaction commit timed out", retriable=True)
COORDINATOR = KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE, "coordinator moved", retriable=True)
ABORTABLE = KafkaError(KafkaError._INCONSISTENT, "a record failed permanently", txn_requires_abort=True)
FATAL = KafkaError(KafkaError._FATAL, "fatal", fatal=True)
FENCED = KafkaError(KafkaError.PRODUCER_FENCED, "a newer producer")
OTHER = KafkaError(KafkaError._STATE, "neither retriable nor abortable")


class Scripted:
    """A stand-in for confluent_kafka.Producer: each transactional call fails with the next
    scripted error of its name (None: succeeds), and every call is recorded."""

    def __init__(self, **script: Iterable[KafkaError | None]) -> None:
        self.script = {name: iter(outcomes) for name, outcomes in script.items()}
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        outcome = next(self.script.get(name, iter(())), None)
        if outcome is not None:
            raise KafkaException(outcome)

    def begin_transaction(self) -> None:
        self._call("begin")

    def produce(self, *_args: Any, **_kwargs: Any) -> None:
        self._call("produce")

    def send_offsets_to_transaction(self, *_args: Any) -> None:
        self._call("offsets")

    def commit_transaction(self, _timeout: float) -> None:
        self._call("commit")

    def abort_transaction(self, _timeout: float) -> None:
        self._call("abort")


def producer_with(script: Scripted, retry_for: float = 5.0) -> TransactionalProducer:
    txn = TransactionalProducer.__new__(TransactionalProducer)  # no client, no broker
    txn.producer, txn.transactional_id = script, "test"
    txn.retry_for, txn.call_timeout, txn.backoff, txn.retried = retry_for, 1.0, 0.0, 0
    txn.calls = transactions.CallThread("test")
    return txn


OFFSETS = [TopicPartition("t", 0, 5)]


def commit(txn: TransactionalProducer) -> None:
    txn.commit([("t", b"v", None, [])], OFFSETS, object())


def test_a_timed_out_commit_is_retried_not_aborted() -> None:
    script = Scripted(commit=[TIMED_OUT, TIMED_OUT, None])
    txn = producer_with(script)
    commit(txn)
    assert script.calls == ["begin", "produce", "offsets", "commit", "commit", "commit"]
    assert txn.retried == 2


def test_retriable_offsets_are_sent_again() -> None:
    script = Scripted(offsets=[COORDINATOR, None])
    commit(producer_with(script))
    assert script.calls == ["begin", "produce", "offsets", "offsets", "commit"]


@pytest.mark.parametrize("step", ["offsets", "commit"])
def test_an_abortable_error_aborts(step: str) -> None:
    script = Scripted(**{step: [ABORTABLE]})
    with pytest.raises(Aborted, match="a record failed permanently"):
        commit(producer_with(script))
    assert script.calls[-1] == "abort" and "commit" not in script.calls[script.calls.index(step) + 1:]


@pytest.mark.parametrize("error", [FATAL, FENCED])
@pytest.mark.parametrize("step", ["offsets", "commit"])
def test_a_fatal_or_fencing_error_fences_without_aborting(step: str, error: KafkaError) -> None:
    script = Scripted(**{step: [error]})
    with pytest.raises(Fenced) as caught:
        commit(producer_with(script))
    assert not isinstance(caught.value, transactions.Uncertain)
    assert "abort" not in script.calls


class Clock:
    """`transactions.time` for a test: each reading is 10 ms after the one before."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 0.01
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_commit_that_keeps_timing_out_is_uncertain_never_aborted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transactions, "time", Clock())  # retries counted by the clock, not the machine's load
    script = Scripted(commit=itertools.repeat(TIMED_OUT))
    with pytest.raises(transactions.Uncertain, match="may or may not have happened"):
        commit(producer_with(script, retry_for=0.3))
    assert "abort" not in script.calls and 5 <= script.calls.count("commit") <= 30  # until retry_for, then no more


def test_an_unclassified_commit_error_is_uncertain_and_one_before_the_commit_aborts() -> None:
    script = Scripted(commit=[OTHER])
    with pytest.raises(transactions.Uncertain):
        commit(producer_with(script))
    assert "abort" not in script.calls
    script = Scripted(offsets=[OTHER])
    with pytest.raises(Aborted):
        commit(producer_with(script))
    assert script.calls == ["begin", "produce", "offsets", "abort"]


def test_an_abort_that_times_out_is_retried_and_a_failed_one_fences() -> None:
    script = Scripted(commit=[ABORTABLE], abort=[TIMED_OUT, None])
    with pytest.raises(Aborted):
        commit(producer_with(script))
    assert script.calls[-2:] == ["abort", "abort"]
    script = Scripted(commit=[ABORTABLE], abort=[OTHER])
    with pytest.raises(Fenced, match="abort failed"):
        commit(producer_with(script))


class Hanging(Scripted):
    """send_offsets_to_transaction never returns (until released), as librdkafka's did once its
    group coordinator's broker restarted."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def send_offsets_to_transaction(self, *_args: Any) -> None:
        self._call("offsets")
        self.release.wait()


def test_a_call_that_never_returns_is_uncertain_and_so_is_every_later_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transactions, "GRACE", 0.2)
    script = Hanging()
    txn = producer_with(script)
    txn.call_timeout = 0.1
    try:  # without the call thread, the commit would wait for ever (until pytest's timeout)
        with pytest.raises(transactions.Uncertain, match="sending the offsets .* never returned"):
            commit(txn)
        assert script.calls == ["begin", "produce", "offsets"]  # neither retried nor aborted
        with pytest.raises(transactions.Uncertain, match="stuck"):
            commit(txn)
        assert "commit" not in script.calls and "abort" not in script.calls
    finally:
        script.release.set()


# ---------------------------------------------------------------- against a real broker


@pytest.mark.broker
def test_a_commit_timing_out_behind_a_slow_broker_completes_once(kafka: Cluster, toxiproxy: Any, make_settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every broker answer is delayed 1.5 s while each commit call may block 0.5 s: the commit
    times out (retriable) and is called again until it completes. Aborting it, as protojobs
    did, would drop these records here (and, in the worker, publish them again after the rewind
    while the first commit might still land)."""
    settings = make_settings({"work": {"handler": "engine_jobs:record"}}, bootstrap=kafka.proxied_bootstrap)
    admin.ensure_topics(settings)
    topic = names.queue_topic(settings.kafka.topic_prefix, "work")
    txn = TransactionalProducer(settings.kafka, ErrorWatch(), slot=0, role="test")
    txn.call_timeout = 0.5
    monkeypatch.setattr(transactions, "TIMEOUT", 0.5)  # every later call (as protojobs before call_timeout)
    toxiproxy.client_proxy(kafka).add_toxic("latency", latency=1500, jitter=0)
    try:
        txn.commit([(topic, f"v{i}".encode(), None, []) for i in range(3)], [], None)
    finally:
        toxiproxy.reset()
    assert txn.retried >= 1  # the commit did time out at least once
    consumer = Consumer(profile.consumer(kafka.bootstrap, f"check-{time.monotonic_ns()}",
                                         **{"isolation.level": "read_committed"}))
    consumer.subscribe([topic])
    seen: list[bytes] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(seen) < 3:
        seen += [m.value() for m in consumer.consume(10, 0.5) if m.error() is None]
    consumer.close()
    assert sorted(seen) == [b"v0", b"v1", b"v2"]


# --- one transaction in flight while the loop goes on (Transactions.begin / settle) ----------


class _Gated:
    """A TransactionalProducer stand-in whose commit waits for `release` and then fails with
    `error` (None: commits)."""

    def __init__(self, error: Exception | None = None) -> None:
        import threading

        self.release = threading.Event()
        self.error = error
        self.committed: list[tuple[list[Any], list[TopicPartition]]] = []

    def commit(self, records: list[Any], offsets: list[TopicPartition], _metadata: Any) -> None:
        assert self.release.wait(30)
        if self.error is not None:
            raise self.error
        self.committed.append((records, offsets))


class _Group:
    def consumer_group_metadata(self) -> object:
        return object()


def _transactions(producer: _Gated) -> transactions.Transactions:
    txn = transactions.Transactions(producer, _Group())  # type: ignore[arg-type]
    for offset in (3, 7):
        txn.add("t", 0, transactions.Output(offset, "out", f"v{offset}".encode(), None, []))
    return txn


def test_a_transaction_commits_on_its_own_thread_and_settles_on_the_callers() -> None:
    producer = _Gated()
    txn = _transactions(producer)
    txn.begin([("t", 0, 5)])
    assert txn.in_flight and txn.settle(lambda keys: None, wait=False) is None  # still committing
    with pytest.raises(RuntimeError, match="in flight"):
        txn.begin([("t", 0, 8)])  # one at a time
    txn.add("t", 0, transactions.Output(9, "out", b"v9", None, []))  # the loop goes on meanwhile
    producer.release.set()
    assert txn.settle(lambda keys: None) == [("t", 0, 5)] and not txn.in_flight
    records, offsets = producer.committed[0]
    assert [r[1] for r in records] == [b"v3"] and offsets[0].offset == 5  # only what lies below the point
    assert [o.source_offset for o in txn.outputs[("t", 0)]] == [7, 9]  # the next transaction's
    txn.close()


def test_an_aborted_transaction_in_flight_rewinds_on_settle_and_a_fenced_one_raises_there() -> None:
    aborted = _Gated(Aborted("a record failed"))
    txn = _transactions(aborted)
    txn.begin([("t", 0, 5)])
    aborted.release.set()
    rewound: list[list[tuple[str, int]]] = []
    assert txn.settle(rewound.append) == [] and rewound == [[("t", 0)]]
    assert ("t", 0) not in txn.outputs and txn.aborted == 1  # rewound: the jobs run again
    fenced = _Gated(Fenced("a newer producer"))
    txn = _transactions(fenced)
    txn.begin([("t", 0, 5)])
    fenced.release.set()
    with pytest.raises(Fenced):
        txn.settle(rewound.append)
    txn.close()


def test_close_waits_for_the_transaction_in_flight() -> None:
    producer = _Gated()
    txn = _transactions(producer)
    txn.begin([("t", 0, 8)])
    producer.release.set()
    txn.close()
    assert len(producer.committed) == 1 and not txn.in_flight
