"""Exactly-once queues: a job's Kafka-side effects and its source offset commit in ONE transaction.

Per worker process, one transactional producer whose `transactional.id` comes from
`model.names.transactional_id` (stable per host and process slot, unique across hosts). Offsets
go through `send_offsets_to_transaction` with the consumer's group metadata (KIP-447), so a
zombie whose partitions moved is fenced by the group generation too.

`TransactionalProducer.commit` is the one transactional commit (worker, delay router and
scheduler): it raises `Fenced` when the producer can never commit again (fatal error, fenced
epoch), `Uncertain` (a `Fenced`) when a commit could be neither completed nor known to have
failed, and `Aborted` after aborting a transaction that failed for a passing reason.

Errors of `send_offsets_to_transaction` and `commit_transaction` follow librdkafka's
classification (rdkafka.h, "Transactional producer API"):
- retriable (`err.retriable()`: a timeout, a broker transport failure...): the same call again,
  until `retry_for` (the producer's transaction.timeout.ms) has passed. A timed-out commit may
  still complete in the background, so it is never aborted: aborting and re-running its jobs
  would publish their outputs twice;
- abortable (`err.txn_requires_abort()`): abort, `Aborted` (the caller rewinds);
- fatal (`err.fatal()`, a fencing code): `Fenced`;
- anything else, or a retriable commit still failing after `retry_for`: after
  `send_offsets_to_transaction` (nothing committed yet) abort; after `commit_transaction` the
  outcome is unknown: `Uncertain`. The process stops; the `init_transactions` of its successor
  (same transactional.id) completes or aborts that transaction before anything else runs.
- a call that does not return at all: `Uncertain` too. librdkafka can wait for ever past the
  timeout it was given (found by `make chaos`: `send_offsets_to_transaction` after the group
  coordinator's broker restarted, on librdkafka 2.16). So each call runs on the producer's call
  thread and the caller waits its timeout plus `GRACE`; past that the producer is stuck for good
  (its call thread keeps the client alive) and every later call raises `Uncertain` at once.

No transaction is open while handlers run: a finished job's outputs (retry or dead-letter
copy, jobs it dispatched through `ctx.dispatch`) are buffered by source offset. Every
`interval` the loop commits the contiguous finished prefix of each exactly-once partition:
begin, produce the prefix's outputs, send the offsets, commit. Outputs of jobs beyond the prefix
wait for the next transaction, so a crash can never publish a job's outputs without its offset.
`Transactions.begin` takes the prefix's outputs on the loop thread and runs those broker round
trips on the transaction thread, one transaction at a time; `Transactions.settle`, on the loop
thread, applies its end (marks the offsets committed, or rewinds after an abort, or raises).

An aborted transaction rewinds the partitions to their last committed offsets: their jobs run
again (their earlier outputs were never visible to read_committed consumers). A fenced producer
raises `Fenced`, an uncertain commit `Uncertain`: the process stops and its supervisor starts
a fresh one.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from protojobs.config import KafkaSettings
from protojobs.kafka.clients import ErrorWatch, producer_config
from protojobs.kafka.outbox import Headers, produce_all
from protojobs.model import names

log = logging.getLogger(__name__)
TIMEOUT = 30.0
GRACE = 5.0  # how long past its own timeout a transactional call may take before it counts as stuck
FENCING = (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)
Record = tuple[str, bytes | None, bytes | None, Headers]  # topic, value, key, headers


class Fenced(RuntimeError):
    """Another producer with our transactional.id (or a newer group generation) took over."""


class Uncertain(Fenced):
    """A commit kept failing without saying whether it happened: only the successor's
    `init_transactions` (same transactional.id) can settle it, so the owner stops as if fenced."""


class Aborted(RuntimeError):
    """The transaction was aborted: none of its records or offsets are visible."""


@dataclass(frozen=True, slots=True)
class Output:
    """A record to publish with the transaction that commits its source offset."""

    source_offset: int
    topic: str
    value: bytes
    key: bytes | None
    headers: Headers


def transactional_id(kafka: KafkaSettings, slot: int, role: str = "worker") -> str:
    return names.transactional_id(kafka.group_id, socket.gethostname(), slot, role)


class TransactionalProducer:
    """A producer with `transactional.id`, initialised; `commit` publishes records and offsets atomically."""

    def __init__(self, kafka: KafkaSettings, watch: ErrorWatch, slot: int, role: str = "worker",
                 **producer_extra: Any) -> None:
        conf = producer_config(kafka, watch, **producer_extra)
        conf["transactional.id"] = self.transactional_id = transactional_id(kafka, slot, role)
        self.retry_for = float(conf.get("transaction.timeout.ms", 60_000)) / 1000  # then the broker decided
        # One librdkafka call; a timed-out one is retried within retry_for (so at least twice).
        self.call_timeout = min(TIMEOUT, self.retry_for / 2)
        self.backoff = 0.2  # between retries of a call that failed at once
        self.retried = 0  # retriable failures that were retried (all calls, all transactions)
        self.calls = CallThread(f"txn-{role}-{slot}")
        self.producer = Producer(conf)
        self.producer.init_transactions(TIMEOUT)

    def commit(self, records: Iterable[Record], offsets: list[TopicPartition], group_metadata: Any) -> None:
        """One transaction: `records`, then `offsets` for the consumer group. Raises Fenced,
        Uncertain (a Fenced) or Aborted (the module says which when)."""
        try:
            self.producer.begin_transaction()
            produce_all(self.producer, records)
        except KafkaException as exc:
            self._abort(exc.args[0])
        deadline = time.monotonic() + self.retry_for
        if offsets:
            err = self._until_done(lambda t: self.producer.send_offsets_to_transaction(offsets, group_metadata, t),
                                   "sending the offsets", deadline)
            if err is not None:
                self._abort(err)  # nothing is committed yet: aborting is safe
        err = self._until_done(self.producer.commit_transaction, "committing", deadline)
        if err is not None:
            raise Uncertain(f"the transaction's commit failed and may or may not have happened: {err.str()}")

    def _until_done(self, call: Callable[[float], Any], what: str, deadline: float,
                    abortable: bool = True) -> KafkaError | None:
        """Run `call(timeout)`, again while it fails with a retriable error and `deadline` is not
        past. None when done; raises Fenced (fatal) or Aborted (abortable); else the last error."""
        while True:
            started = time.monotonic()
            try:
                self.calls.run(call, self.call_timeout, f"{what} ({self.transactional_id})")
                return None
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
            if err.fatal() or err.code() in FENCING:
                raise Fenced(f"transactional producer fenced: {err.str()}")
            if err.txn_requires_abort() and abortable:
                self._abort(err)
            if not err.retriable() or time.monotonic() >= deadline:
                return err
            self.retried += 1
            log.warning("transaction: %s failed with a retriable error, retrying: %s", what, err.str())
            if time.monotonic() - started < self.backoff:  # failed at once: do not spin
                time.sleep(self.backoff)

    def _abort(self, err: KafkaError) -> NoReturn:
        if err.fatal() or err.code() in FENCING:
            raise Fenced(f"transactional producer fenced: {err.str()}")
        log.warning("transaction failed, aborting: %s", err.str())
        failed = self._until_done(self.producer.abort_transaction, "aborting", time.monotonic() + self.retry_for,
                                  abortable=False)
        if failed is not None:  # the transaction may still be open: a new producer settles it
            raise Fenced(f"abort failed: {failed.str()}")
        raise Aborted(err.str())

    def flush(self, timeout: float) -> int:
        return int(self.producer.flush(timeout))


class CallThread:
    """Runs a producer's blocking transactional calls on one daemon thread, so that a call that
    never returns stops its owner (`Uncertain`) instead of wedging it. Costs two thread
    switches per call: a transaction makes two or three calls and waits for the broker anyway."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: queue.SimpleQueue[tuple[Callable[[float], Any], float, list[Any], threading.Event]] = \
            queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.stuck = ""  # what did not return, once one call did not

    def run(self, call: Callable[[float], Any], timeout: float, what: str) -> None:
        """`call(timeout)` on the call thread; its exception is raised here. Raises `Uncertain`
        when it has not returned `GRACE` seconds past `timeout`, and for every call after that."""
        if self.stuck:
            raise Uncertain(f"the transactional producer is stuck ({self.stuck} never returned)")
        if self.thread is None:
            self.thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self.thread.start()
        outcome: list[Any] = []
        done = threading.Event()
        self.jobs.put((call, timeout, outcome, done))
        if not done.wait(timeout + GRACE):
            self.stuck = what
            log.error("transaction: %s did not return %gs after its %gs timeout (a librdkafka wait that "
                      "ignores its timeout); stopping so that a fresh producer settles the transaction",
                      what, GRACE, timeout)
            raise Uncertain(f"{what} never returned: the transaction may or may not complete")
        if outcome[0] is not None:
            raise outcome[0]

    def _serve(self) -> None:
        while True:
            call, timeout, outcome, done = self.jobs.get()
            try:
                call(timeout)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                outcome.append(exc)
            done.set()


Point = tuple[str, int, int]  # topic, partition, offset to commit


class Transactions:
    """Buffers the outputs of transactional partitions and commits them with their offsets.

    One transaction at a time. `begin` takes what it publishes (on the caller's thread) and
    hands the broker round trips (`TransactionalProducer.commit`) to the transaction thread, so
    the consume loop goes on while the broker commits (a transaction on a 3-node cluster takes
    ~100 ms: the loop stood still for each one); `settle` applies its end on the caller's thread."""

    def __init__(self, producer: TransactionalProducer, consumer: Consumer) -> None:
        self.producer = producer
        self.consumer = consumer
        self.outputs: dict[tuple[str, int], list[Output]] = {}
        self.committed = 0
        self.aborted = 0
        self._flight: tuple[Future[None], list[Point]] | None = None
        self._thread: ThreadPoolExecutor | None = None

    def add(self, topic: str, partition: int, output: Output) -> None:
        self.outputs.setdefault((topic, partition), []).append(output)

    def drop(self, topic: str, partition: int) -> None:
        self.outputs.pop((topic, partition), None)

    @property
    def in_flight(self) -> bool:
        """A transaction was begun and not settled yet."""
        return self._flight is not None

    def begin(self, points: list[Point]) -> None:
        """Start the transaction that publishes the outputs below each commit point and commits
        the points; the broker's part runs on the transaction thread. Settle the previous one
        first: one at a time."""
        if self._flight is not None:
            raise RuntimeError("a transaction is in flight: settle it first")
        batch: list[Record] = []
        for topic, partition, point in points:
            pending = self.outputs.get((topic, partition), [])
            batch += [(o.topic, o.value, o.key, o.headers) for o in pending if o.source_offset < point]
            self.outputs[(topic, partition)] = [o for o in pending if o.source_offset >= point]
        offsets = [TopicPartition(t, p, o) for t, p, o in points]
        metadata = self.consumer.consumer_group_metadata()  # on this thread: the consumer's own
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="protojobs-transaction")
        self._flight = (self._thread.submit(self.producer.commit, batch, offsets, metadata), points)

    def settle(self, rewind: Callable[[list[tuple[str, int]]], None], wait: bool = True) -> list[Point] | None:
        """End the transaction in flight, on the caller's thread: its points once committed; []
        after an abort (its partitions' outputs dropped and `rewind(keys)` called) or when none
        was in flight; None while it still runs and `wait` is False. Raises Fenced (Uncertain)."""
        if self._flight is None:
            return []
        future, points = self._flight
        if not wait and not future.done():
            return None
        self._flight = None
        try:
            future.result()
        except Aborted:
            self.aborted += 1
            keys = [(t, p) for t, p, _ in points]
            for key in keys:
                self.outputs.pop(key, None)
            rewind(keys)
            return []
        self.committed += 1
        return points

    def close(self) -> None:
        """Wait for the transaction in flight, if any (its end is not applied: the owner stops),
        and end the transaction thread."""
        if self._flight is not None:
            future, _points = self._flight
            self._flight = None
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - stopping anyway; the successor settles it
                log.warning("the transaction in flight at close did not commit: %s", exc)
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None


def rewind_to_committed(consumer: Consumer, keys: list[tuple[str, int]]) -> None:
    """Seek each partition back to the group's committed offset (the beginning if none)."""
    committed = consumer.committed([TopicPartition(t, p) for t, p in keys], timeout=TIMEOUT)
    for tp in committed:
        try:
            consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._STATE:
                raise
            # Not fetching yet (assigned a moment ago): it starts at the committed offset anyway.
            log.debug("rewind of %s[%s]: not fetching yet, starts at the committed offset", tp.topic, tp.partition)
