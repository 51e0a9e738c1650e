"""The scheduler: leader election through Kafka, and each tick fired exactly once.

Every `protojobs run` process (unless `--no-scheduler`) runs a `Scheduler` in a thread. Its
consumer joins the group `{group_id}-scheduler` on the one-partition, compacted
`{prefix}schedules` topic: whoever is assigned partition 0 leads. A dead leader's partition
moves to another member after the session timeout; a stopped one hands it over at once (it
leaves the group).

Becoming leader:
1. fetch the group's committed offset of partition 0 (read_committed consumers ask for *stable*
   offsets, KIP-447: the fetch waits until no transaction that carries offsets of this group is
   open, i.e. until the previous leader's last transaction committed or aborted);
2. read the topic from its beginning up to its end (read_committed) into a `Book`: per schedule
   its last tick, the dynamic definitions, pause/resume controls;
3. init the transactional producer (`model.names.transactional_id`, role "scheduler").

Then, for each due tick (model.schedules.plan), ONE transaction holds the tick's job (built
by Dispatcher.build with the id `sched-<name>-<tick_ms>`, produced to its queue or delay tier),
the schedule's new `state/<name>` record, and the consumer's offset sent with the group metadata.
A zombie leader (its partition moved while it was stalled) has an old group generation: its
transaction is refused and aborted, so only one leader can ever commit. A leader killed between
two ticks leaves nothing open; one killed inside a transaction delays the next leader until the
transaction times out (SCHEDULER_TXN_TIMEOUT_MS). Either way no tick fires twice, and a tick the
dead leader did not commit is fired by the next one (as `catch_up` says).

Dynamic schedules (Jobs.schedule_*) and `protojobs schedules pause|resume|remove` write plain
records to the same topic; the leader's consumer reads them as they come.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from protojobs.config import PayloadError, Settings
from protojobs.engine.background import Background
from protojobs.engine.dispatch import Dispatcher, DispatchError
from protojobs.kafka import admin, transactions
from protojobs.kafka.clients import ErrorWatch, consumer_config
from protojobs.kafka.clock import now_ms
from protojobs.kafka.partitions import Key, Partitions
from protojobs.kafka.transactions import Aborted, Fenced, TransactionalProducer
from protojobs.model import envelope, names
from protojobs.model.schedule_book import Book, control_record, def_record, state_record
from protojobs.model.schedules import (
    Schedule,
    iso,
    jitter_for,
    job_id,
    next_fire,
    plan,
)

log = logging.getLogger(__name__)
TIMEOUT = 30.0
SCHEDULER_TXN_TIMEOUT_MS = 10_000  # a leader killed inside a transaction delays the next one this long


def group_of(settings: Settings) -> str:
    return names.scheduler_group(settings.kafka.group_id)


def transactional_id(settings: Settings, slot: int) -> str:
    return transactions.transactional_id(settings.kafka, slot, "scheduler")


Record = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]  # topic, key, value, headers


@dataclass
class _Batch:
    """What one transaction writes."""

    records: list[Record] = field(default_factory=list)
    updates: dict[str, int] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    fired: int = 0


class Scheduler:
    """One process's scheduler: a member of the scheduler group, leading while it holds partition 0."""

    def __init__(self, settings: Settings, slot: int = 0, *, clock: Callable[[], int] = now_ms,
                 consumer_extra: dict[str, Any] | None = None, producer_extra: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.slot = slot
        self.clock = clock
        self.topic = names.schedules_topic(settings.kafka.topic_prefix)
        self.config = settings.schedules
        self.watch = ErrorWatch()
        self.partitions = Partitions(settings.kafka, self.watch, group=group_of(settings), owner=self, **{
            "isolation.level": "read_committed",  # cooperative-sticky: a joining member never moves partition 0
            "auto.offset.reset": "earliest", "client.id": f"scheduler-{socket.gethostname()}-{slot}",
            "topic.metadata.refresh.interval.ms": 10_000,
            **(consumer_extra or {})})
        self.consumer = self.partitions.consumer
        self._producer_extra = producer_extra or {}
        self.producer: TransactionalProducer | None = None
        self.book = Book()
        self.leading = False
        self.loaded = False
        self.fired = 0  # jobs dispatched by this process
        self._due: dict[str, tuple[Schedule, int, int | None, int | None]] = {}  # name -> (.., next due)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                admin.ensure_topics(self.settings)
                self._await_topic()
                break
            except (admin.AdminError, KafkaException, TimeoutError) as exc:
                log.warning("scheduler: cannot create the schedules topic yet (%s); retrying", exc)
                self._stop.wait(1)
        self.partitions.subscribe([self.topic])
        try:
            while not self._stop.is_set():
                self.watch.check()
                for msg in self.consumer.consume(500, self._wait_s()):
                    if msg.error() is None:
                        apply(self.book, msg)
                if self.leading and not self.loaded:
                    self._load()
                elif self.leading:
                    self._tick()
        finally:
            self.partitions.close()  # leaves the group: another member leads at once
            if self.producer is not None:
                self.producer.flush(5)

    def _await_topic(self, timeout: float = 15.0) -> None:
        """Subscribe only once this client's metadata shows the (maybe just created) topic with a
        leader: a subscription to a topic it does not see yet waits for the next metadata refresh."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            meta = self.consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
            if meta is not None and meta.error is None and meta.partitions and meta.partitions[0].leader >= 0:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.topic} has no leader yet")

    def _wait_s(self) -> float:
        if not self.leading or not self.loaded:
            return 0.2
        due = [d for _, _, _, d in self._due.values() if d is not None]
        return max(0.0, min(0.1, (min(due) - self.clock()) / 1000)) if due else 0.1

    # --- leadership (called by Partitions, on this thread, inside poll) --------------------------

    def partitions_assigned(self, keys: set[Key]) -> None:
        if (self.topic, 0) in keys:
            self.leading, self.loaded = True, False
            self.book, self._due = Book(), {}

    def partitions_revoking(self, keys: set[Key]) -> None:
        return None

    def partitions_forgotten(self, keys: set[Key]) -> None:
        """Revoked or lost: partition 0 gone means no longer leading."""
        if (self.topic, 0) in keys:
            if self.leading:
                log.info("scheduler: no longer leading")
            self.leading, self.loaded = False, False

    def _load(self) -> None:
        """Become an effective leader: wait for stable offsets, read the whole topic, init the
        transactional producer. Left for the next loop turn on any failure."""
        try:
            self.consumer.committed([TopicPartition(self.topic, 0)], timeout=5)  # waits out open transactions
            book = read_book(self.settings, self.watch, timeout=10)
        except (KafkaException, TimeoutError) as exc:
            log.info("scheduler: not loaded yet (%s); retrying", exc)
            return
        if not self.leading:
            return
        for msg in self.consumer.consume(500, 0):  # what the group consumer got meanwhile
            if msg.error() is None:
                apply(book, msg)
        self.book, self._due = book, {}
        if self.producer is None:
            conf = {**self.settings.kafka.producer, **self._producer_extra}
            txn_timeout = min(int(conf.get("transaction.timeout.ms", 60_000)), SCHEDULER_TXN_TIMEOUT_MS)
            extra = {**self._producer_extra, "transaction.timeout.ms": txn_timeout,
                     "message.timeout.ms": min(int(conf.get("message.timeout.ms", 300_000)), txn_timeout)}
            try:
                self.producer = TransactionalProducer(self.settings.kafka, self.watch, self.slot, "scheduler", **extra)
            except KafkaException as exc:
                log.warning("scheduler: cannot init transactions (%s); retrying", exc.args[0])
                return
            self.dispatcher = Dispatcher(self.settings, producer=self.producer.producer, ensure_topics=False)
        self.loaded = True
        print(f"protojobs: scheduler leading ({len(self.book.schedules(self.config))} schedules, "
              f"transactional.id {transactional_id(self.settings, self.slot)})", file=sys.stderr, flush=True)

    # --- firing --------------------------------------------------------------------------------

    def _next_due(self, sched: Schedule, last: int, floor: int | None) -> int | None:
        cached = self._due.get(sched.name)
        if cached is not None and cached[0] == sched and cached[1] == last and cached[2] == floor:
            return cached[3]
        due = next_fire(sched.rule, last if floor is None else max(last, floor))
        self._due[sched.name] = (sched, last, floor, due)
        return due

    def _tick(self) -> None:
        now = self.clock()
        batch = _Batch()
        for sched in self.book.schedules(self.config).values():
            if not self.book.paused(sched):
                self._decide(sched, now, batch)
        if batch.records and self._commit(batch.records):
            self.fired += batch.fired
            self.book.last.update(batch.updates)
            for name in batch.removed:
                self.book.defs.pop(name, None)
                self.book.last.pop(name, None)

    def _decide(self, sched: Schedule, now: int, batch: _Batch) -> None:
        """Add what `sched` needs now (its due ticks' jobs and its new state) to `batch`."""
        last = self.book.last.get(sched.name)
        if last is None and not sched.dynamic:  # first sight of a jobs.toml schedule: count from now
            batch.records.append(self._raw(*state_record(sched.name, now, baseline=True)))
            batch.updates[sched.name] = now
            return
        last = sched.created_ms if last is None else last
        floor = self.book.floor(sched.name)
        due = self._next_due(sched, last, floor)
        decided = plan(sched.rule, sched.catch_up, last, now, floor) if due is not None and due <= now else None
        if decided is None:
            return
        for tick in decided.fire:
            record = self._job(sched, tick, now)
            if record is not None:
                batch.records.append(record)
                batch.fired += 1
        if sched.dynamic and sched.rule.kind == "at":  # a one-shot is done: drop it
            batch.records += [self._raw(*def_record(sched.name)), self._state(sched.name, None),
                              self._raw(*control_record(sched.name, None, now))]
            batch.removed.append(sched.name)
        else:
            batch.records.append(self._state(sched.name, decided.last_tick))
            batch.updates[sched.name] = decided.last_tick

    def _job(self, sched: Schedule, tick: int, now: int) -> Record | None:
        try:
            env = self.dispatcher.build(sched.queue, dict(sched.data), job=sched.job, job_id=job_id(sched.name, tick),
                                        at_ms=tick + jitter_for(sched.name, tick, sched.jitter_ms), now=now)
        except (DispatchError, PayloadError) as exc:
            log.error("schedule %s: tick %s not dispatched: %s", sched.name, iso(tick), exc)
            return None
        key = env.key.encode() if env.key is not None else None
        return self.dispatcher.topic_for(env, now), key, envelope.encode(env), envelope.headers(env)

    def _state(self, name: str, last_tick: int | None) -> Record:
        return self._raw(*state_record(name, last_tick))

    def _raw(self, key: bytes, value: bytes | None) -> Record:
        return self.topic, key, value, []

    def _commit(self, records: list[Record]) -> bool:
        """One transaction: the tick's jobs and states, and the consumer's position. A refused one
        is aborted and the book loaded again (a zombie then learns it lost the partition); a
        fenced producer is dropped and a new one made."""
        assert self.producer is not None
        try:
            self.producer.commit([(topic, value, key, headers) for topic, key, value, headers in records],
                                 [TopicPartition(self.topic, 0, self.book.position)],
                                 self.consumer.consumer_group_metadata())
            return True
        except Aborted as exc:
            log.warning("scheduler: transaction aborted: %s", exc)
        except Fenced as exc:
            log.error("scheduler: transactional producer failed (%s); a new one is made", exc)
            self.producer = None
        self.loaded = False
        return False


class SchedulerThread(Background):
    """A Scheduler beside the worker in the same process (the default of `protojobs run`)."""

    def __init__(self, scheduler: Scheduler, on_exit: Callable[[], None] | None = None) -> None:
        super().__init__(scheduler, "scheduler", on_exit)
        self.scheduler = scheduler


def apply(book: Book, msg: Any) -> None:
    """Fold one record of the schedules topic into `book`; a malformed one (anyone can write to
    the topic) is skipped with a warning, never stops the scheduler."""
    offset = cast(int, msg.offset())
    if not book.apply(msg.key(), msg.value(), offset):
        log.warning("scheduler: record %s@%d skipped: not a schedules record (key %r, value %r)",
                    msg.topic(), offset, msg.key(), (msg.value() or b"")[:200])


# --- reading the topic (the leader; the schedules admin in protojobs.ops.schedules) -----------------


def read_book(settings: Settings, watch: ErrorWatch | None = None, timeout: float = 30.0) -> Book:
    """The schedules topic from its beginning to its end (committed records only), folded."""
    topic = names.schedules_topic(settings.kafka.topic_prefix)
    consumer = Consumer(consumer_config(settings.kafka, watch or ErrorWatch(),
                                        group=f"protojobs-schedules-reader-{uuid.uuid4().hex}", **{
                                            "enable.partition.eof": True, "isolation.level": "read_committed",
                                            "auto.offset.reset": "earliest"}))
    book = Book()
    try:
        meta = consumer.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return book  # no scheduler ever ran: nothing recorded
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        if high <= low:
            return book  # empty (or compacted away)
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.2):
                err = msg.error()
                if err is None:
                    apply(book, msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    return book
        raise TimeoutError(f"could not read {topic} to its end within {timeout:g}s")
    finally:
        consumer.close()
