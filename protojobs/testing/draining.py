"""A worker for integration tests: run it against the real broker until its queues are drained.

`DrainingWorker(app)` starts a `Worker` (with the App's decorated handlers) and the delay
router in daemon threads. `drain(timeout)` returns the worker's counters once every job is
finished: the queue topics and the delay tiers are fully committed by the worker and the
router, twice in a row with nothing finishing in between (a retry copy is acknowledged before
its source offset is committed, so a job in flight always shows as uncommitted somewhere).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from protojobs.config import Settings
from protojobs.engine.router import Router, RouterThread
from protojobs.engine.worker import Counters, Worker, WorkerOptions
from protojobs.kafka import admin
from protojobs.kafka.clients import ErrorWatch, consumer_config
from protojobs.model import names

POLL_S = 0.2


class DrainingWorker:
    """A worker and the delay router in threads; `drain()` waits until no job is left."""

    def __init__(self, app: Any, queues: list[str] | None = None, **options: Any) -> None:
        settings: Settings = app if isinstance(app, Settings) else app.settings
        handlers = None if isinstance(app, Settings) else app.handlers()
        self.settings = settings
        self.worker = Worker(settings, WorkerOptions(queues=queues, **options), handlers=handlers)
        self.error: BaseException | None = None
        self.router = RouterThread(Router(settings)).start() if settings.tiers_ms else None
        self.thread = threading.Thread(target=self._run, name="protojobs-test-worker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported by drain()
            self.error = exc

    @property
    def counters(self) -> Counters:
        return self.worker.counters

    def pending(self) -> int:
        """Jobs not finished and committed: in the worker's queues and in the delay tiers. Past
        a group's committed offset, only records a read_committed consumer sees count (an
        exactly-once queue leaves transaction markers and aborted records behind)."""
        client = admin.client(self.settings)
        prefix, group = self.settings.kafka.topic_prefix, self.settings.kafka.group_id
        topics = [(names.worker_group(group), names.queue_topic(prefix, q.name)) for q in self.worker.queues.values()]
        topics += [(names.router_group(group), names.delay_topic(prefix, t)) for t in self.settings.tiers_ms]
        behind: list[TopicPartition] = []
        for reader, topic in topics:
            marks = admin.watermarks(client, topic)
            done = admin.committed(client, reader, topic, marks)
            behind += [TopicPartition(topic, p, max(low, done.get(p, low)))
                       for p, (low, high) in marks.items() if high > max(low, done.get(p, low))]
        return self._visible(behind) if behind else 0

    def _visible(self, behind: list[TopicPartition]) -> int:
        """How many records a read_committed consumer reads from these positions to the end."""
        extra = {"enable.partition.eof": True, "isolation.level": "read_committed"}
        consumer = Consumer(consumer_config(self.settings.kafka, ErrorWatch(), "protojobs-drain-peek", **extra))
        try:
            consumer.assign(behind)
            seen, ended = 0, set[tuple[str | None, int | None]]()
            deadline = time.monotonic() + 10
            while len(ended) < len(behind) and time.monotonic() < deadline:
                for msg in consumer.consume(100, 0.2):
                    err = msg.error()
                    if err is not None and err.code() == KafkaError._PARTITION_EOF:
                        ended.add((msg.topic(), msg.partition()))
                    elif err is None:
                        seen += 1
            return seen if len(ended) == len(behind) else max(seen, 1)
        finally:
            consumer.close()

    def drain(self, timeout: float = 60.0) -> Counters:
        """Wait until every job dispatched so far is finished; TimeoutError names what is left."""
        deadline = time.monotonic() + timeout
        quiet = 0
        left = -1
        while True:
            if self.error is not None:
                raise RuntimeError(f"the worker stopped: {self.error!r}") from self.error
            finished = self.worker.counters.finished
            left = self.pending()
            quiet = quiet + 1 if left == 0 and finished == self.worker.counters.finished else 0
            if quiet >= 2:
                return self.worker.counters
            if time.monotonic() > deadline:
                raise TimeoutError(f"{left} job(s) still pending after {timeout:g}s "
                                   f"(finished so far: {self.worker.counters})")
            time.sleep(POLL_S)

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(30)
        if self.router is not None:
            self.router.stop()
