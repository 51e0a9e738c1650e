"""librdkafka client configurations, built in one place from `[kafka]`.

Producers are idempotent (acks=all, safe retries); consumers never store an offset on their
own (`enable.auto.offset.store=false`, `enable.auto.commit=false`: the worker commits the
contiguous finished prefix) and use the cooperative-sticky protocol, so a rebalance revokes
only the partitions that move and keeps the pause state of the others.
`[kafka.producer]` / `[kafka.consumer]` pass any librdkafka property through (SASL, SSL...) and
win over these defaults; a jobs.toml that overrides a consumer property the commit rule depends
on is refused when loaded (`config.checks.CONSUMER_OWNED`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

from protojobs.config import KafkaSettings

log = logging.getLogger(__name__)
KAFKA_LOG = logging.getLogger("protojobs.kafka")  # librdkafka's own log lines, through Python logging

FATAL_CODES = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
               KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
               KafkaError.CLUSTER_AUTHORIZATION_FAILED}


class ClientError(RuntimeError):
    """A fatal client error (bad credentials, no authorization): retrying cannot fix it."""


class ErrorWatch:
    """An `error_cb` that remembers the first fatal error, so callers fail fast instead of letting
    librdkafka retry a wrong password forever. The message never includes configuration."""

    def __init__(self) -> None:
        self.fatal: ClientError | None = None

    def __call__(self, err: KafkaError) -> None:
        if err.fatal() or err.code() in FATAL_CODES:
            if self.fatal is None:
                self.fatal = ClientError(f"Kafka refused the client: {err.str()} "
                                         "(check the credentials in [kafka.producer] / [kafka.consumer])")
        elif err.code() not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            log.warning("kafka client error: %s", err.str())

    def check(self) -> None:
        if self.fatal is not None:
            raise self.fatal


def _common(kafka: KafkaSettings, watch: ErrorWatch) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": kafka.brokers, "error_cb": watch, "logger": KAFKA_LOG}
    if kafka.debug:
        conf["debug"] = kafka.debug
    return conf


def producer_config(kafka: KafkaSettings, watch: ErrorWatch, **extra: Any) -> dict[str, Any]:
    conf = _common(kafka, watch) | {
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": kafka.compression,
        # 1 ms, not librdkafka's 5: `dispatch()` waits for its ack, and with 100 threads
        # dispatching that wait is the throughput (16.6k acks/s at 5 ms, 22k at 1 ms, same run);
        # bulk dispatch is unchanged (batches fill while earlier requests are in flight).
        "linger.ms": 1,
        # Jobs without a key are spread over partitions one by one (librdkafka would otherwise
        # stick a whole burst to one partition, so one worker of the group gets all of it).
        "sticky.partitioning.linger.ms": 0,
        "batch.num.messages": min(max(kafka.batch_size, 1), 1_000_000),
        "queue.buffering.max.messages": max(100_000, kafka.batch_size * 2),
    }
    return conf | dict(kafka.producer) | extra


def max_message_bytes(kafka: KafkaSettings, **extra: Any) -> int:
    """The producer's `message.max.bytes` ([kafka.producer], else librdkafka's 1,000,000): no
    record larger than this can be produced, so copies (retry, dead letter) are cut to fit."""
    value = {**kafka.producer, **extra}.get("message.max.bytes", 1_000_000)
    try:
        return max(1000, int(value))
    except (TypeError, ValueError):
        return 1_000_000


def consumer_config(kafka: KafkaSettings, watch: ErrorWatch, group: str | None = None, **extra: Any) -> dict[str, Any]:
    conf = _common(kafka, watch) | {
        "group.id": group or kafka.group_id,
        "auto.offset.reset": kafka.auto_offset_reset,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": False,
    }
    return conf | dict(kafka.consumer) | extra


IDLE_POLL_MAX_MS = 100  # an idle loop wakes at least this often: stop, commits, timeouts stay prompt


def idle_poll_s(kafka: KafkaSettings) -> float:
    """How long one poll of an idle worker or delay router waits for a record: `[kafka]
    timeout_ms` (the seed's poll timeout), at most IDLE_POLL_MAX_MS."""
    return min(kafka.timeout_ms, IDLE_POLL_MAX_MS) / 1000


def until_reachable(action: Callable[[], Any], stopped: Callable[[], bool], what: str,
                    pause: float = 2.0) -> bool:
    """Run `action` until it succeeds (True) or `stopped()` (False). A worker started while Kafka
    is unreachable waits for it, as Celery and Dramatiq workers do, instead of crashing; a
    refused client (ClientError: bad credentials) is not retried."""
    while not stopped():
        try:
            action()
            return True
        except ClientError:
            raise
        except Exception as exc:  # noqa: BLE001 - KafkaException, timeouts: the broker is not there yet
            log.warning("%s: Kafka is not reachable yet (%s); retrying in %.0fs", what, exc, pause)
            time.sleep(pause)
    return False


def fetch(consumer: Any, max_messages: int, timeout: float) -> list[Any]:
    """Up to `max_messages` records at once, waiting at most `timeout` for the first one.

    `Consumer.consume(n, timeout)` waits until n records arrived OR the timeout passed, so with a
    large batch a lone job would wait the whole timeout: take what is there without waiting,
    and only when nothing is, block in `poll` (which returns on the first record)."""
    msgs = consumer.consume(max_messages, 0)
    if msgs or timeout <= 0:
        return list(msgs)
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(max(1, max_messages - 1), 0)]


def is_error(msg: Any, what: str) -> bool:
    """True when a polled `msg` is an error event, not a record (logged, except end-of-partition)."""
    err = msg.error()
    if err is None:
        return False
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("%s consume error: %s", what, err.str())
    return True
