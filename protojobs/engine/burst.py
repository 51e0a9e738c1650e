"""`protojobs run --burst`: when a worker's queues count as drained, so that it stops and exits 0.

Drained means: every record of the worker's queue topics below the high watermarks taken when it
started (its first check, right after it subscribed) is finished and committed by the group,
and this worker has nothing in flight (no job running or buffered, no retry or dead-letter copy
unacknowledged, no finished offset uncommitted). Jobs dispatched later are not waited for (they
may run if fetched before the worker stops). Jobs waiting in delay tiers (delayed dispatches,
and retries of queues that retry through tiers) are not in the queue topics yet: they are not
waited for and run when due under a later worker; blocking retries run in place, so they are.

A partition counts as drained when the group's committed offset reaches the high watermark, or
when it is empty (low = high), or when this worker owns it, its fetch position reached the high
watermark and nothing of it is uncommitted (this covers the transaction marker that follows the
last record of an exactly-once topic: the position moves past it, the committed offset does not).
An exactly-once partition owned by another worker of the group never reaches its marker, so a
burst worker sharing such queues with others waits until it owns them or is stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, TopicPartition

log = logging.getLogger(__name__)
Key = tuple[str, int]


class Burst:
    """Checks, at most every `every` seconds, whether the queues are drained (see the module)."""

    def __init__(self, every: float = 0.5, timeout: float = 10.0) -> None:
        self.every = every
        self.timeout = timeout
        self.marks: dict[Key, tuple[int, int]] | None = None  # (low, high) when started
        self.next_check = 0.0

    def due(self) -> bool:
        """Time for the next check (at most one every `every` seconds)."""
        now = time.monotonic()
        if now < self.next_check:
            return False
        self.next_check = now + self.every
        return True

    def drained(self, consumer: Consumer, topics: Iterable[str], idle: bool, owned: set[Key],
                commit: Callable[[], None]) -> bool:
        """True once drained; `idle`: nothing in flight here; `commit` commits what finished.
        The first call takes the high watermarks."""
        if self.marks is None:
            self.marks = self._watermarks(consumer, topics)
            log.info("burst: stopping once %d record(s) queued now are finished and committed",
                     sum(high - low for low, high in self.marks.values()))
        if not idle:
            return False
        commit()
        left = [key for key, (low, high) in self.marks.items() if high > low]
        if not left:
            return True
        committed = consumer.committed([TopicPartition(t, p) for t, p in left], timeout=self.timeout)
        positions = {(tp.topic, tp.partition): tp.offset
                     for tp in consumer.position([TopicPartition(t, p) for t, p in left if (t, p) in owned])}
        return all(tp.offset >= self.marks[(tp.topic, tp.partition)][1]
                   or positions.get((tp.topic, tp.partition), -1) >= self.marks[(tp.topic, tp.partition)][1]
                   for tp in committed)

    def _watermarks(self, consumer: Consumer, topics: Iterable[str]) -> dict[Key, tuple[int, int]]:
        marks: dict[Key, tuple[int, int]] = {}
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=self.timeout).topics[topic]
            for partition in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.timeout,
                                                           cached=False)
                marks[(topic, partition)] = (low, high)
        return marks
