"""The consume loop: poll, hand jobs to the lanes, commit only finished jobs (at-least-once).

Commit rule: an offset is committed only when its job and every earlier job of its partition
are finished: done, or their retry / dead-letter copy acknowledged by the broker. Commits run
every `commit_interval` (asynchronously) and synchronously on revoke and on shutdown; nothing is
committed when partitions are lost. A crash therefore re-delivers exactly the unfinished suffix.

Rebalancing: cooperative-sticky. On revoke the loop stops taking the revoked partitions' jobs,
waits (bounded) for their running jobs, commits, and forgets them; their buffered jobs are
dropped unstarted (the next owner gets them from the committed offset).

Shutdown (SIGTERM/SIGINT, `stop()`, or `max_jobs` reached): stop fetching (pause everything),
let running jobs finish, commit, close the consumer (leaving the group). A second signal skips
the wait for running jobs.
"""

from __future__ import annotations

import functools
import logging
import random
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from protojobs.api import jobs as job_hooks
from protojobs.config import PayloadError, QueueSettings, Settings, payload_validator
from protojobs.engine.dispatch import Dispatcher, now_ms
from protojobs.engine.lanes import Context, EventLoop, Handler, Job, Lane, Result
from protojobs.kafka import admin
from protojobs.kafka.clients import (
    ErrorWatch,
    consumer_config,
    fetch,
    producer_config,
    until_reachable,
)
from protojobs.kafka.control import ClearEpochs
from protojobs.kafka.transactions import Fenced, Output, Transactions, rewind_to_committed
from protojobs.model import envelope, names, retry
from protojobs.model.offsets import OffsetTracker

log = logging.getLogger(__name__)
HOST = socket.gethostname()


@dataclass
class Counters:
    done: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.dead + self.retried


@dataclass
class Move:
    """A record this loop produced for a finished source job (retry or dead-letter copy)."""

    job: Job | None
    topic: str
    partition: int
    offset: int
    generation: int
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    target: str
    acked: bool = False
    error: str | None = None


Events = Callable[..., None]


def _no_events(name: str, **fields: Any) -> None:
    return None


@dataclass
class WorkerOptions:
    queues: Sequence[str] | None = None
    max_jobs: int = 0
    commit_interval: float = 1.0
    revoke_wait: float = 10.0
    max_buffer: int = 0  # 0: 4 x the sum of concurrencies, at least 1000
    status: bool = False
    slot: int = 0  # process slot: part of the exactly-once transactional.id
    consumer_extra: dict[str, Any] = field(default_factory=dict)
    producer_extra: dict[str, Any] = field(default_factory=dict)


class Worker:
    """One consumer in the group, running the jobs of `options.queues` (default: all)."""

    def __init__(self, settings: Settings, options: WorkerOptions | None = None, events: Events = _no_events) -> None:
        self.settings = settings
        self.options = options or WorkerOptions()
        self.events = events
        wanted = list(self.options.queues or settings.queues)
        unknown = [n for n in wanted if n not in settings.queues]
        if unknown:
            raise ValueError(f"unknown queue(s) {unknown}; jobs.toml declares {sorted(settings.queues)}")
        prefix = settings.kafka.topic_prefix
        self.queues: dict[str, QueueSettings] = {names.queue_topic(prefix, n): settings.queues[n] for n in wanted}
        self.done: SimpleQueue[Result | Move] = SimpleQueue()
        self._loop: EventLoop | None = None
        self.lanes = {t: Lane(q, self._handlers(q), self.done, self._startable, self._event_loop, self._attempt)
                      for t, q in self.queues.items()}
        self.watch = ErrorWatch()
        self.producer = Producer(producer_config(settings.kafka, self.watch, **self.options.producer_extra))
        self.consumer = Consumer(consumer_config(settings.kafka, self.watch, on_commit=self._on_commit,
                                                 **self.options.consumer_extra))
        self.eo = {t for t, q in self.queues.items() if q.delivery == "exactly_once"}
        self.txn: Transactions | None = None  # made in run(), once Kafka answers
        self._dispatcher: Dispatcher | None = None
        self.epochs: ClearEpochs | None = None
        self.lost_session = False
        self.offsets = OffsetTracker()
        self.generation: dict[tuple[str, int], int] = {}
        self.assigned: set[tuple[str, int]] = set()
        self.revoking: set[tuple[str, int]] = set()
        self.paused = False
        self.counters = Counters()
        self.stopping = 0  # 1: graceful, 2: at once
        self.rng = random.Random()
        self.last_poll = time.monotonic()
        limit = sum(q.concurrency for q in self.queues.values()) * 4
        self.max_buffer = self.options.max_buffer or max(1000, limit)

    # --- handlers -----------------------------------------------------------------------------

    def _handlers(self, q: QueueSettings) -> dict[str, Handler]:
        if q.handler:
            return {"*": Handler.load(q.handler)}
        return {target.rsplit(":", 1)[-1]: Handler.load(target) for target in q.jobs}

    def _event_loop(self) -> EventLoop:
        if self._loop is None:
            self._loop = EventLoop()
        return self._loop

    def _attempt(self, job: Job, handler: Handler) -> tuple[Any, BaseException | None]:
        env = job.env
        q = self.queues[job.topic]
        ctx = Context(env.id, env.attempt, env.queue, env.key, time.time() + q.timeout_ms / 1000,
                      env.job, job.topic, job.partition, job.offset, env.available_at,
                      functools.partial(self._dispatch_from, job))
        self.events("job.processing", job=env, context=ctx)
        while True:
            try:
                if handler.is_async:
                    return self._event_loop().run(handler(job.env.data, ctx), q.timeout_ms / 1000), None
                return handler(job.env.data, ctx), None
            except Exception as exc:
                if not q.blocking_retries:
                    raise
                ctx = self._retry_in_place(job, exc, ctx)

    def _retry_in_place(self, job: Job, error: Exception, ctx: Context) -> Context:
        """Blocking retries: wait out the backoff on this lane thread (this key or partition
        waits, every other one keeps flowing), then run the next attempt. Re-raises when the
        policy dead-letters, so the failure path records the final attempt."""
        q = self.queues[job.topic]
        now = now_ms()
        decision = retry.decide(self.settings.retry[q.retry], job.env.attempt, error, now, self.rng)
        if isinstance(decision, retry.DeadLetter):
            raise error
        self.events("job.failed", job=job.env, error=error, attempts=job.env.attempt, final=False)
        time.sleep(decision.delay_ms / 1000)
        job.env = envelope.with_attempt(job.env, job.env.attempt + 1, decision.available_at, failed_at=now)
        job.deadline = time.monotonic() + q.timeout_ms / 1000
        job.outputs.clear()  # a failed attempt's dispatches are never published
        return Context(job.env.id, job.env.attempt, job.env.queue, job.env.key,
                       time.time() + q.timeout_ms / 1000, job.env.job, job.topic, job.partition, job.offset,
                       job.env.available_at, functools.partial(self._dispatch_from, job))

    def _dispatch_from(self, job: Job, queue: str, data: Any, **options: Any) -> str:
        """`ctx.dispatch(...)` in a handler: in an exactly-once queue the job is published with
        the transaction that commits this job (once, whatever happens); elsewhere it is sent
        at once and acknowledged before the handler goes on."""
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(self.settings)
        if job.topic not in self.eo:
            return self._dispatcher.dispatch(queue, data, **options)
        env = self._dispatcher.build(queue, data, **options)
        target = self._dispatcher.topic_for(env, now_ms())
        job.outputs.append(Output(job.offset, target, envelope.encode(env),
                                  env.key.encode() if env.key is not None else None, envelope.headers(env)))
        return env.id

    def _valid(self, job: Job) -> bool:
        """The job's partition is still ours, as it was when the job was taken."""
        return self.generation.get((job.topic, job.partition)) == job.generation

    def _startable(self, job: Job) -> bool:
        """Valid, and its partition is not being revoked (buffered jobs of it are dropped)."""
        return self._valid(job) and (job.topic, job.partition) not in self.revoking

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> Counters:
        def start() -> None:
            admin.ensure_topics(self.settings)
            if self.eo and self.txn is None:
                self.txn = Transactions(self.settings, self.consumer, self.options.slot, self.watch,
                                        **self.options.producer_extra)

        if not until_reachable(start, lambda: self.stopping > 0, "worker start-up"):
            self._close()
            return self.counters
        self.epochs = ClearEpochs(self.settings, self.watch)
        self.epochs.catch_up()
        self.consumer.subscribe(list(self.queues), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self.events("worker.starting", queues=[q.name for q in self.queues.values()])
        next_commit = time.monotonic() + self.options.commit_interval
        started = time.monotonic()
        try:
            while self.stopping == 0:
                self._poll_once(0.1)
                if time.monotonic() >= next_commit:
                    self._commit(asynchronous=True)
                    next_commit = time.monotonic() + self.options.commit_interval
                    if self.options.status:
                        sys.stderr.write(status_line(self, started))
                        sys.stderr.flush()
                if self.options.max_jobs and self.counters.finished >= self.options.max_jobs:
                    self.stopping = 1
            self._shutdown()
        finally:
            self._close()
        if self.lost_session:
            raise Fenced("the group session of an exactly-once worker expired; stopped so that it "
                         "publishes nothing a newer worker might also publish")
        return self.counters

    def _poll_once(self, timeout: float) -> None:
        self.watch.check()
        busy = self._busy()
        # While jobs run, wake at least every 20 ms to collect their results; a new record wakes
        # the loop at once either way (fetch returns on the first one).
        msgs = fetch(self.consumer, self.settings.kafka.batch_size if not self.paused else 1,
                     min(timeout, 0.02) if busy else timeout) if not self.stopping else []
        self.last_poll = time.monotonic()
        if self.epochs is not None:
            self.epochs.refresh()
        for msg in msgs:
            self._take(msg)
        self.producer.poll(0)
        self._drain(0.0)
        self._expire()
        self._flow_control()

    def _busy(self) -> bool:
        return any(lane.running or lane.buffered for lane in self.lanes.values()) or self.offsets.pending() > 0

    def _take(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", err.str())
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        tp = (topic, partition)
        self.offsets.started(topic, partition, offset)
        q = self.queues[topic]
        try:
            env = envelope.decode(msg.value())
            if self.epochs is not None and self.epochs.cleared(env.queue, env.dispatched_at):
                self.offsets.finished(topic, partition, offset)  # its queue was cleared after dispatch
                return
            if q.validate_on_consume:
                payload_validator(q)(env.data)
        except (envelope.EnvelopeError, PayloadError) as exc:
            self._dead_letter(None, msg.value(), exc, "undecodable record" if isinstance(
                exc, envelope.EnvelopeError) else "payload failed its schema on consume",
                topic, partition, offset, attempts=0, target=q.dead_letter_topic)
            return
        chain: Hashable | None = None
        if q.ordering == "key":
            chain = env.key
        elif q.ordering == "partition":
            chain = tp
        self.lanes[topic].submit(Job(topic, partition, offset, env, self.generation.get(tp, 0), chain))

    def _drain(self, wait: float) -> None:
        """Handle every finished job and acknowledged move waiting in `done`."""
        try:
            item = self.done.get(timeout=wait) if wait else self.done.get_nowait()
        except Empty:
            return
        while True:
            if isinstance(item, Move):
                self._moved(item)
            else:
                self._finished(item)
            try:
                item = self.done.get_nowait()
            except Empty:
                return

    def _finished(self, result: Result) -> None:
        job = result.job
        if not self._valid(job):
            return  # revoked meanwhile: the next owner runs it again
        if result.error is None:
            self.counters.done += 1
            if self.txn is not None and job.topic in self.eo:
                for out in job.outputs:
                    self.txn.add(job.topic, job.partition, out)
            self.offsets.finished(job.topic, job.partition, job.offset)
            self.events("job.processed", job=job.env, result=result.value, duration=result.duration)
            return
        self.counters.failed += 1
        self._failed(job, result.error)

    def _failed(self, job: Job, error: BaseException) -> None:
        q = self.queues[job.topic]
        handlers = self.lanes[job.topic].handlers
        job_obj = job_hooks.job_instance(handlers.get(job.env.job) or handlers.get("*"))  # a jobs.Job, or None
        policy = job_hooks.policy_for(job_obj, self.settings, q.retry)
        now = now_ms()
        decision = retry.decide(policy, job.env.attempt, error, now, self.rng)
        if isinstance(decision, retry.Retry) and not job_hooks.should_retry(job_obj, job.env.attempt, error):
            decision = retry.DeadLetter("should_retry returned False")
        self.events("job.failed", job=job.env, error=error, attempts=job.env.attempt,
                    final=isinstance(decision, retry.DeadLetter))
        log.warning("job failed: %s", f"{type(error).__name__}: {error}", extra={
            "queue": q.name, "topic": job.topic, "partition": job.partition, "offset": job.offset,
            "job_id": job.env.id, "attempt": job.env.attempt})
        if isinstance(decision, retry.Retry) and self.settings.tiers_ms:
            nxt = envelope.with_attempt(job.env, job.env.attempt + 1, decision.available_at, failed_at=now)
            from protojobs.model.delays import next_hop

            tier = next_hop(nxt.available_at, now, self.settings.tiers_ms)
            dest = (names.queue_topic(self.settings.kafka.topic_prefix, q.name) if tier is None
                    else names.delay_topic(self.settings.kafka.topic_prefix, tier))
            self._send(Move(job, job.topic, job.partition, job.offset, job.generation, envelope.encode(nxt),
                            job.env.key.encode() if job.env.key else None, envelope.headers(nxt), dest))
            return
        reason = decision.reason if isinstance(decision, retry.DeadLetter) else "no delay tiers to retry through"
        job_hooks.call_failed(job_obj, error, job.env.data)  # logs, never raises
        self._dead_letter(job, job.env, error, reason, job.topic, job.partition, job.offset,
                          attempts=job.env.attempt, target=q.dead_letter_topic)

    def _dead_letter(self, job: Job | None, original: envelope.Envelope | bytes | None, error: BaseException,
                     reason: str, topic: str, partition: int, offset: int, attempts: int, target: str) -> None:
        now = now_ms()
        env = original if isinstance(original, envelope.Envelope) else None
        tb = "".join(traceback.format_exception(error))
        value = envelope.dead_letter_record(
            original, error_type=type(error).__qualname__, error_message=str(error), traceback=tb,
            attempts=attempts, first_failed_at=(env.first_failed_at if env and env.first_failed_at else now),
            failed_at=now, topic=topic, partition=partition, offset=offset, host=HOST, reason=reason)
        key = env.key.encode() if env is not None and env.key else None
        hdrs = envelope.headers(env) if env is not None else []
        gen = self.generation.get((topic, partition), 0) if job is None else job.generation
        self._send(Move(job, topic, partition, offset, gen, value, key, hdrs + [("pj-reason", reason.encode())], target))

    def _send(self, move: Move) -> None:
        if self.txn is not None and move.topic in self.eo:  # published with the offset's transaction
            self.txn.add(move.topic, move.partition, Output(move.offset, move.target, move.value, move.key,
                                                            move.headers))
            move.acked = True
            self._moved(move)
            return
        def report(err: KafkaError | None, _msg: Message) -> None:
            move.acked, move.error = err is None, None if err is None else err.str()
            self.done.put(move)

        while True:
            try:
                self.producer.produce(move.target, move.value, move.key, headers=cast(Any, move.headers), on_delivery=report)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _moved(self, move: Move) -> None:
        """A retry or dead-letter copy was acknowledged (or failed: send it again)."""
        if not move.acked:
            log.warning("re-sending to %s after a failed delivery: %s", move.target, move.error)
            self._send(move)
            return
        if self.generation.get((move.topic, move.partition)) != move.generation:
            return
        self.offsets.finished(move.topic, move.partition, move.offset)
        env, queue = (move.job.env if move.job else None), self.queues[move.topic].name
        if move.target.endswith("dead-letter") or move.job is None or move.target == self.queues[move.topic].dead_letter_topic:
            self.counters.dead += 1
            self.events("job.dead_lettered", job=env, queue=queue, target=move.target)
        else:
            self.counters.retried += 1
            self.events("job.retried", job=env, queue=queue, target=move.target)

    def _expire(self) -> None:
        now = time.monotonic()
        for lane in self.lanes.values():
            if lane.running:
                lane.expire(now)

    def _flow_control(self) -> None:
        """Pause fetching while too many jobs wait; resume below half. Polling never stops."""
        buffered = sum(lane.buffered for lane in self.lanes.values())
        if not self.paused and buffered >= self.max_buffer and self.assigned:
            self.consumer.pause([TopicPartition(t, p) for t, p in self.assigned])
            self.paused = True
        elif self.paused and buffered < self.max_buffer // 2 and self.assigned:
            self.consumer.resume([TopicPartition(t, p) for t, p in self.assigned])
            self.paused = False

    # --- offsets ------------------------------------------------------------------------------

    def _commit(self, asynchronous: bool, only: set[tuple[str, int]] | None = None) -> None:
        """Commit the finished prefix: exactly-once partitions in a transaction with their
        outputs, the others with a plain (asynchronous, or on revoke/shutdown synchronous) commit."""
        chosen = [(t, p, o) for t, p, o in self.offsets.commit_points() if only is None or (t, p) in only]
        if self.txn is not None:
            eo_points = [pt for pt in chosen if pt[0] in self.eo]
            if self.txn.commit(eo_points, self._rewind):
                for t, p, o in eo_points:
                    self.offsets.mark_committed(t, p, o)
        points = [TopicPartition(t, p, o) for t, p, o in chosen if t not in self.eo]
        if not points:
            return
        try:
            if asynchronous:
                self.consumer.commit(offsets=points, asynchronous=True)
            else:
                for tp in self.consumer.commit(offsets=points, asynchronous=False) or []:
                    if tp.error is None:
                        self.offsets.mark_committed(tp.topic, tp.partition, tp.offset)
        except Exception as exc:  # noqa: BLE001 - a failed commit is retried at the next interval
            log.warning("commit failed (will retry): %s", exc)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.error is None and err is None:
                self.offsets.mark_committed(tp.topic, tp.partition, tp.offset)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.generation[key] = self.generation.get(key, 0) + 1
            self.offsets.drop(tp.topic, tp.partition)
            self.assigned.add(key)
        if self.paused and partitions:
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self.revoking |= revoked
        deadline = time.monotonic() + (self.options.revoke_wait if self.stopping < 2 else 0)
        while time.monotonic() < deadline and any(lane.busy(revoked) for lane in self.lanes.values()):
            self.producer.poll(0)
            self._drain(0.05)
        self.producer.flush(5)
        self._drain(0)
        self._commit(asynchronous=False, only=revoked)
        self._forget(revoked)
        self.revoking -= revoked

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost (not committing): %s", [f"{tp.topic}[{tp.partition}]" for tp in partitions])
        self._forget({(tp.topic, tp.partition) for tp in partitions})
        if self.txn is not None:
            # Our group session expired (a long pause, SIGSTOP): a newer worker may have taken this
            # slot's transactional.id. Publish nothing more: stop, and let a fresh process start.
            self.lost_session = True
            self.stopping = 2

    def _rewind(self, keys: list[tuple[str, int]]) -> None:
        """After an aborted transaction: forget the partitions' progress and seek them back to
        their committed offsets; their jobs run again."""
        self._forget(set(keys), keep_assigned=True)
        rewind_to_committed(self.consumer, keys)

    def _forget(self, tps: set[tuple[str, int]], keep_assigned: bool = False) -> None:
        for key in tps:
            self.generation[key] = self.generation.get(key, 0) + 1
            self.offsets.drop(*key)
            if self.txn is not None:
                self.txn.drop(*key)
            if not keep_assigned:
                self.assigned.discard(key)

    # --- stopping -----------------------------------------------------------------------------

    def stop(self, at_once: bool = False) -> None:
        """Ask the loop to stop (safe from a signal handler or another thread)."""
        self.stopping = 2 if at_once or self.stopping else 1

    def _shutdown(self) -> None:
        for lane in self.lanes.values():
            lane.halt()  # buffered jobs stay unstarted (uncommitted: the next owner runs them)
        if self.assigned:
            self.consumer.pause([TopicPartition(t, p) for t, p in self.assigned])
        while self.stopping < 2 and self._busy_running():
            self.consumer.poll(0.05)  # keeps the group membership alive; partitions are paused
            self.producer.poll(0)
            self._drain(0.05)
            self._expire()
        self.producer.flush(10)
        self._drain(0)
        self._commit(asynchronous=False)

    def _busy_running(self) -> bool:
        return any(lane.running for lane in self.lanes.values()) or len(self.producer) > 0

    def _close(self) -> None:
        if self.epochs is not None:
            self.epochs.close()
        try:
            self.consumer.close()
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the consumer: %s", exc)
        self.producer.flush(5)
        for lane in self.lanes.values():
            lane.close()
        if self._loop is not None:
            self._loop.close()
        self.events("worker.stopped", counters=self.counters)


def install_signals(worker: Worker) -> None:
    import signal

    def handler(signum: int, _frame: Any) -> None:
        worker.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def status_line(worker: Worker, started: float) -> str:
    """The live one-line status `run` shows on a terminal."""
    c = worker.counters
    rate = c.finished / max(time.monotonic() - started, 1e-9)
    return (f"\rprotojobs: done {c.done}  failed {c.failed}  retried {c.retried}  dead {c.dead}  "
            f"{rate:,.0f} jobs/s  buffered {sum(lane.buffered for lane in worker.lanes.values())}   ")
