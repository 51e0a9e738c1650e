"""The one place a record is handed to librdkafka: produce with back-pressure.

`Outbox.send` never drops a record because the producer's local queue is full: it serves
delivery reports (`poll`) until there is room, then produces. Delivery is reported to the
`on_delivery(error_text_or_None)` callback, on whichever thread serves the producer (`poll` /
`flush`). The worker, the delay router, the scheduler, the dispatcher, `dlq replay` and the
control records all produce through an Outbox (or through `TransactionalProducer`, which uses
the same `produce_all`).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from confluent_kafka import KafkaError, Message, Producer

T = TypeVar("T")
Headers = list[tuple[str, bytes]]
Delivered = Callable[[KafkaError | None], None]
BACKOFF_S = 0.05  # how long to serve delivery reports when the local queue is full
RECORD_OVERHEAD = 512  # bytes of a record's framing that message.max.bytes counts besides its data

# Delivery errors that sending the same record again cannot fix (librdkafka already retried
# the others until message.timeout.ms): the record is too large, malformed, or refused by
# the topic's policy or ACLs. A producer-wide fatal error is not here: it stops the process.
PERMANENT = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.POLICY_VIOLATION, KafkaError._INVALID_ARG,
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
})  # fmt: skip


def permanent(code: int | None) -> bool:
    """True when a record's delivery failed with `code` for good (None: not a Kafka error, e.g.
    a value librdkafka refused to take)."""
    return code is None or code in PERMANENT


def describe(err: KafkaError) -> str:
    """A delivery error as the log and the dead-letter reason show it: text and code name."""
    return f"{err.str()} ({err.name()})"


def record_size(value: bytes | None, key: bytes | None, headers: Headers | None) -> int:
    """What message.max.bytes counts for a record (its data and framing, uncompressed)."""
    return (len(value or b"") + len(key or b"") + sum(len(k) + len(v or b"") for k, v in headers or ())
            + RECORD_OVERHEAD)


def resend_delay(tries: int) -> float:
    """Seconds to wait before sending a record again after its `tries`-th retriable failure."""
    return float(min(30.0, 0.5 * 2 ** max(0, tries - 1)))


class Resends(Generic[T]):
    """Deliveries to try again after a passing failure, each at its own due time (backoff
    `resend_delay(tries)`, doubling up to 30 s). The worker and the delay router keep one each
    and, on every loop, send again what `due()` returns (if they still own its partition)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, T]] = []  # (due, seq, item): seq keeps equal due times in order
        self._seq = itertools.count()

    def later(self, item: T, tries: int) -> float:
        """Queue `item` for its `tries`-th send again; return the delay in seconds."""
        delay = resend_delay(tries)
        heapq.heappush(self._heap, (self.clock() + delay, next(self._seq), item))
        return delay

    def due(self) -> list[T]:
        """The items whose time has come, soonest first (removed from the queue)."""
        now, out = self.clock(), []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def __len__(self) -> int:
        return len(self._heap)


def produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None,
            headers: Headers | None = None, on_delivery: Delivered | None = None) -> None:
    """Produce one record, waiting out a full local queue (BufferError) by serving reports."""
    kwargs: dict[str, Any] = {}
    if headers:
        kwargs["headers"] = headers
    if on_delivery is not None:
        kwargs["on_delivery"] = _report(on_delivery)
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            producer.poll(BACKOFF_S)


def _report(callback: Delivered) -> Callable[[KafkaError | None, Message], None]:
    def report(err: KafkaError | None, _msg: Message) -> None:
        callback(err)
    return report


def produce_all(producer: Producer, records: Iterable[tuple[str, bytes | None, bytes | None, Headers]]) -> None:
    """Produce (topic, value, key, headers) records, in order, without delivery callbacks."""
    for topic, value, key, headers in records:
        produce(producer, topic, value, key, headers)


class Outbox:
    """A producer plus the back-pressure rule; thread-safe as librdkafka's producer is."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def send(self, topic: str, value: bytes | None, key: bytes | None = None, headers: Headers | None = None,
             on_delivery: Delivered | None = None) -> None:
        produce(self.producer, topic, value, key, headers, on_delivery)

    def produce(self, topic: str, value: bytes | None, key: bytes | None, headers: Headers | None,
                report: Callable[[KafkaError | None, Message], None]) -> None:
        """`send` for the hot path: `report(error, message)` is librdkafka's delivery callback
        itself (no wrapper per record), e.g. a bound method of the record's own result object."""
        producer: Any = self.producer  # its stubs want list[tuple[str, str | bytes | None]]
        while True:
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=report)
                return
            except BufferError:
                producer.poll(BACKOFF_S)

    def poll(self, timeout: float = 0) -> int:
        return int(self.producer.poll(timeout))

    def flush(self, timeout: float) -> int:
        """Wait for every delivery report; return how many records are still undelivered."""
        return int(self.producer.flush(timeout))

    def purge(self) -> None:
        self.producer.purge()

    def __len__(self) -> int:
        return len(self.producer)
