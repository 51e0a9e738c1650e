"""One job's attempt, on the lane thread that runs it: the handler, its context, and ONE failure decision.

`Attempt.run` builds the handler's `Context`, calls the hooks and the handler, and turns the
outcome into a `Result` the consume loop only has to apply:
- success: `Result.move` is None; the loop marks the offset finished (exactly-once: with the
  records the handler dispatched through `ctx.dispatch`, or through any Dispatcher or the
  `Jobs` facade: while an exactly-once handler runs, `dispatch.RUNNING_JOB` holds this job's
  transaction, in the handler's thread and in its coroutine);
- failure: `decide` applies the queue's retry policy (the Job's `max_retries` where jobs.toml
  sets no `max_attempts`), `RetryLater`, `PermanentError`, `dead_letter_on` / `retry_on` and the
  Job's `should_retry`. With `blocking_retries` a retry waits out its backoff right here (this
  key or partition waits, others flow) with the job's timeout suspended meanwhile, then runs
  again. Otherwise the decision becomes a `Move`: the retry copy for the delay tier the routing
  rule picks, or the dead-letter copy (after the Job's `failed` hook). The loop publishes the
  move and marks the offset finished once the broker acknowledged it.

Every copy fits the producer's `message.max.bytes`: a retry copy that would not (a job just
under the limit grows by a few bytes) becomes a dead-letter copy, and a dead-letter copy is
cut to fit (`model.dead_letter`: metadata kept, payload truncated with a marker).

User code (handler, `should_retry`, `failed`, hooks) therefore runs on lane threads, never on
the thread that polls Kafka.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import random
import socket
import time
import traceback
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from protojobs.config import QueueSettings, RetryPolicy, Settings
from protojobs.config.handlers import import_target, is_job_class
from protojobs.engine.dispatch import RUNNING_JOB, JobTransaction
from protojobs.kafka.clients import max_message_bytes
from protojobs.kafka.clock import now_ms
from protojobs.kafka.outbox import record_size
from protojobs.kafka.transactions import Output
from protojobs.model import delays, envelope, names, retry
from protojobs.model.dead_letter import MAX_RECORD, bound_text, dead_letter_record
from protojobs.model.envelope import Envelope

if TYPE_CHECKING:
    from protojobs.engine.dispatch import Dispatcher
    from protojobs.engine.hooks import HookSet
    from protojobs.engine.lanes import EventLoop

log = logging.getLogger(__name__)
HOST = socket.gethostname()
WAITING, RUNNING, DONE, TIMED_OUT, DROPPED = range(5)


class Context(msgspec.Struct, frozen=True):
    """What a handler may take as its second argument (immutable; a compiled Struct, made per
    attempt: ~10x cheaper than a frozen dataclass)."""

    id: str
    attempt: int
    queue: str
    key: str | None
    deadline: float  # epoch seconds: a long job should check it and stop in time
    job: str
    topic: str
    partition: int
    offset: int
    available_at: int = 0  # epoch ms: the job was due then (it never starts earlier)
    dispatcher: Callable[..., str] | None = None

    def dispatch(self, queue: str, data: Any, **options: Any) -> str:
        """Dispatch a follow-up job; in an exactly-once queue it is published atomically with
        this job's completion. Returns the new job's id."""
        if self.dispatcher is None:
            raise RuntimeError("this context cannot dispatch")
        return self.dispatcher(queue, data, **options)

    @property
    def remaining(self) -> float:
        return self.deadline - time.time()


@dataclass(slots=True, eq=False)
class JobRun:
    """One record being worked on by this process."""

    topic: str
    partition: int
    offset: int
    env: Envelope
    generation: int
    chain: Hashable | None
    state: int = WAITING
    started: float = 0.0  # monotonic
    deadline: float = 0.0  # monotonic
    outputs: list[Output] = field(default_factory=list)  # exactly-once: published on success
    decided: Result | None = None  # its failure, decided while the handler's failed() runs


@dataclass(slots=True)
class Move:
    """A record the loop publishes for a finished source record: its retry or dead-letter copy."""

    target: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    dead: bool
    reason: str = ""


@dataclass(slots=True)
class Result:
    run: JobRun
    error: BaseException | None
    value: Any
    duration: float
    move: Move | None = None


class Handler:
    """A resolved `handler = "module:callable"` (function, coroutine function or Job class), or a
    job object (`App.job`: it has `handle`, used as a Job instance). A Job instance may offer
    `max_retries`, `should_retry(attempts, error)` and `failed(error, data)` (protojobs.Job has
    them); they are looked up by name, so the engine needs no Job type."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.instance: Any = target() if is_job_class(target) else target if _job_object(target) else None
        func = self.instance.handle if self.instance is not None else target
        self.func = func
        self.is_async = inspect.iscoroutinefunction(func)
        self.takes_context = _positional_count(func) >= 2

    @classmethod
    def load(cls, target: str) -> Handler:
        obj, why = import_target(target)
        if why is not None:
            raise ImportError(why)
        return cls(obj)

    def __call__(self, data: Any, ctx: Context | None) -> Any:
        return self.func(data, ctx) if self.takes_context else self.func(data)

    def policy(self, policy: RetryPolicy) -> RetryPolicy:
        """The queue's policy; a Job class's `max_retries` counts total attempts unless jobs.toml
        sets `max_attempts` (`policy.max_attempts_declared`)."""
        retries = getattr(self.instance, "max_retries", None)
        if policy.max_attempts_declared or not isinstance(retries, int) or isinstance(retries, bool):
            return policy
        return dataclasses.replace(policy, max_attempts=max(1, retries))

    def should_retry(self, attempts: int, error: BaseException) -> bool:
        """The Job's verdict on a retry; one that raises is logged and ignored."""
        hook = getattr(self.instance, "should_retry", None)
        if hook is None:
            return True
        try:
            return bool(hook(attempts, error))
        except Exception:  # noqa: BLE001 - a broken hook must not crash the worker
            log.exception("should_retry of %r raised; the retry policy decides", self.target)
            return True

    def failed(self, error: BaseException, data: Any, loop: Callable[[], EventLoop]) -> None:
        """The Job's `failed` hook (sync or async), once on dead-lettering; errors are logged."""
        hook = getattr(self.instance, "failed", None)
        if hook is None:
            return
        try:
            result = hook(error, data)
            if inspect.iscoroutine(result):
                loop().run(result, 60.0)
        except Exception:  # noqa: BLE001 - a broken hook must not crash the worker
            log.exception("the failed() hook of %r raised", self.target)


def handlers_of(queue: QueueSettings, given: Mapping[str, Handler] | None = None) -> dict[str, Handler]:
    """A queue's handlers, by job name ("*": its one `handler`): those jobs.toml names, and those
    `given` (an App's decorated jobs), which win and whose names in `jobs` are not imported."""
    given = given or {}
    if queue.handler:
        return {"*": Handler.load(queue.handler), **given}
    declared = {}
    for target in queue.jobs:
        name = target.rsplit(":", 1)[-1]
        if name not in given:
            declared[name] = Handler.load(target)
    return {**declared, **given}


def _job_object(obj: Any) -> bool:
    """A job object (`protojobs.App.job`'s): not a class, with a callable `handle` and the
    optional `max_retries` / `should_retry` / `failed` of a Job instance."""
    return not inspect.isclass(obj) and callable(getattr(obj, "handle", None))


def _positional_count(func: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


class Timer(Protocol):
    """The lane's clock over a running job: suspend its timeout while it waits, then re-arm it.
    `waits_in_place` False: a blocking retry is not slept out here (eager mode records it)."""

    waits_in_place: bool

    def hold(self, run: JobRun) -> bool: ...

    def rearm(self, run: JobRun) -> None: ...


class Attempt:
    """Runs attempts for the queues of one worker (shared by its lanes; thread-safe)."""

    def __init__(self, settings: Settings, queues: dict[str, QueueSettings], hooks: HookSet,
                 loop: Callable[[], EventLoop], dispatcher: Callable[[], Dispatcher],
                 transactional: Callable[[str], bool], max_bytes: int | None = None) -> None:
        self.settings = settings
        self.queues = queues  # topic -> queue
        self.hooks = hooks
        self.loop = loop
        self.dispatcher = dispatcher
        self.transactional = transactional
        self.rng = random.Random()
        self.prefix = settings.kafka.topic_prefix
        self.max_bytes = max_bytes or max_message_bytes(settings.kafka)  # every copy fits in it

    def run(self, job: JobRun, handler: Handler | None, timer: Timer) -> Result:
        started = time.perf_counter()
        if handler is None:
            error = LookupError(f"job {job.env.job!r} is not on queue {self.queues[job.topic].name!r}'s jobs list")
            return self.failed(job, error, None, started)
        hooks = self.hooks
        while True:
            # The Context is made only for whoever takes it: the handler, or a before_process hook.
            watched = hooks.wants("before_process")
            ctx = self._context(job) if watched or handler.takes_context else None
            if ctx is not None and watched:
                hooks.before_process(job.env, ctx)
            try:
                value = self._call(job, handler, ctx)
                if 0 < job.deadline < time.monotonic():
                    # It ran past its timeout, and the loop did not declare it timed out in time
                    # (it checks on each pass, and a pass may wait on the broker, e.g. for a
                    # transaction's commit): it failed all the same, its late return changes nothing.
                    raise TimeoutError(f"handler ran past its timeout of {self.queues[job.topic].timeout_ms / 1000:g}s")
            except BaseException as exc:  # noqa: BLE001 - the job's failure, never the worker's
                decision = self.decide(job, exc, handler)
                if isinstance(decision, retry.Retry) and self.queues[job.topic].blocking_retries \
                        and timer.waits_in_place and self._wait_in_place(job, exc, decision, timer):
                    continue
                if not timer.hold(job):  # timed out meanwhile: the thread replacing this one decides
                    return Result(job, exc, None, time.perf_counter() - started)
                return self.failed(job, exc, handler, started, decision, timer)
            duration = time.perf_counter() - started
            if hooks.wants("after_process"):
                hooks.after_process(job.env, value, duration)
            return Result(job, None, value, duration)

    def _call(self, job: JobRun, handler: Handler, ctx: Context | None) -> Any:
        txn = self._job_transaction(job)
        if handler.is_async:
            coro = handler(job.env.data, ctx)
            try:
                return self.loop().run(coro if txn is None else _joining(txn, coro),
                                       self.queues[job.topic].timeout_ms / 1000)
            finally:
                if txn is not None:
                    txn.close()
        if txn is None:  # a lane thread's RUNNING_JOB is None outside exactly-once attempts
            return handler(job.env.data, ctx)
        token = RUNNING_JOB.set(txn)
        try:
            return handler(job.env.data, ctx)
        finally:
            RUNNING_JOB.reset(token)
            txn.close()

    def _job_transaction(self, job: JobRun) -> JobTransaction | None:
        """What every dispatch made while this attempt runs joins (exactly-once queues only)."""
        if not self.transactional(job.topic):
            return None
        return JobTransaction(self.settings.kafka.brokers, functools.partial(self._buffer, job), job.env.id)

    def _context(self, job: JobRun) -> Context:
        env = job.env
        deadline = time.time() + self.queues[job.topic].timeout_ms / 1000
        return Context(env.id, env.attempt, env.queue, env.key, deadline, env.job, job.topic, job.partition,
                       job.offset, env.available_at, functools.partial(self._dispatch_from, job))

    def _wait_in_place(self, job: JobRun, error: BaseException, decision: retry.Retry, timer: Timer) -> bool:
        """Blocking retries: sleep the backoff with the timeout suspended (the key keeps its
        order: nothing else of it starts), then re-arm it. False when the job timed out meanwhile."""
        self.hooks.after_failure(job.env, error, False)
        if not timer.hold(job):
            return False
        time.sleep(decision.delay_ms / 1000)
        job.env = envelope.with_attempt(job.env, job.env.attempt + 1, decision.available_at, failed_at=now_ms())
        job.outputs.clear()  # a failed attempt's dispatches are never published
        timer.rearm(job)
        return True

    def decide(self, job: JobRun, error: BaseException, handler: Handler | None) -> retry.Retry | retry.DeadLetter:
        """The one failure decision, for blocking and tier retries alike."""
        q = self.queues[job.topic]
        policy = self.settings.retry[q.retry]
        if handler is not None:
            policy = handler.policy(policy)
        decision = retry.decide(policy, job.env.attempt, error, now_ms(), self.rng)
        if isinstance(decision, retry.Retry) and handler is not None and \
                not handler.should_retry(job.env.attempt, error):
            return retry.DeadLetter("should_retry returned False")
        return decision

    def failed(self, job: JobRun, error: BaseException, handler: Handler | None, started: float,
               decision: retry.Retry | retry.DeadLetter | None = None, timer: Timer | None = None) -> Result:
        """The result of a failed attempt: its retry copy, or its dead-letter copy. The handler's
        `failed()` runs once, after the copy is decided, with a timeout of its own (`timer`
        re-armed): if it overruns, the lane's replacement thread publishes this same result
        (`job.decided`) instead of deciding the failure again."""
        q = self.queues[job.topic]
        decision = decision or self.decide(job, error, handler)
        tiers = self.settings.tiers_ms
        final = isinstance(decision, retry.DeadLetter) or not tiers
        self.hooks.after_failure(job.env, error, final)
        log.warning("job failed: %s", f"{type(error).__name__}: {error}", extra={
            "queue": q.name, "topic": job.topic, "partition": job.partition, "offset": job.offset,
            "job_id": job.env.id, "attempt": job.env.attempt})
        duration = time.perf_counter() - started
        reason = decision.reason if isinstance(decision, retry.DeadLetter) else "no delay tiers to retry through"
        if isinstance(decision, retry.Retry) and tiers:
            now = now_ms()
            nxt = envelope.with_attempt(job.env, job.env.attempt + 1, decision.available_at, failed_at=now)
            tier = delays.next_hop(nxt.available_at, now, tiers)
            target = names.queue_topic(self.prefix, q.name) if tier is None else names.delay_topic(self.prefix, tier)
            try:
                move = Move(target, envelope.encode(nxt), _key(job.env), envelope.headers(nxt), dead=False)
            except envelope.EnvelopeError as exc:  # e.g. a payload nested too deep to encode again
                reason = f"retry copy not encodable: {exc}"
            else:
                size = record_size(move.value, move.key, move.headers)
                if size <= self.max_bytes:
                    return Result(job, error, None, duration, move)
                reason = (f"retry copy refused: MSG_SIZE_TOO_LARGE (the copy is {size} bytes, "
                          f"message.max.bytes is {self.max_bytes})")
        move = dead_letter(job.env, error, reason, job.topic, job.partition, job.offset, job.env.attempt,
                           q.dead_letter_topic, self.max_bytes)
        result = Result(job, error, None, duration, move)
        if handler is not None:
            job.decided = result
            if timer is not None:
                timer.rearm(job)
            handler.failed(error, job.env.data, self.loop)
        return result

    def _dispatch_from(self, job: JobRun, queue: str, data: Any, **options: Any) -> str:
        """`ctx.dispatch(...)`: in an exactly-once queue the job is published with the transaction
        that commits this job (once, whatever happens); elsewhere it is sent at once and
        acknowledged before the handler goes on."""
        dispatcher = self.dispatcher()
        if not self.transactional(job.topic):
            return dispatcher.dispatch(queue, data, **options)
        env, target = dispatcher.prepare(queue, data, **options)
        self._buffer(job, env, target)
        return env.id

    @staticmethod
    def _buffer(job: JobRun, env: Envelope, target: str) -> None:
        """A job dispatched by `job`'s handler, kept to publish with the transaction of its offset."""
        job.outputs.append(Output(job.offset, target, envelope.encode(env), _key(env), envelope.headers(env)))


async def _joining(txn: JobTransaction, coro: Any) -> Any:
    """Run `coro` with `txn` as its RUNNING_JOB: set inside its own task, so it holds whichever
    thread or loop runs the coroutine, and tasks the coroutine creates inherit it."""
    RUNNING_JOB.set(txn)
    return await coro


def _key(env: Envelope) -> bytes | None:
    return envelope.text_bytes(env.key) if env.key is not None else None


def dead_letter(original: Envelope | bytes | None, error: BaseException, reason: str, topic: str,
                partition: int, offset: int, attempts: int, target: str, max_bytes: int = MAX_RECORD) -> Move:
    """The dead-letter copy of a record (its envelope, or its raw value when it did not decode),
    cut to fit `max_bytes` with its key and headers (`model.dead_letter`). Never raises."""
    now = now_ms()
    env = original if isinstance(original, Envelope) else None
    reason = bound_text(reason, 1024)
    key = _key(env) if env is not None and env.key else None
    hdrs = (envelope.headers(env) if env is not None else []) + [("pj-reason", envelope.text_bytes(reason))]
    try:
        text = "".join(traceback.format_exception(error))
        message = str(error)
    except Exception as exc:  # noqa: BLE001 - an exception whose __str__ raises
        text, message = "", f"<{type(error).__qualname__}: str() raised {exc!r}>"
    value = dead_letter_record(
        original, error_type=type(error).__qualname__, error_message=message,
        traceback=text, attempts=attempts,
        first_failed_at=(env.first_failed_at if env and env.first_failed_at else now), failed_at=now,
        topic=topic, partition=partition, offset=offset, host=HOST, reason=reason,
        limit=max_bytes - record_size(None, key, hdrs))
    return Move(target, value, key, hdrs, dead=True, reason=reason)
