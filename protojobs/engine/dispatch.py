"""Dispatch: validate the payload, wrap it in an envelope, produce it, wait for the broker's ack.

Guarantees
- A payload that fails its queue's schema raises `PayloadError` and nothing is sent.
- `dispatch` returns the job id only after the broker acknowledged the record (idempotent
  producer, acks=all). A definite failure raises `DispatchError`; a delivery that timed out
  raises `DeliveryUncertain` (the record may or may not be stored: re-dispatch with the same
  `job_id` to stay idempotent downstream).
- `dispatch_many` produces every job before waiting once (no flush per job), then reports each.
- Kafka refusing the client itself (wrong credentials, no authorization) raises
  `ClientRefused` (both a DispatchError and a protojobs.clients.ClientError) within about a
  second, instead of after librdkafka's retry loop; its message never includes the config.
- A delayed job (`delay_ms` / `at_ms` in the future) goes to the delay tier the routing rule
  picks (protojobs.delays); it never runs before its `available_at`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import KafkaError, Message, Producer

from protojobs.config import PayloadError, QueueSettings, Settings, payload_validator
from protojobs.kafka import admin
from protojobs.kafka.clients import ClientError, ErrorWatch, producer_config
from protojobs.model import delays, envelope, names


class DispatchError(RuntimeError):
    """The broker did not store the job (definitely)."""


class DeliveryUncertain(DispatchError):
    """The delivery timed out: the job may or may not be stored."""


class ClientRefused(DispatchError, ClientError):
    """Kafka refused the client (bad credentials, no authorization): nothing was stored. A
    DispatchError, so callers that report dispatch failures report this one too."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Outcome:
    """One job's delivery: `error` None means acknowledged."""

    job_id: str
    error: DispatchError | None = None
    done: bool = False


@dataclass
class BulkResult:
    ids: list[str] = field(default_factory=list)
    errors: dict[int, DispatchError] = field(default_factory=dict)  # input index -> error

    @property
    def ok(self) -> bool:
        return not self.errors


def delivery_error(err: KafkaError) -> DispatchError:
    if err.code() == KafkaError._MSG_TIMED_OUT:
        return DeliveryUncertain(f"delivery not confirmed in time (the job may be stored): {err.str()}")
    return DispatchError(f"the broker refused the job: {err.str()}")


class Dispatcher:
    """Sends jobs to the queues of one Settings. Thread-safe; one per process is enough."""

    def __init__(self, settings: Settings, producer: Producer | None = None, ensure_topics: bool = True,
                 **producer_extra: Any) -> None:
        self.settings = settings
        self.watch = ErrorWatch()
        self.producer = producer or Producer(producer_config(settings.kafka, self.watch, **producer_extra))
        self._ensure = ensure_topics
        self._lock = threading.Lock()
        self._queue_topics: dict[str, str] = {}

    # --- building records --------------------------------------------------------------------

    def queue(self, name: str) -> QueueSettings:
        try:
            return self.settings.queues[name]
        except KeyError:
            known = ", ".join(sorted(self.settings.queues))
            raise DispatchError(f"unknown queue {name!r} (jobs.toml declares: {known})") from None

    def build(self, queue: str, data: Any, *, job: str | None = None, key: str | None = None,
                 delay_ms: int | None = None, at_ms: int | None = None, job_id: str | None = None,
                 now: int | None = None, trace: str | None = None) -> envelope.Envelope:
        """Validate and wrap one job (no I/O). Raises PayloadError / DispatchError."""
        q = self.queue(queue)
        payload_validator(q)(data)
        job_name = self._job_name(q, job)
        if key is None and q.key is not None and isinstance(data, Mapping) and data.get(q.key) is not None:
            key = str(data[q.key])
        if q.ordering == "key" and key is None:
            raise PayloadError(f"data.{q.key}: queue {queue!r} orders by key {q.key!r}; the payload must have it")
        now = now_ms() if now is None else now
        due = at_ms if at_ms is not None else now + (delay_ms or 0)
        if due > now and not self.settings.tiers_ms:
            raise DispatchError("a delayed job needs delay tiers: add [delays] tiers to jobs.toml")
        return envelope.new_envelope(queue, job_name, data, now_ms=now, available_at=due, key=key,
                                     id=job_id, trace=trace)

    def _job_name(self, q: QueueSettings, job: str | None) -> str:
        if q.jobs:
            names = {target.rsplit(":", 1)[-1]: target for target in q.jobs}
            if job is None and len(q.jobs) == 1:
                return q.jobs[0].rsplit(":", 1)[-1]
            if job not in names and job not in q.jobs:
                raise DispatchError(f"job {job!r} is not on queue {q.name!r}'s jobs list ({', '.join(names)})")
            return str(job).rsplit(":", 1)[-1]
        return job or (q.handler or q.name)

    def topic_for(self, env: envelope.Envelope, now: int) -> str:
        """The queue's topic when due, else the delay tier the routing rule picks."""
        prefix = self.settings.kafka.topic_prefix
        if env.available_at <= now:  # the common case, without the per-call name checks
            topic = self._queue_topics.get(env.queue)
            if topic is None:
                topic = self._queue_topics[env.queue] = names.queue_topic(prefix, env.queue)
            return topic
        tier = delays.next_hop(env.available_at, now, self.settings.tiers_ms)
        return names.queue_topic(prefix, env.queue) if tier is None else names.delay_topic(prefix, tier)

    # --- sending -----------------------------------------------------------------------------

    def send(self, env: envelope.Envelope, outcome: Outcome, topic: str | None = None) -> None:
        """Produce one envelope; `outcome` is filled by the delivery report (serve with poll)."""
        if self._ensure:
            try:
                admin.ensure_topics(self.settings)
            except ClientError as err:
                raise ClientRefused(str(err)) from None
            self._ensure = False

        def report(err: KafkaError | None, _msg: Message) -> None:
            outcome.error = None if err is None else delivery_error(err)
            outcome.done = True

        value = envelope.encode(env)
        key = env.key.encode() if env.key is not None else None
        target = topic or self.topic_for(env, now_ms())
        while True:
            try:
                self.producer.produce(target, value, key, headers=cast(Any, envelope.headers(env)), on_delivery=report)
                return
            except BufferError:  # local queue full: serve delivery reports, then try again
                self.producer.poll(0.05)

    def wait(self, outcomes: Iterable[Outcome], timeout: float | None = None) -> None:
        """Serve delivery reports until every outcome is known (or raise DeliveryUncertain)."""
        pending = [o for o in outcomes if not o.done]
        limit = timeout if timeout is not None else self._delivery_timeout()
        deadline = time.monotonic() + limit
        while pending:
            if self.watch.fatal is not None:
                raise ClientRefused(str(self.watch.fatal))
            self.producer.poll(0.05)
            pending = [o for o in pending if not o.done]
            if pending and time.monotonic() > deadline:
                for o in pending:
                    o.error, o.done = DeliveryUncertain(f"no delivery report within {limit:.0f}s"), True

    def _delivery_timeout(self) -> float:
        conf = self.settings.kafka.producer
        return float(conf.get("message.timeout.ms", 300_000)) / 1000 + 5

    def dispatch(self, queue: str, data: Any, **options: Any) -> str:
        """Send one job and wait for the broker's ack; return its id."""
        env = self.build(queue, data, **options)
        outcome = Outcome(env.id)
        self.send(env, outcome)
        self.wait([outcome])
        if outcome.error is not None:
            raise outcome.error
        return env.id

    def dispatch_many(self, queue: str, items: Iterable[Any], **options: Any) -> BulkResult:
        """Send many jobs at producer speed, then wait once. Invalid payloads are reported per
        index and not sent; the others are sent."""
        result = BulkResult()
        outcomes: list[tuple[int, Outcome]] = []
        for index, data in enumerate(items):
            try:
                env = self.build(queue, data, **options)
            except (PayloadError, DispatchError) as err:
                result.errors[index] = err if isinstance(err, DispatchError) else DispatchError(str(err))
                continue
            outcome = Outcome(env.id)
            self.send(env, outcome)
            outcomes.append((index, outcome))
            if len(outcomes) % 10_000 == 0:
                self.producer.poll(0)
        self.wait(o for _, o in outcomes)
        for index, outcome in outcomes:
            if outcome.error is None:
                result.ids.append(outcome.job_id)
            else:
                result.errors[index] = outcome.error
        return result

    def close(self, timeout: float = 30) -> int:
        """Flush what is still buffered; return how many records could not be delivered.
        A refused client cannot deliver anything: its buffer is dropped instead of waited out."""
        if self.watch.fatal is not None:
            undelivered = len(self.producer)
            self.producer.purge()
            self.producer.flush(1)  # serves the purged records' delivery reports
            return undelivered
        return int(self.producer.flush(timeout))
