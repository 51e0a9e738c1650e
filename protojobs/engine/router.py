"""The delay-tier router: holds each tier partition's head record until it is due, then forwards it.

Every delayed job and every retry sits in a `{prefix}delay-{tier}` topic. Records of one tier
partition are due in (almost) the order they entered, so only the head of a partition needs
watching: when the head is not due, the partition is paused and sought back to it (pause first,
then seek), and resumed when it is. No sleeping in the poll loop, no skip-and-requeue.

Rule (protojobs.delays): a record that entered tier t at time E is due at
min(E + t, available_at); released, it goes to its queue when now >= available_at, else to the
tier for what remains. So a job never runs before its `available_at`, and is late by at most
the smallest tier plus processing lag. E is the record's Kafka timestamp (its produce time);
`available_at` comes from the `pj-available-at` header, so the value is never parsed.

Moves are safe: a tier offset is committed only after its forwarded copy is acknowledged
(at-least-once: a crash between the two forwards the record again; the job id is unchanged).
Pause state is rebuilt after a rebalance: a newly assigned partition starts unpaused at its
committed offset and is paused again when its head is not due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from protojobs.config import Settings
from protojobs.engine.background import Background
from protojobs.kafka.clients import (
    ErrorWatch,
    consumer_config,
    fetch,
    producer_config,
    until_reachable,
)
from protojobs.kafka.control import ClearEpochs
from protojobs.kafka.transactions import Output, Transactions, rewind_to_committed
from protojobs.model import delays, envelope, names
from protojobs.model.offsets import OffsetTracker

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Forward:
    topic: str
    partition: int
    offset: int
    generation: int
    acked: bool = False
    error: str | None = None


class Router:
    """Consumes every delay tier (group `{group_id}-delays`) and forwards due records."""

    def __init__(self, settings: Settings, *, clock: Callable[[], int] = now_ms, commit_interval: float = 0.5,
                 consumer_extra: dict[str, Any] | None = None, producer_extra: dict[str, Any] | None = None,
                 slot: int = 0) -> None:
        self.settings = settings
        self.clock = clock
        self.slot = slot
        self.producer_extra = producer_extra or {}
        self.transactional = transactional = any(q.delivery == "exactly_once" for q in settings.queues.values())
        self.commit_interval = min(commit_interval, 0.1) if transactional else commit_interval
        prefix = settings.kafka.topic_prefix
        self.tiers = {names.delay_topic(prefix, t): t for t in settings.tiers_ms}
        self.watch = ErrorWatch()
        self.consumer = Consumer(consumer_config(settings.kafka, self.watch, group=self.group,
                                                 on_commit=self._on_commit, **(consumer_extra or {})))
        self.producer = Producer(producer_config(settings.kafka, self.watch, **(producer_extra or {})))
        self.offsets = OffsetTracker()
        self.held: dict[tuple[str, int], int] = {}  # paused partition -> due time (epoch ms)
        self.generation: dict[tuple[str, int], int] = {}
        self.forwarded = 0
        self._stop = threading.Event()
        # With an exactly-once queue in the config, every forward and its tier offset commit go in
        # one transaction (`{group_id}.router.{host}.{slot}`), so a record is never forwarded twice.
        self.txn: Transactions | None = None  # made in run(), once Kafka answers

    @property
    def group(self) -> str:
        return f"{self.settings.kafka.group_id}-delays"

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        if not self.tiers:
            return

        def start() -> None:
            if self.transactional and self.txn is None:
                self.txn = Transactions(self.settings, self.consumer, self.slot, self.watch, role="router",
                                        **self.producer_extra)

        if not until_reachable(start, self._stop.is_set, "delay router start-up"):
            return
        self.consumer.subscribe(list(self.tiers), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self.epochs = ClearEpochs(self.settings, self.watch)
        self.epochs.catch_up()
        next_commit = time.monotonic() + self.commit_interval
        try:
            while not self._stop.is_set():
                self.watch.check()
                self.epochs.refresh()
                for msg in fetch(self.consumer, self.settings.kafka.batch_size, self._wait_s()):
                    self._take(msg)
                self.producer.poll(0)
                self._release_due()
                if time.monotonic() >= next_commit:
                    self._commit(asynchronous=True)
                    next_commit = time.monotonic() + self.commit_interval
            self.producer.flush(10)
            self._commit(asynchronous=False)
        finally:
            self.epochs.close()
            self.consumer.close()

    def _wait_s(self) -> float:
        """Poll no longer than until the earliest held record is due (at most 100 ms)."""
        if not self.held:
            return 0.1
        return max(0.0, min(0.1, (min(self.held.values()) - self.clock()) / 1000))

    def _take(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("delay tier consume error: %s", err.str())
            return
        topic, partition, offset = cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())
        key = (topic, partition)
        if key in self.held:
            return  # paused meanwhile: the rest of this batch for the partition is dropped
        now = self.clock()
        available = self._available_at(msg)
        if available is None:
            due = now  # no due time at all: forward to the dead-letter queue at once
        else:
            entered = msg.timestamp()[1]
            due = delays.due_at(entered if entered > 0 else now, self.tiers[topic], available)
        if due > now:
            tp = TopicPartition(topic, partition, offset)
            self.consumer.pause([tp])
            self.consumer.seek(tp)
            self.held[key] = due
            return
        self.offsets.started(topic, partition, offset)
        if self._cleared(msg):
            self.offsets.finished(topic, partition, offset)  # its queue was cleared after dispatch
            return
        self._forward(msg, available, now)

    def _cleared(self, msg: Message) -> bool:
        hdrs = cast(Any, msg.headers())
        queue = envelope.header_value(hdrs, envelope.H_QUEUE)
        dispatched = envelope.header_value(hdrs, envelope.H_DISPATCHED_AT)
        return queue is not None and dispatched is not None and dispatched.isdigit() and \
            self.epochs.cleared(queue, int(dispatched))

    def _available_at(self, msg: Message) -> int | None:
        text = envelope.header_value(cast(Any, msg.headers()), envelope.H_AVAILABLE_AT)
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None

    def _forward(self, msg: Message, available: int | None, now: int) -> None:
        topic, partition, offset = cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())
        queue = envelope.header_value(cast(Any, msg.headers()), envelope.H_QUEUE)
        prefix = self.settings.kafka.topic_prefix
        value: bytes | None
        if available is None or queue is None or queue not in self.settings.queues:
            target = self.settings.kafka.dead_letter_topic
            value = envelope.dead_letter_record(
                msg.value(), error_type="RoutingError", error_message=f"no due time or unknown queue {queue!r}",
                traceback="", attempts=0, first_failed_at=now, failed_at=now, topic=topic, partition=partition,
                offset=offset, host="router", reason="delay-tier record without a routable queue")
        else:
            hop = delays.next_hop(available, now, self.settings.tiers_ms)
            target = names.queue_topic(prefix, queue) if hop is None else names.delay_topic(prefix, hop)
            value = msg.value()
        if self.txn is not None:
            self.txn.add(topic, partition, Output(offset, target, cast(bytes, value), msg.key(),
                                                  cast(Any, list(msg.headers() or []))))
            self.offsets.finished(topic, partition, offset)
            self.forwarded += 1
            return
        move = Forward(topic, partition, offset, self.generation.get((topic, partition), 0))

        def report(err: KafkaError | None, _m: Message) -> None:
            move.acked, move.error = err is None, None if err is None else err.str()
            self._forwarded(move, msg, target, value)

        self._produce(target, value, msg, report)

    def _produce(self, target: str, value: bytes | None, msg: Message, report: Callable[..., None]) -> None:
        while True:
            try:
                self.producer.produce(target, value, msg.key(), headers=cast(Any, msg.headers()), on_delivery=report)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _forwarded(self, move: Forward, msg: Message, target: str, value: bytes | None) -> None:
        if not move.acked:
            log.warning("re-forwarding to %s after a failed delivery: %s", target, move.error)

            def again(err: KafkaError | None, _m: Message) -> None:
                move.acked, move.error = err is None, None if err is None else err.str()
                self._forwarded(move, msg, target, value)

            self._produce(target, value, msg, again)
            return
        if self.generation.get((move.topic, move.partition), 0) == move.generation:
            self.offsets.finished(move.topic, move.partition, move.offset)
            self.forwarded += 1

    def _release_due(self) -> None:
        now = self.clock()
        due = [key for key, at in self.held.items() if at <= now]
        if due:
            for key in due:
                del self.held[key]
            self.consumer.resume([TopicPartition(t, p) for t, p in due])

    # --- offsets and rebalancing --------------------------------------------------------------

    def _commit(self, asynchronous: bool, only: set[tuple[str, int]] | None = None) -> None:
        points = [TopicPartition(t, p, o) for t, p, o in self.offsets.commit_points()
                  if only is None or (t, p) in only]
        if not points:
            return
        if self.txn is not None:
            chosen = [(tp.topic, tp.partition, tp.offset) for tp in points]
            if self.txn.commit(chosen, self._rewind):
                for t, p, o in chosen:
                    self.offsets.mark_committed(t, p, o)
            return
        try:
            if asynchronous:
                self.consumer.commit(offsets=points, asynchronous=True)
                return
            for tp in self.consumer.commit(offsets=points, asynchronous=False) or []:
                if tp.error is None:
                    self.offsets.mark_committed(tp.topic, tp.partition, tp.offset)
        except Exception as exc:  # noqa: BLE001 - retried at the next interval
            log.warning("delay router commit failed (will retry): %s", exc)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if err is None and tp.error is None:
                self.offsets.mark_committed(tp.topic, tp.partition, tp.offset)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.generation[key] = self.generation.get(key, 0) + 1
            self.offsets.drop(*key)
            self.held.pop(key, None)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self.producer.flush(10)
        self._commit(asynchronous=False, only=revoked)
        self._forget(revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget({(tp.topic, tp.partition) for tp in partitions})

    def _rewind(self, keys: list[tuple[str, int]]) -> None:
        """After an aborted transaction: back to the committed offsets; nothing stays paused."""
        held = [key for key in keys if key in self.held]
        self._forget(set(keys))
        if held:
            self.consumer.resume([TopicPartition(t, p) for t, p in held])
        rewind_to_committed(self.consumer, keys)

    def _forget(self, keys: set[tuple[str, int]]) -> None:
        for key in keys:
            self.generation[key] = self.generation.get(key, 0) + 1
            self.offsets.drop(*key)
            self.held.pop(key, None)
            if self.txn is not None:
                self.txn.drop(*key)


class RouterThread(Background):
    """A Router running beside the worker in the same process (the default of `protojobs run`)."""

    def __init__(self, router: Router) -> None:
        super().__init__(router, "delay router")
        self.router = router
