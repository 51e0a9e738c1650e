"""Per-queue clear epochs on the compacted `{prefix}control` topic.

`protojobs clear Q --yes` and `Jobs.clear` (`ops.clear`, which defines the cut-off) record
"queue Q was cleared at T" here, then delete the queue topic's records that existed before T.
Jobs of Q dispatched before T that are still on their way (waiting in a shared delay tier, a
retry, a record produced meanwhile) are dropped by the delay router and by workers when they
meet them, so clear empties the queue everywhere, not just its own topic. Times are the
dispatching and clearing hosts' clocks: keep them in sync (NTP) for a sharp cut-off.

A record of another shape (anyone can write to the topic) is skipped with a warning and
reported to `on_malformed` (the worker and the router count it as parked): it never stops
the process that reads it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from protojobs.config import Settings
from protojobs.kafka.clients import ErrorWatch, consumer_config, producer_config
from protojobs.kafka.outbox import produce
from protojobs.model import names

log = logging.getLogger(__name__)
REFRESH_S = 1.0
CLEAR = b"clear/"
PAUSE = b"pause/"  # pause/<queue> -> {"paused": bool, "at": epoch ms, "by": who}: workers stop fetching it


class ClearEpochs:
    """The latest clear time of each queue, read from the control topic (refreshed at most once
    per second by `refresh`)."""

    def __init__(self, settings: Settings, watch: ErrorWatch,
                 on_malformed: Callable[[str, int, int, str], None] | None = None) -> None:
        self.topic = names.control_topic(settings.kafka.topic_prefix)
        self.consumer = Consumer(consumer_config(settings.kafka, watch,
                                                 group=names.control_reader_group(uuid.uuid4().hex),
                                                 **{"enable.auto.commit": False}))
        self.consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self.watch = watch
        self.on_malformed = on_malformed  # (topic, partition, offset, reason)
        self.epochs: dict[str, int] = {}
        self.paused: set[str] = set()  # queues paused across the group (pause/<queue> records)
        self._next = 0.0

    def catch_up(self, timeout: float = 10.0) -> None:
        """Read the control topic up to its current end (at start-up, before any job is taken)."""
        tp = TopicPartition(self.topic, 0)
        deadline = time.monotonic() + timeout
        high = None
        while high is None and time.monotonic() < deadline:
            try:
                high = self.consumer.get_watermark_offsets(tp, timeout=1.0)[1]
            except Exception:  # noqa: BLE001 - not reachable yet: a refused client fails fast below
                msg = self.consumer.poll(0)  # serves error_cb
                if msg is not None:
                    self._apply(msg)
                self.watch.check()
        if high is None:
            return
        position = 0
        while position < high and time.monotonic() < deadline:
            for msg in self.consumer.consume(500, 0.2):
                self._apply(msg)
                position = max(position, (msg.offset() or 0) + 1)
        self._next = time.monotonic() + REFRESH_S

    def _apply(self, msg: Message) -> None:
        key, value = msg.key(), msg.value()
        if msg.error() is None and key and key.startswith(PAUSE):
            self._apply_pause(key, value)
            return
        if msg.error() is not None or not key or not key.startswith(CLEAR) or not value:
            return  # other keys are for other readers; a tombstone clears nothing
        parsed = parse_clear(key, value)
        if isinstance(parsed, str):
            offset = msg.offset()
            log.warning("control record %s[0]@%s skipped: %s", self.topic, offset, parsed)
            if self.on_malformed is not None:
                self.on_malformed(self.topic, 0, offset if offset is not None else -1, parsed)
            return
        queue, cleared_at = parsed
        self.epochs[queue] = cleared_at

    def _apply_pause(self, key: bytes, value: bytes | None) -> None:
        queue = key[len(PAUSE):].decode("utf-8", "replace")
        try:
            paused = value is not None and json.loads(value).get("paused") is True
        except (ValueError, AttributeError, RecursionError):
            paused = False
        if paused:
            self.paused.add(queue)
        else:
            self.paused.discard(queue)

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() < self._next:
            return
        self._next = time.monotonic() + REFRESH_S
        while True:
            msgs = self.consumer.consume(500, 0)
            for msg in msgs:
                self._apply(msg)
            if not msgs:
                return

    def cleared(self, queue: str, dispatched_at: int) -> bool:
        """True when the job was dispatched before its queue's last clear."""
        epoch = self.epochs.get(queue)
        return epoch is not None and dispatched_at < epoch

    def close(self) -> None:
        self.consumer.close()


def parse_clear(key: bytes, value: bytes) -> tuple[str, int] | str:
    """(queue, cleared_at) of a `clear/<queue>` record, or why it is not one."""
    try:
        queue = key[len(CLEAR):].decode("utf-8")
        body = json.loads(value)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return f"not a clear record ({type(exc).__name__}: {exc})"
    cleared_at = body.get("cleared_at") if isinstance(body, dict) else None
    if not queue or type(cleared_at) is not int or cleared_at < 0:
        return f"not a clear record: expected {{\"cleared_at\": <epoch ms>}} under clear/<queue>, got {value[:200]!r}"
    return queue, cleared_at


def record_clear(settings: Settings, queue: str, at_ms: int) -> None:
    """Write (and wait for the ack of) "queue was cleared at `at_ms`"."""
    watch = ErrorWatch()
    producer = Producer(producer_config(settings.kafka, watch))
    errors: list[str] = []
    produce(producer, names.control_topic(settings.kafka.topic_prefix), json.dumps({"cleared_at": at_ms}).encode(),
            f"clear/{queue}".encode(), on_delivery=lambda err: errors.append(err.str()) if err else None)
    if producer.flush(30) or errors:
        raise RuntimeError(f"could not record the clear of {queue!r}: {errors or 'no acknowledgement'}")


def record_pause(settings: Settings, queue: str, paused: bool, at_ms: int, by: str) -> None:
    """Write (and wait for the ack of) "queue is paused / resumed": every worker of the group
    stops or starts fetching it within about REFRESH_S, and one started later obeys it too."""
    watch = ErrorWatch()
    producer = Producer(producer_config(settings.kafka, watch))
    errors: list[str] = []
    body = json.dumps({"paused": paused, "at": at_ms, "by": by}).encode()
    produce(producer, names.control_topic(settings.kafka.topic_prefix), body, PAUSE + queue.encode(),
            on_delivery=lambda err: errors.append(err.str()) if err else None)
    if producer.flush(30) or errors:
        raise RuntimeError(f"could not record the pause of {queue!r}: {errors or 'no acknowledgement'}")
