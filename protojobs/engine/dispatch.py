"""Dispatch: validate the payload, wrap it in an envelope, produce it, wait for the broker's ack.

Guarantees
- A payload that fails its queue's schema raises `PayloadError` and nothing is sent.
- `dispatch` returns the job id only after the broker acknowledged the record (idempotent
  producer, acks=all). A definite failure raises `DispatchError`; a delivery that timed out
  raises `DeliveryUncertain` (the record may or may not be stored: re-dispatch with the same
  `job_id` to stay idempotent downstream).
- `dispatch_many` produces every job before waiting once (no flush per job), then reports each.
- `submit` (a Future of the id), `await dispatch_async` and `await dispatch_many_async` give the
  same guarantees without blocking the caller: the same producer, resolved by the same delivery
  reports, served by the one report thread of the Dispatcher that also serves synchronous waits
  (`Dispatcher._serve_reports`, running only while reports are outstanding); never a thread per
  call. Validation errors still raise at once.
- Kafka refusing the client itself (wrong credentials, no authorization) raises
  `ClientRefused` (both a DispatchError and a protojobs.clients.ClientError) within about a
  second, instead of after librdkafka's retry loop; its message never includes the config.
- A delayed job (`delay`: seconds, "5m", "1h30m" or a timedelta; `at`: an aware datetime; or
  `at_ms`, epoch ms) goes to the delay tier the routing rule
  picks (model.delays); it never runs before its `available_at`.
- Hooks (`engine.hooks`): `before_dispatch` may add options (tracing sets `trace`) before the
  job is built; `after_enqueue` sees every job handed to the producer.
- Inside a running exactly-once job (`RUNNING_JOB`, set by `engine.attempt` while the handler
  runs, in its thread or its coroutine), `dispatch` and `dispatch_many` (and so `Jobs.dispatch`)
  do not produce: they buffer the job into that job's transaction, as `ctx.dispatch` does, and
  return its id; it is published with the commit of the source offset, or never. A Dispatcher
  whose settings name another cluster cannot join that transaction and raises DispatchError,
  as does a dispatch after the job's attempt ended (a thread or task it left running).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from protojobs.config import PayloadError, QueueSettings, Settings, payload_validator
from protojobs.engine.hooks import Hooks, HookSet
from protojobs.kafka import admin
from protojobs.kafka.clients import ClientError, ErrorWatch, producer_config
from protojobs.kafka.clock import now_ms
from protojobs.kafka.outbox import Outbox
from protojobs.model import delays, durations, envelope, names

log = logging.getLogger(__name__)


class DispatchError(RuntimeError):
    """The broker did not store the job (definitely)."""


class DeliveryUncertain(DispatchError):
    """The delivery timed out: the job may or may not be stored."""


class ClientRefused(DispatchError, ClientError):
    """Kafka refused the client (bad credentials, no authorization): nothing was stored. A
    DispatchError, so callers that report dispatch failures report this one too."""


class Outcome:
    """One job's delivery, resolved by the producer's delivery report (`delivered`, called on
    whichever thread serves the producer): `done` once known, then `error` None means
    acknowledged. `on_done(outcome)` (futures, await), when set before the record is sent, is
    called once it is known, on the thread serving the report: keep it short (resolve a future)."""

    __slots__ = ("job_id", "error", "done", "on_done", "sender", "waiter")

    def __init__(self, job_id: str, on_done: Callable[[Outcome], None] | None = None) -> None:
        self.job_id = job_id
        self.error: DispatchError | None = None
        self.done = False
        self.on_done = on_done
        self.sender: Dispatcher | None = None  # set by `Dispatcher.send`: counts reports
        self.waiter: threading.Lock | None = None  # held by a thread in `wait_done`, released when known

    def delivered(self, err: KafkaError | None, _msg: Any = None) -> None:
        """The delivery report (librdkafka's (error, message) callback is this bound method: no
        closure per job)."""
        sender = self.sender
        if sender is not None:
            sender._reported(self)
        if not self.done:  # else already failed: the client was refused, or a wait timed out
            self.finish(None if err is None else delivery_error(err))

    def finish(self, error: DispatchError | None) -> None:
        """Resolve the outcome once (later calls are ignored): wake its waiter, call `on_done`."""
        if self.done:
            return
        self.error = error
        self.done = True
        waiter = self.waiter
        if waiter is not None:
            waiter.release()
        if self.on_done is not None:
            self.on_done(self)

    def wait_done(self, timeout: float) -> bool:
        """Block until the delivery report arrived (someone must serve the producer: see
        `Dispatcher.wait`) or `timeout` passed; True once known. One waiting thread at a time."""
        if self.done:
            return True
        lock = threading.Lock()
        lock.acquire()
        self.waiter = lock
        if not self.done:  # the report may have come between the check above and now
            lock.acquire(timeout=max(timeout, 0.0))
        self.waiter = None
        return self.done

    def __repr__(self) -> str:
        return f"Outcome({self.job_id!r}, done={self.done}, error={self.error!r})"


class Batch:
    """The deliveries of one `dispatch_many` call (sync or awaited): ONE object whose bound
    `delivered` method is the report of every record it sends, so a bulk dispatch allocates
    nothing per job that outlives the produce call (an `Outcome` per job, kept until the end,
    cost more in the cyclic GC's scans than in its own making). `outcome` resolves once
    every record sent was reported and the batch was `seal`ed; a record refused by the broker is
    matched back to its input index through the id in its value.

    The Dispatcher counts a batch as one outstanding delivery (`Dispatcher._open`, `_closed`),
    not one per record: a record's report takes only the batch's own lock."""

    __slots__ = ("outcome", "ids", "indexes", "errors", "failed", "sent", "reported", "sealed", "lock", "sender")

    def __init__(self, on_done: Callable[[Outcome], None] | None = None, sender: Dispatcher | None = None) -> None:
        self.outcome = Outcome("", on_done)
        self.ids: list[str] = []  # of each job sent (or joined to a transaction), in input order
        self.indexes: list[int] = []  # the input index of each of `ids`
        self.errors: dict[int, DispatchError] = {}  # input index -> why it was not sent
        self.failed: list[tuple[bytes | None, DispatchError]] = []  # (record value, error) of refused deliveries
        self.sent = 0  # records produced (each gets one report)
        self.reported = 0
        self.sealed = False  # every record is produced: `sent` is final
        self.lock = threading.Lock()
        self.sender = sender  # told once the batch is complete

    def delivered(self, err: KafkaError | None, msg: Any = None) -> None:
        """librdkafka's delivery report, for every record of the batch."""
        if err is not None:
            self.failed.append((msg.value() if msg is not None else None, delivery_error(err)))
        with self.lock:
            self.reported += 1
            last = self.sealed and self.reported == self.sent
        if last:
            self._complete()

    def seal(self) -> None:
        """No more records: the outcome resolves once the last report is in (now, if it is)."""
        with self.lock:
            self.sealed = True
            last = self.reported == self.sent
        if last:
            self._complete()

    @property
    def unreported(self) -> int:
        return self.sent - self.reported

    def _complete(self) -> None:
        if self.sender is not None:
            self.sender._closed(self)
        self.outcome.finish(None)

    def result(self) -> BulkResult:
        """Ids of the acknowledged jobs, errors by input index of the others. After a wait that
        gave up (`outcome.error`), every job not known to be refused carries that error; so does
        every job not matched to a refusal when a refused record's id could not be read back."""
        result = BulkResult(errors=dict(self.errors))
        refused: dict[int, DispatchError] = {}
        unknown = self.outcome.error
        if self.failed:
            positions: dict[str, list[int]] = {}
            for at, job_id in enumerate(self.ids):
                positions.setdefault(job_id, []).append(at)
            for value, failure in self.failed:
                failed_id = _id_of(value)
                if failed_id is not None and positions.get(failed_id):
                    refused[positions[failed_id].pop(0)] = failure
                elif unknown is None:
                    unknown = DeliveryUncertain(f"a record of this batch was refused ({failure}) and could not be "
                                                "matched to its job: this one may be it")
        for at, (job_id, index) in enumerate(zip(self.ids, self.indexes, strict=True)):
            error: DispatchError | None = refused.get(at, unknown)
            if error is None:
                result.ids.append(job_id)
            else:
                result.errors[index] = error
        return result


def _id_of(value: bytes | None) -> str | None:
    try:
        return envelope.decode(value).id
    except envelope.EnvelopeError:
        return None


@dataclass
class BulkResult:
    ids: list[str] = field(default_factory=list)
    errors: dict[int, DispatchError] = field(default_factory=dict)  # input index -> error

    @property
    def ok(self) -> bool:
        return not self.errors


class JobTransaction:
    """The transaction of the exactly-once job running in this context: `add(envelope, topic)`
    buffers a record to publish with the commit of the job's source offset."""

    def __init__(self, brokers: str, add: Callable[[envelope.Envelope, str], None], job_id: str) -> None:
        self.brokers = _bootstrap(brokers)
        self._add = add
        self.job_id = job_id
        self.closed = False

    def add(self, env: envelope.Envelope, topic: str) -> None:
        if self.closed:
            raise DispatchError(f"job {self.job_id} has finished: a dispatch made after it (from a thread or task it "
                                "left running) can no longer join its exactly-once transaction; nothing was sent")
        self._add(env, topic)

    def close(self) -> None:
        self.closed = True


RUNNING_JOB: ContextVar[JobTransaction | None] = ContextVar("protojobs_running_job", default=None)


def _bootstrap(brokers: str) -> frozenset[str]:
    return frozenset(b.strip() for b in brokers.split(",") if b.strip())


def delivery_error(err: KafkaError) -> DispatchError:
    if err.code() == KafkaError._MSG_TIMED_OUT:
        return DeliveryUncertain(f"delivery not confirmed in time (the job may be stored): {err.str()}")
    return DispatchError(f"the broker refused the job: {err.str()}")


def queue_of(settings: Settings, name: str) -> QueueSettings:
    try:
        return settings.queues[name]
    except KeyError:
        known = ", ".join(sorted(settings.queues))
        raise DispatchError(f"unknown queue {name!r} (jobs.toml declares: {known})") from None


def build(settings: Settings, queue: str, data: Any, *, job: str | None = None, key: str | None = None,
          delay: durations.Delay | None = None, at: datetime | None = None, at_ms: int | None = None,
          job_id: str | None = None, now: int | None = None, trace: str | None = None,
          delay_ms: int | None = None) -> envelope.Envelope:
    """`Dispatcher.build` without a Dispatcher (no I/O): also what eager mode runs. `delay_ms` is
    deprecated (one release): pass `delay` (seconds, "5m", a timedelta) or `at` (aware datetime)."""
    plan = Plan(settings, queue, job=job, delay=delay, at=at, at_ms=at_ms, delay_ms=delay_ms)
    return plan.build(data, key=key, job_id=job_id, now=now, trace=trace)


PLAN_OPTIONS = frozenset({"job", "delay", "at", "at_ms", "delay_ms"})  # Plan's: the same for every job of a batch
JOB_OPTIONS = frozenset({"key", "job_id", "now", "trace"})  # Plan.build's: one job's


_NONE: dict[str, Any] = {}  # no options (never changed: only ever unpacked)


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Dispatch options as (Plan's, Plan.build's); TypeError naming any other."""
    if not options:
        return _NONE, _NONE
    unknown = options.keys() - PLAN_OPTIONS - JOB_OPTIONS
    if unknown:
        raise TypeError(f"unexpected dispatch option(s): {', '.join(sorted(unknown))}")
    return ({k: v for k, v in options.items() if k in PLAN_OPTIONS},
            {k: v for k, v in options.items() if k in JOB_OPTIONS})


class Plan:
    """What building a job takes from its queue and the call's options rather than from its
    payload (queue, validator, job name, key rule, delay), worked out once: once per
    `dispatch_many` call (not per job), once per `dispatch`. `build` does the per-job part."""

    __slots__ = ("settings", "queue", "validate", "job", "key_field", "by_key", "delay", "at", "at_ms", "delayed",
                 "options")

    def __init__(self, settings: Settings, queue: str, *, job: str | None = None,
                 delay: durations.Delay | None = None, at: datetime | None = None, at_ms: int | None = None,
                 delay_ms: int | None = None) -> None:
        spec = queue_of(settings, queue)
        self.settings, self.queue = settings, queue
        self.options = (job, delay, at, at_ms, delay_ms)
        self.validate = payload_validator(spec)
        self.job = _job_name(spec, job)
        self.key_field, self.by_key = spec.key, spec.ordering == "key"
        self.delayed = delay is not None or at is not None or at_ms is not None or delay_ms is not None
        if self.delayed:
            if delay_ms is not None:
                warnings.warn("delay_ms= is deprecated and goes in the next release: pass delay= (seconds, a "
                              "duration such as \"5m\", or a timedelta) or at= (an aware datetime)",
                              DeprecationWarning, stacklevel=_caller_level())
            if (delay is not None) + (delay_ms is not None) + (at is not None) + (at_ms is not None) > 1:
                raise ValueError("give one of delay=, at= (or at_ms=), not several")
        self.delay = delay if delay_ms is None else delay_ms / 1000
        self.at, self.at_ms = at, at_ms

    def same(self, options: Mapping[str, Any]) -> bool:
        """True when `options` (Plan's, from `split_options`) are the ones this plan was made of."""
        get = options.get
        return self.options == (get("job"), get("delay"), get("at"), get("at_ms"), get("delay_ms"))

    def build(self, data: Any, *, key: str | None = None, job_id: str | None = None, now: int | None = None,
              trace: str | None = None) -> envelope.Envelope:
        """Validate `data` and wrap it: PayloadError / DispatchError; a delay or `at` that is not
        one (`model.durations.delay_ms`) raises ValueError / TypeError."""
        self.validate(data)
        field_name = self.key_field
        if key is None and field_name is not None and isinstance(data, Mapping) and data.get(field_name) is not None:
            key = str(data[field_name])
        if self.by_key and key is None:
            raise PayloadError(f"data.{field_name}: queue {self.queue!r} orders by key {field_name!r}; "
                               "the payload must have it")
        now = now_ms() if now is None else now
        due = now
        if self.delayed:
            due = self.at_ms if self.at_ms is not None else durations.due_ms(now, self.delay, self.at)
            if due > now and not self.settings.tiers_ms:
                raise DispatchError("a delayed job needs delay tiers: add [delays] tiers to jobs.toml")
        return envelope.new_envelope(self.queue, self.job, data, now_ms=now, available_at=due, key=key,
                                     id=job_id, trace=trace)


def _caller_level() -> int:
    """The `stacklevel` of a warning about the user's call: the first frame outside protojobs."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("protojobs."):
        frame, level = frame.f_back, level + 1
    return level


def _job_name(q: QueueSettings, job: str | None) -> str:
    if q.jobs:
        names = _job_names(q.jobs)
        if job is None and len(q.jobs) == 1:
            return q.jobs[0].rsplit(":", 1)[-1]
        if job not in names and job not in q.jobs:
            raise DispatchError(f"job {job!r} is not on queue {q.name!r}'s jobs list ({', '.join(names)})")
        return str(job).rsplit(":", 1)[-1]
    return job or (q.handler or q.name)


@functools.lru_cache(maxsize=1024)
def _job_names(jobs: tuple[str, ...]) -> dict[str, str]:
    """{job name: target} of a queue's jobs list, computed once per list (callers never mutate it)."""
    return {target.rsplit(":", 1)[-1]: target for target in jobs}


class Dispatcher:
    """Sends jobs to the queues of one Settings. Thread-safe; one per process is enough."""

    def __init__(self, settings: Settings, producer: Producer | None = None, ensure_topics: bool = True,
                 hooks: Iterable[Hooks] = (), **producer_extra: Any) -> None:
        self.settings = settings
        self.watch = ErrorWatch()
        self.producer = producer or Producer(producer_config(settings.kafka, self.watch, **producer_extra))
        self.outbox = Outbox(self.producer)
        self.hooks = hooks if isinstance(hooks, HookSet) else HookSet(hooks)
        self._unreported = 0  # records sent one by one (`send`) whose delivery report has not arrived
        self._batches: set[Batch] = set()  # open batches (`send_many`): each counts as one outstanding delivery
        self._count_lock = threading.Lock()  # guards _unreported, _batches, _awaited and _polling
        self._polling = False  # a report thread serves the producer (`_serve_reports`)
        self._awaited: set[Outcome] = set()  # deliveries a future or an await waits for
        self._ensure = ensure_topics
        self._lock = threading.Lock()
        self._queue_topics: dict[str, str] = {}

    # --- building records --------------------------------------------------------------------

    def queue(self, name: str) -> QueueSettings:
        return queue_of(self.settings, name)

    def build(self, queue: str, data: Any, *, job: str | None = None, key: str | None = None,
              delay: durations.Delay | None = None, at: datetime | None = None, at_ms: int | None = None,
              job_id: str | None = None, now: int | None = None, trace: str | None = None,
              delay_ms: int | None = None) -> envelope.Envelope:
        """Validate and wrap one job (no I/O). Raises PayloadError / DispatchError; a delay or
        `at` that is not one (`model.durations.delay_ms`) raises ValueError / TypeError."""
        return build(self.settings, queue, data, job=job, key=key, delay=delay, at=at, at_ms=at_ms,
                     job_id=job_id, now=now, trace=trace, delay_ms=delay_ms)

    def prepare(self, queue: str, data: Any, **options: Any) -> tuple[envelope.Envelope, str]:
        """Hooks, then `build`, then the destination topic: a job ready to produce (no I/O)."""
        env, topic, _plan = self.prepare_reusing(queue, data, options, None)
        return env, topic

    def prepare_reusing(self, queue: str, data: Any, options: dict[str, Any],
                 plan: Plan | None) -> tuple[envelope.Envelope, str, Plan]:
        """`prepare` reusing `plan` (the previous job's, in a batch) while the options it was made
        of stand: hooks may change them per job (`before_dispatch` gets `options` itself)."""
        hooks = self.hooks
        if hooks:
            hooks.before_dispatch(queue, data, options)
        plan_options, job_options = split_options(options)
        if plan is None or not plan.same(plan_options):
            plan = Plan(self.settings, queue, **plan_options)
        env = plan.build(data, **job_options)
        topic = self.topic_for(env, env.dispatched_at)  # built just now: its dispatch time is now
        if hooks:
            hooks.after_enqueue(env, topic)
        return env, topic, plan

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

    def joined(self) -> JobTransaction | None:
        """The transaction of the exactly-once job this code runs in, if any (the module says
        when); DispatchError when this Dispatcher cannot join it (another cluster)."""
        txn = RUNNING_JOB.get()
        if txn is not None and _bootstrap(self.settings.kafka.brokers) != txn.brokers:
            raise DispatchError(
                f"job {txn.job_id} runs in an exactly-once queue, and this dispatch goes to other brokers "
                f"({self.settings.kafka.brokers}) than its transaction: it cannot be published atomically with "
                "the job; nothing was sent (dispatch to the worker's cluster, or outside the job)")
        return txn

    def deliver(self, env: envelope.Envelope, topic: str, txn: JobTransaction | None) -> None:
        """Send `env` to `topic` and wait for the broker's ack (raising its DispatchError); with
        `txn` (see `joined`), buffer it in that job's transaction instead."""
        if txn is not None:
            self._ensure_topics()
            txn.add(env, topic)
            return
        outcome = Outcome(env.id)
        self.send(env, outcome, topic)
        self.wait([outcome])
        if outcome.error is not None:
            raise outcome.error

    def _ensure_topics(self) -> None:
        if self._ensure:
            try:
                admin.ensure_topics(self.settings)
            except ClientError as err:
                raise ClientRefused(str(err)) from None
            self._ensure = False

    def send(self, env: envelope.Envelope, outcome: Outcome, topic: str | None = None) -> None:
        """Produce one envelope to `topic` (default: where `topic_for` routes it now); `outcome`
        is filled by the delivery report (served by the report thread, see `wait`).

        The one internal path every send takes (dispatch, dispatch_many, submit, await,
        `dispatch --file`): a prepared envelope in, a resolved `Outcome` out; the delivery report
        is the Outcome's own bound method (no closure per job). A record refused before it was
        queued (e.g. too large) raises here and leaves nothing outstanding: it is counted (and,
        with `on_done`, awaited) only once produced. Unreported records are counted by `close`."""
        outcome.sender = self
        self._produce(env, topic or self.topic_for(env, now_ms()), outcome.delivered, outcome)

    def _produce(self, env: envelope.Envelope, topic: str, report: Callable[[KafkaError | None, Any], None],
                 outcome: Outcome | None) -> None:
        """Produce `env` with `report` as its delivery report, resolving `outcome` (None: a
        record of an open Batch, counted by the batch itself)."""
        if self._ensure:
            self._ensure_topics()
        key = envelope.text_bytes(env.key) if env.key is not None else None
        value = envelope.encode(env)
        if outcome is None:
            self.outbox.produce(topic, value, key, envelope.headers(env), report)
            return
        if outcome.on_done is None:
            self.outbox.produce(topic, value, key, envelope.headers(env), report)
            with self._count_lock:  # after the produce: a record it refused is never reported
                self._unreported += 1
            return
        with self._count_lock:  # nobody polls for this one: awaited, and the report thread runs
            self._unreported += 1
            self._awaited.add(outcome)
            start = not self._polling
            self._polling = True
        if start:
            self._start_report_thread()
        try:
            self.outbox.produce(topic, value, key, envelope.headers(env), report)
        except BaseException:  # refused before it was queued (e.g. too large): no report will come
            with self._count_lock:
                self._unreported -= 1
                self._awaited.discard(outcome)
            raise

    def _reported(self, outcome: Outcome) -> None:
        """The delivery report of a record sent by `send` came: `outcome` is no longer awaited."""
        with self._count_lock:
            self._unreported -= 1
            if outcome.on_done is not None:
                self._awaited.discard(outcome)

    def _open(self, batch: Batch) -> None:
        """`batch` is about to send: one outstanding delivery (awaited when it has `on_done`)
        until `_closed`; an awaited one starts the report thread (nobody else polls for it)."""
        with self._count_lock:
            self._batches.add(batch)
            start = batch.outcome.on_done is not None and not self._polling
            if batch.outcome.on_done is not None:
                self._awaited.add(batch.outcome)
                self._polling = True
        if start:
            self._start_report_thread()

    def _closed(self, batch: Batch) -> None:
        """Every record of `batch` was reported."""
        with self._count_lock:
            self._batches.discard(batch)
            self._awaited.discard(batch.outcome)

    def _serve_reports(self) -> None:
        """Make sure a report thread serves the producer while records await their reports.

        One daemon thread per Dispatcher polls the producer, runs the delivery reports (each
        resolves its Outcome: wakes the thread waiting on it, or calls its `on_done` for a
        future or an await) and ends when none is outstanding: 100 threads calling `dispatch()`
        each wait on their own Outcome instead of all polling the producer (a poll serves
        whichever reports are ready, often another caller's, so the rest slept out their poll
        timeout). The same thread serves `submit` and `dispatch_async`: never a thread per call."""
        with self._count_lock:
            if self._polling:
                return
            self._polling = True
        self._start_report_thread()

    def _start_report_thread(self) -> None:
        threading.Thread(target=self._report_loop, name="protojobs-dispatch-reports", daemon=True).start()

    def _report_loop(self) -> None:
        while True:
            try:
                self.producer.poll(0.05)
            except Exception:  # noqa: BLE001 - a report callback's bug (on_done) must not stop the others
                log.exception("serving delivery reports failed")
            with self._count_lock:
                refused = self.watch.fatal is not None
                if (self._unreported <= 0 and not self._batches) or refused:
                    self._polling = False
                    break
        if refused:
            self._fail_awaited()

    def _fail_awaited(self) -> None:
        """A refused client fails every awaited delivery (ClientRefused): no report will save them.
        Synchronous waits raise ClientRefused themselves (`wait`)."""
        with self._count_lock:
            awaited, self._awaited = list(self._awaited), set()
        for outcome in awaited:
            outcome.finish(ClientRefused(str(self.watch.fatal)))

    def wait(self, outcomes: Iterable[Outcome], timeout: float | None = None) -> None:
        """Wait until every outcome is known (an outcome whose report does not come in time is
        marked DeliveryUncertain); ClientRefused when Kafka refused the client. The reports are
        served by the report thread (`_serve_reports`), so any number of threads may wait."""
        pending = [o for o in outcomes if not o.done]
        limit = timeout if timeout is not None else self._delivery_timeout()
        deadline = time.monotonic() + limit
        i = 0
        while i < len(pending):
            if pending[i].done:
                i += 1
                continue
            if self.watch.fatal is not None:
                raise ClientRefused(str(self.watch.fatal))
            left = deadline - time.monotonic()
            if left <= 0:
                for o in pending[i:]:
                    o.finish(DeliveryUncertain(f"no delivery report within {limit:.0f}s"))
                return
            self._serve_reports()
            pending[i].wait_done(min(left, 0.05))

    def _delivery_timeout(self) -> float:
        conf = self.settings.kafka.producer
        return float(conf.get("message.timeout.ms", 300_000)) / 1000 + 5

    def dispatch(self, queue: str, data: Any, **options: Any) -> str:
        """Send one job and wait for the broker's ack (inside an exactly-once job: buffer it in
        the job's transaction); return its id."""
        txn = self.joined()
        env, topic = self.prepare(queue, data, **options)
        self.deliver(env, topic, txn)
        return env.id

    def dispatch_many(self, queue: str, items: Iterable[Any], **options: Any) -> BulkResult:
        """Send many jobs at producer speed, then wait once (inside an exactly-once job: buffer
        them in the job's transaction). Invalid payloads are reported per index and not sent;
        the others are sent."""
        batch = self.send_many(queue, items, options)
        self.wait([batch.outcome])
        return batch.result()

    def send_many(self, queue: str, items: Iterable[Any], options: Mapping[str, Any],
                  on_done: Callable[[Outcome], None] | None = None) -> Batch:
        """The one loop of `dispatch_many` and `dispatch_many_async`: prepare and produce every
        job (inside an exactly-once job: join its transaction), then seal the batch. Invalid
        payloads, and records the producer refuses before sending (too large), are errors by
        index; the rest is resolved by the batch's delivery reports (`Batch.outcome`).

        The queue, validator, job name and delay of the call are worked out once (`Plan`), and
        the batch's records are counted by the batch, not one by one by the Dispatcher."""
        batch = Batch(on_done, self)
        txn = self.joined()
        report, hooks = batch.delivered, self.hooks
        plan_options, job_options = split_options(options)
        plan: Plan | None = None
        self._open(batch)
        try:
            for index, data in enumerate(items):
                try:
                    if hooks:  # they may change each job's options: `prepare_reusing` sees to it
                        env, topic, plan = self.prepare_reusing(queue, data, dict(options), plan)
                    else:
                        if plan is None:  # one per call (an error making it is every job's error)
                            plan = Plan(self.settings, queue, **plan_options)
                        env = plan.build(data, **job_options)
                        topic = self.topic_for(env, env.dispatched_at)
                    if txn is not None:
                        self.deliver(env, topic, txn)
                    else:
                        self._produce(env, topic, report, None)
                        batch.sent += 1
                except (PayloadError, DispatchError) as err:
                    batch.errors[index] = err if isinstance(err, DispatchError) else DispatchError(str(err))
                    continue
                except KafkaException as exc:  # refused before it was queued: too large, unknown topic...
                    batch.errors[index] = DispatchError(f"the producer refused the job: {exc.args[0].str()}")
                    continue
                batch.ids.append(env.id)
                batch.indexes.append(index)
                if on_done is None and batch.sent % 10_000 == 0:
                    self.producer.poll(0)  # nobody else serves reports yet: keep their queue short
        finally:
            batch.seal()  # even when the loop raised (a bad option, a hook's bug): the batch must end
        return batch

    # --- futures and await: the same producer and delivery reports, the same report thread ---

    def submit(self, queue: str, data: Any, **options: Any) -> Future[str]:
        """`dispatch` without waiting: a Future of the job's id (`engine.awaited.submit`)."""
        from protojobs.engine import awaited
        return awaited.submit(self, queue, data, **options)

    async def dispatch_async(self, queue: str, data: Any, **options: Any) -> str:
        """`dispatch` for an event loop: the loop runs on while the broker acknowledges."""
        return await asyncio.wrap_future(self.submit(queue, data, **options))

    async def dispatch_many_async(self, queue: str, items: Iterable[Any], **options: Any) -> BulkResult:
        """`dispatch_many` for an event loop: every job produced, then one await for all reports."""
        from protojobs.engine import awaited
        return await awaited.dispatch_many(self, queue, items, **options)

    def close(self, timeout: float = 30) -> int:
        """Flush what is still buffered; return how many records could not be delivered.
        A refused client cannot deliver anything: its buffer is dropped instead of waited out."""
        if self.watch.fatal is not None:
            with self._count_lock:  # records only (len(producer) also counts requests)
                undelivered = self._unreported + sum(batch.unreported for batch in self._batches)
            self._fail_awaited()
            self.producer.purge()
            self.producer.flush(1)  # serves the purged records' delivery reports
            return undelivered
        return int(self.producer.flush(timeout))
