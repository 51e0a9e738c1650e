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

No record stops the router (README "Failure model"): headers are read strictly (ASCII digits);
a record without a routable queue or due time is dead-lettered (its raw text cut to fit
message.max.bytes); a forward whose delivery failed for a passing reason is sent again with
backoff; one refused for good (too large for the target, not authorized) is dead-lettered
instead, then cut down once more, then parked (an error log line, `after_park`, and its
offset finished).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from protojobs.config import Settings
from protojobs.engine.background import Background
from protojobs.engine.hooks import Hooks, HookSet
from protojobs.kafka.clients import (
    ErrorWatch,
    idle_poll_s,
    is_error,
    max_message_bytes,
    producer_config,
    until_reachable,
)
from protojobs.kafka.clock import now_ms
from protojobs.kafka.control import ClearEpochs
from protojobs.kafka.outbox import Outbox, Resends, describe, permanent, record_size
from protojobs.kafka.partitions import Key, Partitions
from protojobs.kafka.transactions import Fenced, Output, TransactionalProducer, Transactions
from protojobs.model import dead_letter, delays, envelope, names
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
    code: int | None = None  # the delivery error's code (None: not a Kafka error)
    dead: bool = False  # a dead-letter copy, not the tier record itself
    shrunk: bool = False  # a cut-down dead-letter copy: the last resort before parking
    tries: int = 0  # failed deliveries that were retried




class Router:
    """Consumes every delay tier (group `names.router_group`) and forwards due records."""

    def __init__(self, settings: Settings, *, clock: Callable[[], int] = now_ms, commit_interval: float = 0.5,
                 consumer_extra: dict[str, Any] | None = None, producer_extra: dict[str, Any] | None = None,
                 slot: int = 0, hooks: Iterable[Hooks] = ()) -> None:
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
        self.max_bytes = max_message_bytes(settings.kafka, **self.producer_extra)
        self.hooks = HookSet(hooks)  # after_park
        self.held: dict[Key, int] = {}  # paused partition -> due time (epoch ms)
        self._resend: Resends[Forward] = Resends()  # deliveries to try again, with backoff
        self.forwarded = 0
        self.parked = 0
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
        self.epochs = ClearEpochs(self.settings, self.watch, on_malformed=self.hooks.after_park)
        self.epochs.catch_up()
        next_commit = time.monotonic() + self.commit_interval
        try:
            while not self._stop.is_set():
                self.watch.check()
                self.epochs.refresh()
                for msg in self.partitions.fetch(self.settings.kafka.batch_size, self._wait_s()):
                    self._take(msg)
                self._resend_due()
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
        if not self.partitions.started(topic, partition, offset):
            return  # not ours (any more): never forwarded, never committed
        if self._cleared(msg):
            self.partitions.finished(topic, partition, offset)  # its queue was cleared after dispatch
            return
        self._forward(msg, available, now)

    def _cleared(self, msg: Message) -> bool:
        hdrs = cast(Any, msg.headers())
        queue = envelope.header_value(hdrs, envelope.H_QUEUE)
        dispatched = envelope.header_int(hdrs, envelope.H_DISPATCHED_AT)  # unreadable: the worker decides
        return queue is not None and dispatched is not None and \
            self.epochs is not None and self.epochs.cleared(queue, dispatched)

    def _available_at(self, msg: Message) -> int | None:
        return envelope.header_int(cast(Any, msg.headers()), envelope.H_AVAILABLE_AT)

    def _forward(self, msg: Message, available: int | None, now: int) -> None:
        topic, partition, offset = cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())
        queue = envelope.header_value(cast(Any, msg.headers()), envelope.H_QUEUE)
        prefix = self.settings.kafka.topic_prefix
        value: bytes | None
        dead = available is None or queue is None or queue not in self.settings.queues
        if available is None or queue is None or queue not in self.settings.queues:
            target = self.settings.kafka.dead_letter_topic
            value = self._dead_letter(msg, f"no due time or unknown queue {queue!r}",
                                      "delay-tier record without a routable queue", [])
        else:
            hop = delays.next_hop(available, now, self.settings.tiers_ms)
            target = names.queue_topic(prefix, queue) if hop is None else names.delay_topic(prefix, hop)
            value = msg.value()
        headers = cast(Any, list(msg.headers() or []))
        self._send(Forward(topic, partition, offset, self.partitions.generation_of(topic, partition), target,
                           value, msg.key(), headers, dead=dead))

    def _dead_letter(self, msg: Message | Forward, message: str, reason: str,
                     headers: list[tuple[str, bytes]]) -> bytes:
        now = self.clock()
        if isinstance(msg, Forward):
            value, topic, partition, offset = msg.value, msg.topic, msg.partition, msg.offset
        else:
            value, topic, partition, offset = msg.value(), cast(str, msg.topic()), cast(int, msg.partition()), \
                cast(int, msg.offset())
        return dead_letter_record(
            value, error_type="RoutingError", error_message=message, traceback="", attempts=0,
            first_failed_at=now, failed_at=now, topic=topic, partition=partition, offset=offset, host="router",
            reason=reason, limit=self.max_bytes - record_size(None, None, headers))

    def _send(self, move: Forward) -> None:
        """Forward (with the tier offset's transaction, or acknowledged first); a forward that
        cannot be produced at all fails like a refused delivery (`_undelivered`)."""
        size = record_size(move.value, move.key, move.headers)
        if size > self.max_bytes:
            self._failed(move, KafkaError.MSG_SIZE_TOO_LARGE,
                         f"MSG_SIZE_TOO_LARGE ({size} bytes, message.max.bytes is {self.max_bytes})")
            return
        if self.partitions.txn is not None:
            if self.partitions.owns(move.topic, move.partition, move.generation):
                self.partitions.publish_with_offset(move.topic, move.partition, Output(
                    move.offset, move.target, cast(bytes, move.value), move.key, move.headers))
                if self.partitions.finished(move.topic, move.partition, move.offset, move.generation):
                    self.forwarded += 1
            return

        def delivered(err: KafkaError | None) -> None:
            move.acked, move.error = err is None, None if err is None else describe(err)
            move.code = None if err is None else err.code()
            self._forwarded(move)

        try:
            self.outbox.send(move.target, move.value, move.key, move.headers, delivered)
        except KafkaException as exc:
            self._failed(move, exc.args[0].code(), describe(exc.args[0]))
        except Exception as exc:  # noqa: BLE001 - e.g. a value librdkafka will not take
            self._failed(move, None, repr(exc))

    def _failed(self, move: Forward, code: int | None, error: str) -> None:
        move.acked, move.code, move.error = False, code, error
        self._undelivered(move)

    def _forwarded(self, move: Forward) -> None:
        if not move.acked:
            self._undelivered(move)
            return
        if self.partitions.finished(move.topic, move.partition, move.offset, move.generation):
            self.forwarded += 1

    def _undelivered(self, move: Forward) -> None:
        """Send it again later (a passing error); else dead-letter the tier record, then cut the
        dead-letter copy down, then park the record (a permanent error)."""
        if not self.partitions.owns(move.topic, move.partition, move.generation):
            return  # revoked meanwhile: the next owner forwards it
        if not permanent(move.code):
            move.tries += 1
            delay = self._resend.later(move, move.tries)
            log.warning("forward to %s failed (%s); sending it again in %.1fs", move.target, move.error, delay)
            return
        where = f"{move.topic}[{move.partition}]@{move.offset}"
        queue = envelope.header_value(move.headers, envelope.H_QUEUE)
        if not move.dead:
            reason = f"could not be forwarded to {move.target}: {move.error}"
            log.error("%s %s; dead-lettering it instead", where, reason)
            q = self.settings.queues.get(queue or "")
            target = q.dead_letter_topic if q is not None else self.settings.kafka.dead_letter_topic
            value = self._dead_letter(move, move.error or "", reason, move.headers)
            self._send(Forward(move.topic, move.partition, move.offset, move.generation, target, value, move.key,
                               move.headers, dead=True))
            return
        smaller = None if move.shrunk or move.value is None else dead_letter.shrink(move.value, dead_letter.SMALL_COPY)
        if smaller is not None:
            log.error("%s: dead-letter copy refused by %s (%s); sending a cut-down copy", where, move.target,
                      move.error)
            self._send(Forward(move.topic, move.partition, move.offset, move.generation, move.target, smaller,
                               move.key, move.headers, dead=True, shrunk=True))
            return
        self._park(move, f"its dead-letter copy was refused by {move.target}: {move.error}")

    def _park(self, move: Forward, reason: str) -> None:
        if not self.partitions.finished(move.topic, move.partition, move.offset, move.generation):
            return
        self.parked += 1
        log.error("delay-tier record %s[%d]@%d parked (not forwarded, not dead-lettered; its offset is committed): %s",
                  move.topic, move.partition, move.offset, reason,
                  extra={"topic": move.topic, "partition": move.partition, "offset": move.offset})
        self.hooks.after_park(move.topic, move.partition, move.offset, reason)

    def _resend_due(self) -> None:
        for move in self._resend.due():
            if self.partitions.owns(move.topic, move.partition, move.generation):
                self._send(move)

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
