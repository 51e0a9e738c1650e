"""The delay-tier router: holds each tier partition's head record until it is due, then forwards it.

Every delayed job and every retry sits in a `{prefix}delay-{tier}` topic. Records of one tier
partition are due in (almost) the order they entered, so only the head of a partition needs
watching: when the head is not due, the partition is paused and sought back to it (pause first,
then seek), and resumed when it is. No sleeping in the poll loop, no skip-and-requeue.

Rule (model.delays): a record that entered tier t at time E is due at
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

from confluent_kafka import KafkaError, Message, Producer, TopicPartition

from protojobs.config import Settings
from protojobs.engine.background import Background
from protojobs.kafka.clients import ErrorWatch, fetch, idle_poll_s, is_error, producer_config, until_reachable
from protojobs.kafka.clock import now_ms
from protojobs.kafka.control import ClearEpochs
from protojobs.kafka.outbox import Outbox
from protojobs.kafka.partitions import Key, Partitions
from protojobs.kafka.transactions import Fenced, Output, TransactionalProducer, Transactions
from protojobs.model import delays, envelope, names
from protojobs.model.dead_letter import dead_letter_record

log = logging.getLogger(__name__)


@dataclass
class Forward:
    """A record on its way out of a tier, for the tier record (topic, partition, offset)."""

    topic: str
    partition: int
    offset: int
    generation: int
    target: str
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]]
    acked: bool = False
    error: str | None = None


class Router:
    """Consumes every delay tier (group `names.router_group`) and forwards due records."""

    def __init__(self, settings: Settings, *, clock: Callable[[], int] = now_ms, commit_interval: float = 0.5,
                 consumer_extra: dict[str, Any] | None = None, producer_extra: dict[str, Any] | None = None,
                 slot: int = 0) -> None:
        self.settings = settings
        self.clock = clock
        self.slot = slot
        self.producer_extra = producer_extra or {}
        # With an exactly-once queue in the config, every forward and its tier offset commit go in
        # one transaction, so a record is never forwarded twice.
        self.transactional = any(q.delivery == "exactly_once" for q in settings.queues.values())
        self.commit_interval = min(commit_interval, 0.1) if self.transactional else commit_interval
        prefix = settings.kafka.topic_prefix
        self.tiers = {names.delay_topic(prefix, t): t for t in settings.tiers_ms}
        self.watch = ErrorWatch()
        self.partitions = Partitions(settings.kafka, self.watch, group=self.group, owner=self,
                                     transactional=lambda _topic: True, **(consumer_extra or {}))
        self.outbox = Outbox(Producer(producer_config(settings.kafka, self.watch, **self.producer_extra)))
        self.held: dict[Key, int] = {}  # paused partition -> due time (epoch ms)
        self.forwarded = 0
        self.epochs: ClearEpochs | None = None
        self._stop = threading.Event()

    @property
    def group(self) -> str:
        return names.router_group(self.settings.kafka.group_id)

    @property
    def consumer(self) -> Any:
        return self.partitions.consumer

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        if not self.tiers:
            return
        if not until_reachable(self._start, self._stop.is_set, "delay router start-up"):
            return
        self.partitions.subscribe(list(self.tiers))
        self.epochs = ClearEpochs(self.settings, self.watch)
        self.epochs.catch_up()
        next_commit = time.monotonic() + self.commit_interval
        try:
            while not self._stop.is_set():
                self.watch.check()
                self.epochs.refresh()
                for msg in fetch(self.consumer, self.settings.kafka.batch_size, self._wait_s()):
                    self._take(msg)
                self.outbox.poll(0)
                self._release_due()
                if time.monotonic() >= next_commit:
                    self.partitions.commit(asynchronous=True)
                    next_commit = time.monotonic() + self.commit_interval
                if self.partitions.session_lost:
                    raise Fenced("the group session of an exactly-once delay router expired; stopped so "
                                 "that it forwards nothing a newer router might also forward")
            self.outbox.flush(10)
            self.partitions.commit(asynchronous=False)
        finally:
            self.epochs.close()
            self.partitions.close()

    def _start(self) -> None:
        if self.transactional and self.partitions.txn is None:
            producer = TransactionalProducer(self.settings.kafka, self.watch, self.slot, role="router",
                                             **self.producer_extra)
            self.partitions.txn = Transactions(producer, self.consumer)

    def _wait_s(self) -> float:
        """Poll no longer than until the earliest held record is due (at most `idle_poll_s`)."""
        idle = idle_poll_s(self.settings.kafka)
        if not self.held:
            return idle
        return max(0.0, min(idle, (min(self.held.values()) - self.clock()) / 1000))

    def _take(self, msg: Message) -> None:
        if is_error(msg, "delay tier"):
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
            self.partitions.pause([key])  # pause first, then seek: a seek before the pause can be lost
            self.consumer.seek(TopicPartition(topic, partition, offset))
            self.held[key] = due
            return
        self.partitions.started(topic, partition, offset)
        if self._cleared(msg):
            self.partitions.finished(topic, partition, offset)  # its queue was cleared after dispatch
            return
        self._forward(msg, available, now)

    def _cleared(self, msg: Message) -> bool:
        hdrs = cast(Any, msg.headers())
        queue = envelope.header_value(hdrs, envelope.H_QUEUE)
        dispatched = envelope.header_value(hdrs, envelope.H_DISPATCHED_AT)
        return queue is not None and dispatched is not None and dispatched.isdigit() and \
            self.epochs is not None and self.epochs.cleared(queue, int(dispatched))

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
            value = dead_letter_record(
                msg.value(), error_type="RoutingError", error_message=f"no due time or unknown queue {queue!r}",
                traceback="", attempts=0, first_failed_at=now, failed_at=now, topic=topic, partition=partition,
                offset=offset, host="router", reason="delay-tier record without a routable queue")
        else:
            hop = delays.next_hop(available, now, self.settings.tiers_ms)
            target = names.queue_topic(prefix, queue) if hop is None else names.delay_topic(prefix, hop)
            value = msg.value()
        headers = cast(Any, list(msg.headers() or []))
        if self.partitions.txn is not None:
            self.partitions.publish_with_offset(topic, partition, Output(offset, target, cast(bytes, value),
                                                                         msg.key(), headers))
            self.partitions.finished(topic, partition, offset)
            self.forwarded += 1
            return
        self._send(Forward(topic, partition, offset, self.partitions.generation_of(topic, partition), target,
                           value, msg.key(), headers))

    def _send(self, move: Forward) -> None:
        def delivered(err: KafkaError | None) -> None:
            move.acked, move.error = err is None, None if err is None else err.str()
            self._forwarded(move)

        self.outbox.send(move.target, move.value, move.key, move.headers, delivered)

    def _forwarded(self, move: Forward) -> None:
        if not move.acked:
            log.warning("re-forwarding to %s after a failed delivery: %s", move.target, move.error)
            self._send(move)
            return
        if self.partitions.finished(move.topic, move.partition, move.offset, move.generation):
            self.forwarded += 1

    def _release_due(self) -> None:
        now = self.clock()
        due = [key for key, at in self.held.items() if at <= now]
        if due:
            for key in due:
                del self.held[key]
            self.partitions.resume(due)

    # --- rebalancing (called by Partitions, on this thread, inside poll) ------------------------

    def partitions_assigned(self, keys: set[Key]) -> None:
        for key in keys:
            self.held.pop(key, None)

    def partitions_revoking(self, keys: set[Key]) -> None:
        self.outbox.flush(10)

    def partitions_forgotten(self, keys: set[Key]) -> None:
        """Revoked, lost or rewound: nothing stays held (a rewound partition is resumed)."""
        held = [key for key in keys if key in self.held]
        for key in held:
            del self.held[key]
        assigned = [key for key in held if key in self.partitions.assigned]
        if assigned:
            self.partitions.resume(assigned)


class RouterThread(Background):
    """A Router running beside the worker in the same process (the default of `protojobs run`)."""

    def __init__(self, router: Router, on_exit: Callable[[], None] | None = None) -> None:
        super().__init__(router, "delay router", on_exit)
        self.router = router
