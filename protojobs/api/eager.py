"""Eager mode: every dispatch runs at once in this process, for unit tests without a broker.

What is the same as on a worker: the payload is validated and wrapped by the same code
(`engine.dispatch.build`), a job over the producer's `message.max.bytes` is refused as the
producer refuses it (KafkaException MSG_SIZE_TOO_LARGE), it goes through the JSON envelope
codec, is checked again on "consume" (`validate_on_consume`), and runs through
`engine.attempt.Attempt`: the same handler call and context, the same failure decision (the
retry policy, `max_attempts`, `RetryLater`, `PermanentError`, `dead_letter_on` / `retry_on`,
`should_retry`, `failed`) and the same retry and dead-letter copies (`model.retry`,
`model.dead_letter`).

What is not (say so in tests that rely on it): nothing reaches Kafka; a delayed job or a retry
runs at once instead of after its delay (the delay it would have waited is recorded); jobs
run one at a time, in dispatch order (a job dispatched by a running job runs after it); there
are no partitions, no key ordering, no concurrency, no timeouts for sync handlers, and no
exactly-once transaction (what a job dispatched before failing stays dispatched).

Every finished job is an `EagerResult` in the list the App exposes as `app.eager_results`.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException

from protojobs.config import PayloadError, Settings, payload_validator
from protojobs.engine.attempt import Attempt, Handler, JobRun, dead_letter, handlers_of
from protojobs.engine.dispatch import BulkResult, DispatchError, build
from protojobs.engine.hooks import HookSet
from protojobs.engine.lanes import EventLoop
from protojobs.kafka.clock import now_ms
from protojobs.kafka.outbox import record_size
from protojobs.model import envelope, names

__all__ = ["EagerResult", "EagerRunner"]


@dataclass
class EagerResult:
    """One job run eagerly: `status` is "done" or "dead" (dead-lettered); `attempts` counts
    every run; `retried_after_ms` the delay each retry would have waited on a broker;
    `dead_letter` the dead-letter record (`model.dead_letter`) and `topic` where it would go."""

    id: str
    queue: str
    job: str
    data: Any
    status: str = "pending"
    attempts: int = 0
    value: Any = None
    errors: list[BaseException] = field(default_factory=list)
    retried_after_ms: list[int] = field(default_factory=list)
    delayed_ms: int = 0
    dead_letter: dict[str, Any] | None = None
    topic: str | None = None

    @property
    def error(self) -> BaseException | None:
        return self.errors[-1] if self.errors else None


class _NoWait:
    """Eager retries never wait in place (the retry is recorded and run at once); nothing times out."""

    waits_in_place = False

    def hold(self, run: JobRun) -> bool:
        return True

    def rearm(self, run: JobRun) -> None:
        return None


class EagerRunner:
    """Runs the jobs of one Settings inline; `results` receives an EagerResult per job."""

    def __init__(self, settings: Settings, handlers: dict[str, dict[str, Handler]], results: list[EagerResult]) -> None:
        self.settings = settings
        self.results = results
        prefix = settings.kafka.topic_prefix
        self.topics = {name: names.queue_topic(prefix, name) for name in settings.queues}
        self.handlers = {name: handlers_of(q, handlers.get(name)) for name, q in settings.queues.items()}
        self._loop: EventLoop | None = None
        self.attempt = Attempt(settings, {self.topics[n]: q for n, q in settings.queues.items()}, HookSet(()),
                               self._event_loop, lambda: cast(Any, self), lambda _topic: False)
        self._pending: deque[tuple[envelope.Envelope, EagerResult]] = deque()
        self._running = False  # a drain is under way (on some thread): new jobs queue up for it
        self._lock = threading.Lock()
        self._offset = 0

    def _event_loop(self) -> EventLoop:
        if self._loop is None:
            self._loop = EventLoop()
        return self._loop

    def dispatch(self, queue: str, data: Any, **options: Any) -> str:
        """Validate and wrap as a real dispatch does, then run it (and what it dispatches)."""
        now = now_ms()
        env = build(self.settings, queue, data, now=now, **options)
        size = record_size(envelope.encode(env), env.key.encode() if env.key else None, envelope.headers(env))
        if size > self.attempt.max_bytes:  # what the producer refuses before sending anything
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, f"the job is {size} bytes, over "
                                            f"message.max.bytes ({self.attempt.max_bytes}): not sent"))
        result = EagerResult(env.id, env.queue, env.job, env.data, delayed_ms=max(0, env.available_at - now))
        with self._lock:
            self._pending.append((env, result))
            if self._running:  # dispatched by a running job (or another thread): runs after it
                return env.id
            self._running = True
        self._drain()
        return env.id

    def dispatch_many(self, queue: str, items: Iterable[Any], **options: Any) -> BulkResult:
        result = BulkResult()
        for index, data in enumerate(items):
            try:
                result.ids.append(self.dispatch(queue, data, **options))
            except (PayloadError, DispatchError) as err:
                result.errors[index] = err if isinstance(err, DispatchError) else DispatchError(str(err))
        return result

    def _drain(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._running = False
                        return
                    env, result = self._pending.popleft()
                self._run(env, result)
                self.results.append(result)
        except BaseException:
            with self._lock:
                self._running = False
            raise

    def _run(self, env: envelope.Envelope, result: EagerResult) -> None:
        q = self.settings.queues[env.queue]
        topic = self.topics[env.queue]
        handlers = self.handlers[env.queue]
        while True:
            env = envelope.decode(envelope.encode(env))  # what a worker decodes
            self._offset += 1
            run = JobRun(topic, 0, self._offset, env, 0, None)
            result.attempts += 1
            if q.validate_on_consume:
                try:
                    payload_validator(q)(env.data)
                except PayloadError as exc:  # the worker dead-letters it at once (engine.worker.admit)
                    result.errors.append(exc)
                    self._dead(result, dead_letter(env, exc, "payload failed its schema on consume", topic, 0,
                                                   self._offset, 0, q.dead_letter_topic))
                    return
            outcome = self.attempt.run(run, handlers.get(env.job) or handlers.get("*"), _NoWait())
            if outcome.error is None:
                result.status, result.value = "done", outcome.value
                return
            result.errors.append(outcome.error)
            move = outcome.move
            if move is None or move.dead:
                self._dead(result, move)
                return
            env = envelope.decode(move.value)
            result.retried_after_ms.append(max(0, env.available_at - now_ms()))

    @staticmethod
    def _dead(result: EagerResult, move: Any) -> None:
        result.status = "dead"
        if move is not None:
            result.dead_letter, result.topic = json.loads(move.value), move.target

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
