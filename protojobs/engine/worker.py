"""The consume loop: poll, hand jobs to the lanes, apply their results, commit only finished jobs.

Commit rule: an offset is committed only when its job and every earlier job of its partition
are finished: done, or their retry / dead-letter copy acknowledged by the broker (exactly-once
queues: in the same transaction as those copies). Commits run every `commit_interval` or once
`commit_every` jobs finished since the last one, whichever comes first (asynchronously), and
synchronously on revoke and on shutdown; an exactly-once queue's transaction begins every
`commit_interval`, or once one of its partitions has half of `max_uncommitted` uncommitted (a
transaction waits for the broker, so it is not run per `commit_every` jobs), and commits on the
transaction thread while the loop goes on (`Partitions.commit(overlap=True)`: one in flight at a
time, its end applied on the loop's next pass; an exactly-once partition takes no more records
once it has `EO_BACKLOG` x `max_uncommitted` uncommitted); nothing is committed when partitions
are lost (`kafka.partitions`). A crash therefore re-delivers exactly the unfinished suffix.

The uncommitted window is bounded: when a partition has `max_uncommitted` jobs started but not
committable (running, waiting in its lane, or finished behind an unfinished one), the record
that would exceed it is put back (the partition is paused and sought back to it) until the
window drains to half. `max_jobs` is exact the same way: a record beyond the budget is put back,
never started, never committed; it stays queued for the next worker.

Rebalancing (cooperative-sticky): on revoke the loop stops starting the revoked partitions' jobs,
waits (bounded) for their running ones, commits, and forgets them; their buffered jobs are
dropped unstarted (the next owner gets them from the committed offset).

Shutdown (SIGTERM/SIGINT, `stop()`, or `max_jobs` reached): stop fetching (pause everything),
let running jobs finish for at most `shutdown_timeout`, commit what finished, close the consumer
(leaving the group). A second signal skips the wait for running jobs. Handlers hung past their
timeout are not waited for (their threads are daemons: they do not keep the process alive).
With `exit_when_wedged` (the children of `protojobs run --processes N`) a lane wedged by hung
handlers (`engine.lanes`) stops the worker the same way, and `wedged_on` says why.

While it runs, the worker raises the cyclic garbage collector's young-generation threshold to
`GC_YOUNG` (from Python's 700; restored when it returns): every fetch allocates thousands of
short-lived objects (envelopes, payloads, jobs) that live until their job ends, and at 700 the
collector scanned each of them while still alive, about 1.2 us per job of the consume loop's
time (measured: 4.5 -> 3.3 us per no-op job). At 10,000 most are gone before a scan.

The loop's thread runs no user code: handlers, their hooks and failure decisions run on lane
threads (`engine.lanes`, `engine.attempt`).

No record stops the loop (README "Failure model"): one that does not decode, fails its schema
on consume, or breaks decoding or validation in any other way (a RecursionError...) is
dead-lettered; a copy whose delivery failed for a passing reason is sent again with backoff; a
retry copy refused for good (too large, not authorized) is dead-lettered instead, a refused
dead-letter copy is cut down once more, and a record whose smallest copy is refused too is
parked: an error log line, `after_park` (the `protojobs_parked_total` metric), and its offset
finished so the partition moves on.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from protojobs.config import PayloadError, QueueSettings, Settings, payload_validator
from protojobs.engine.attempt import Attempt, Handler, JobRun, Move, Result, dead_letter, handlers_of
from protojobs.engine.burst import Burst
from protojobs.engine.dispatch import Dispatcher
from protojobs.engine.hooks import Hooks, HookSet
from protojobs.engine.lanes import EventLoop, Lane
from protojobs.kafka import admin
from protojobs.kafka.clients import (
    ErrorWatch,
    idle_poll_s,
    is_error,
    max_message_bytes,
    producer_config,
    until_reachable,
)
from protojobs.kafka.control import ClearEpochs
from protojobs.kafka.outbox import Outbox, Resends, describe, permanent, record_size
from protojobs.kafka.partitions import Key, Partitions, Quiet
from protojobs.kafka.transactions import Fenced, Output, TransactionalProducer, Transactions
from protojobs.model import dead_letter as dead_letters
from protojobs.model import envelope, names

log = logging.getLogger(__name__)
HOLD_AFTER_S = 0.5  # a buffer full this long pauses fetching (`_room`, `_flow_control`)
TRANSACTION_WINDOW = 5000  # with no max_uncommitted: exactly-once commits by the time it is half full
# An exactly-once partition takes no more records once it has EO_BACKLOG x max_uncommitted jobs
# uncommitted (its transaction commits while the loop goes on: a slow one must not let what a
# crash runs again grow without bound). Measured on the bench's 3-node cluster (a transaction
# ~120 ms): at 2x the drain ran at 0.4-0.5 of at-least-once, at 4x 0.87.
EO_BACKLOG = 4
GC_YOUNG = 10_000  # the cyclic GC's generation-0 threshold while a worker runs (the module says why)


@dataclass
class Counters:
    done: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    parked: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.dead + self.retried + self.parked


@dataclass(slots=True)
class Sent:
    """A move on its way to the broker, for the source record (topic, partition, offset)."""

    move: Move
    env: envelope.Envelope | None
    topic: str
    partition: int
    offset: int
    generation: int
    acked: bool = False
    error: str | None = None
    code: int | None = None  # the delivery error's code (None: not a Kafka error)
    cause: BaseException | None = None  # the handler's error, for a dead-letter copy made later
    tries: int = 0  # failed deliveries that were retried
    shrunk: bool = False  # a cut-down dead-letter copy: the last resort before parking


@dataclass
class WorkerOptions:
    queues: Sequence[str] | None = None
    max_jobs: int = 0
    commit_interval: float = 1.0
    revoke_wait: float = 10.0
    max_buffer: int = 0  # 0: 4 x the sum of concurrencies, at least 1000
    max_uncommitted: int = 5000  # per partition: jobs started but not committable (0: no bound)
    commit_every: int = 500  # commit once this many jobs finished since the last commit (0: interval only)
    max_hung: int = 0  # per queue: handlers hung past their timeout before it is wedged (0: 2 x concurrency)
    shutdown_timeout: float = 0.0  # longest wait for running jobs on shutdown (0: longest queue timeout + 5 s)
    exit_when_wedged: bool = False  # stop (and report `wedged_on`) when a queue is wedged
    burst: bool = False  # stop once the queues are drained (`engine.burst`)
    status: bool = False
    slot: int = 0  # process slot: part of the exactly-once transactional.id
    consumer_extra: dict[str, Any] = field(default_factory=dict)
    producer_extra: dict[str, Any] = field(default_factory=dict)


class Worker(Quiet):
    """One consumer in the group, running the jobs of `options.queues` (default: all)."""

    def __init__(self, settings: Settings, options: WorkerOptions | None = None,
                 hooks: Iterable[Hooks] = (), handlers: dict[str, dict[str, Handler]] | None = None) -> None:
        self.settings = settings
        self.options = options or WorkerOptions()
        self.hooks = HookSet(hooks)
        wanted = list(self.options.queues or settings.queues)
        unknown = [n for n in wanted if n not in settings.queues]
        if unknown:
            raise ValueError(f"unknown queue(s) {unknown}; jobs.toml declares {sorted(settings.queues)}")
        prefix = settings.kafka.topic_prefix
        self.queues: dict[str, QueueSettings] = {names.queue_topic(prefix, n): settings.queues[n] for n in wanted}
        self.eo = {t for t, q in self.queues.items() if q.delivery == "exactly_once"}
        self.watch = ErrorWatch()
        self.partitions = Partitions(settings.kafka, self.watch, group=names.worker_group(settings.kafka.group_id),
                                     owner=self, transactional=self.eo.__contains__, **self.options.consumer_extra)
        self.outbox = Outbox(Producer(producer_config(settings.kafka, self.watch, **self.options.producer_extra)))
        self.done: SimpleQueue[Result | Sent | list[Result]] = SimpleQueue()
        self._loop: EventLoop | None = None
        self._dispatcher: Dispatcher | None = None
        self.max_bytes = max_message_bytes(settings.kafka, **self.options.producer_extra)
        self.attempt = Attempt(settings, self.queues, self.hooks, self._event_loop, self.dispatcher,
                               self.eo.__contains__, self.max_bytes)
        extra = handlers or {}
        self.lanes = {t: Lane(q, handlers_of(q, extra.get(q.name)), self.done, self._startable, self.attempt,
                              self.options.max_hung)
                      for t, q in self.queues.items()}
        self.epochs: ClearEpochs | None = None
        self.counters = Counters()
        self.stopping = 0  # 1: graceful, 2: at once
        self.last_poll = time.monotonic()
        self.max_buffer = self.options.max_buffer or max(1000, 4 * sum(q.concurrency for q in self.queues.values()))
        self.budget: int | None = None  # with max_jobs: how many more records may be taken
        self.uncommitted: dict[str, int] = {q.name: 0 for q in self.queues.values()}  # the window, per queue
        self.wedged_on: dict[str, int] = {}  # queue -> hung handlers, when a wedged queue stopped the worker
        self._reported_wedged: set[str] = set()
        self._shutdown_by: float | None = None  # monotonic: when shutdown stops waiting for running jobs
        self._resend: Resends[Sent] = Resends()  # deliveries to try again, with backoff
        self.burst = Burst() if self.options.burst else None
        self.paused_back: set[Key] = set()  # put back because an operator paused their queue
        self.paused_queues: set[str] = set()  # of this worker's queues, those paused (kafka.control)
        self._full_since: float | None = None  # monotonic: since when the buffer is full

    @property
    def assigned(self) -> set[Key]:
        return self.partitions.assigned

    def _event_loop(self) -> EventLoop:
        if self._loop is None:
            self._loop = EventLoop()
        return self._loop

    def dispatcher(self) -> Dispatcher:
        """The Dispatcher behind `ctx.dispatch` (made on first use, with this worker's hooks)."""
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(self.settings, hooks=self.hooks.hooks)
        return self._dispatcher

    def _startable(self, job: JobRun) -> bool:
        return self.partitions.startable(job.topic, job.partition, job.generation)

    def wedged(self) -> dict[str, int]:
        """Queues wedged by handlers hung past their timeout -> how many are hung."""
        return {lane.queue.name: lane.hung for lane in self.lanes.values() if lane.wedged}

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> Counters:
        thresholds = gc.get_threshold()
        if thresholds[0] < GC_YOUNG:
            gc.set_threshold(GC_YOUNG, *thresholds[1:])
        try:
            return self._run()
        finally:
            gc.set_threshold(*thresholds)

    def _run(self) -> Counters:
        if not until_reachable(self._start, lambda: self.stopping > 0, "worker start-up"):
            self._close()
            return self.counters
        self.epochs = ClearEpochs(self.settings, self.watch, on_malformed=self.hooks.after_park)
        self.epochs.catch_up()
        self.partitions.subscribe(list(self.queues))
        self.hooks.worker_started([q.name for q in self.queues.values()])
        next_commit = next_status = time.monotonic() + self.options.commit_interval
        committed_at = self.partitions.finished_count
        started = time.monotonic()
        try:
            while self.stopping == 0:
                self._poll_once(idle_poll_s(self.settings.kafka))
                now = time.monotonic()
                every = self.options.commit_every
                due = now >= next_commit
                transaction = due or self._transaction_due()
                if transaction or (every and self.partitions.finished_count - committed_at >= every):
                    self.partitions.commit(asynchronous=True, transactions=transaction, overlap=True)
                    next_commit = now + self.options.commit_interval
                    committed_at = self.partitions.finished_count
                if self.options.status and now >= next_status:
                    sys.stderr.write(status_line(self, started))
                    sys.stderr.flush()
                    next_status = now + self.options.commit_interval
                if (self.options.max_jobs and self.counters.finished >= self.options.max_jobs) or self._drained():
                    self.stopping = 1
                if self.options.exit_when_wedged and self.stopping == 0 and self.wedged():
                    self.wedged_on = self.wedged()
                    log.error("stopping: %s; this process is restarted in its slot",
                              "; ".join(self._wedged_text(q, n) for q, n in self.wedged_on.items()))
                    self.stopping = 1
            self._shutdown()
        finally:
            self._close()
        if self.partitions.session_lost:
            raise Fenced("the group session of an exactly-once worker expired; stopped so that it "
                         "publishes nothing a newer worker might also publish")
        return self.counters

    def _transaction_due(self) -> bool:
        """An exactly-once partition has half of `max_uncommitted` jobs started and not committed:
        commit its transaction now, not only on the interval. Not on `commit_every`: a
        transaction waits for the broker (several ms), so one per 500 jobs cost exactly-once
        queues half their throughput (measured: 68k -> 128k jobs/s in-process)."""
        if not self.eo or self.partitions.txn is None:
            return False
        if not self.partitions.settled():  # the previous one is still committing: not before it ends
            return False
        half = (self.options.max_uncommitted or TRANSACTION_WINDOW) // 2
        uncommitted = self.partitions.uncommitted
        return any(uncommitted(t, p) >= half for t, p in self.assigned if t in self.eo)

    def _backlog(self, topic: str, partition: int) -> int:
        """What `max_uncommitted` bounds: the partition's window (started, not committable); for
        an exactly-once partition also its uncommitted jobs beyond `EO_BACKLOG - 1` times
        `max_uncommitted`. Its transaction commits while the loop goes on
        (`Partitions.commit(overlap=True)`), so a slow one must not let what a crash would run
        again grow without bound: at most `EO_BACKLOG` x `max_uncommitted` per partition."""
        window = self.partitions.window(topic, partition)
        if topic in self.eo and self.partitions.txn is not None and self.options.max_uncommitted:
            excess = self.partitions.uncommitted(topic, partition) - (EO_BACKLOG - 1) * self.options.max_uncommitted
            return max(window, excess)
        return window

    def _drained(self) -> bool:
        """With `burst`: the queues are drained (`engine.burst`; checked at most every half second)."""
        if self.burst is None or not self.burst.due():
            return False
        idle = not self._busy() and not len(self.outbox) and not self._resend
        return self.burst.drained(self.partitions.consumer, list(self.queues), idle, self.assigned,
                                  lambda: self.partitions.commit(False))

    def _start(self) -> None:
        admin.ensure_topics(self.settings)
        if self.eo and self.partitions.txn is None:
            producer = TransactionalProducer(self.settings.kafka, self.watch, self.options.slot,
                                             **self.options.producer_extra)
            self.partitions.txn = Transactions(producer, self.partitions.consumer)

    def _poll_once(self, timeout: float) -> None:
        self.watch.check()
        # While jobs run, wake at least every 20 ms to collect their results; a new record wakes
        # the loop at once either way (fetch returns on the first one).
        if not self.stopping:
            batch = self._room()
            if self.options.max_jobs:  # take at most the rest of the budget (records beyond it are put back)
                self.budget = self.options.max_jobs - self.counters.finished - self.partitions.pending()
                batch = max(1, min(batch, self.budget)) if batch else 0
            if batch:
                taken: dict[str, list[JobRun]] = {}
                runs: dict[Key, list[Message]] = {}  # each partition's records, in fetch order
                for msg in self.partitions.fetch(batch, min(timeout, 0.02) if self._busy() else timeout):
                    if msg.error() is not None:
                        is_error(msg, "queue")
                        continue
                    key = (msg.topic(), msg.partition())
                    records = runs.get(key)
                    if records is None:
                        runs[key] = [msg]
                    else:
                        records.append(msg)
                for (topic, partition), records in runs.items():
                    self._take_run(topic, partition, records, taken)
                for topic, jobs in taken.items():  # one hand-off per lane and fetch, in fetch order
                    self.lanes[topic].submit_many(jobs)
            else:  # the buffer is full: wait for results instead of polling (see `_room`)
                self._drain(min(timeout, 0.02))
        self.last_poll = time.monotonic()
        if self.epochs is not None:
            self.epochs.refresh()
            self._release_resumed(self.epochs.paused)
        self._resend_due()
        self.outbox.poll(0)
        self._drain(0.0)
        self._expire()
        self._flow_control()
        if self.partitions.session_lost:
            self.stopping = 2

    def _release_resumed(self, paused: set[str]) -> None:
        """Fetch again the partitions put back because their queue was paused, once it is resumed."""
        mine = paused & {q.name for q in self.queues.values()}
        if mine != self.paused_queues:
            for name in sorted(mine ^ self.paused_queues):
                log.info("queue %s %s across the group: %s", name, "paused" if name in mine else "resumed",
                         "not fetching it" if name in mine else "fetching it again")
            self.paused_queues = mine
        resumed = {key for key in self.paused_back if self.queues[key[0]].name not in paused}
        if resumed:
            self.paused_back -= resumed
            self.partitions.release(resumed)

    def _room(self) -> int:
        """How many records the next fetch may take: what the buffer has room for, so a fetch
        never overshoots it and partitions are not paused and resumed per fetch (a pause drops
        what librdkafka fetched ahead). A full buffer takes nothing for up to `HOLD_AFTER_S`
        (0: the loop waits for results instead); full for longer, `_flow_control` pauses every
        partition and the loop fetches 1 record: nothing comes, but the poll serves the group."""
        if self.partitions.paused:
            return 1
        room = self.max_buffer - sum(lane.buffered for lane in self.lanes.values())
        if room <= 0:
            return 0 if self._full_since is not None else 1
        return min(self.settings.kafka.batch_size, room)

    def _busy(self) -> bool:
        return any(lane.running or lane.buffered for lane in self.lanes.values()) or self.partitions.pending() > 0

    def _take_run(self, topic: str, partition: int, records: list[Message], taken: dict[str, list[JobRun]]) -> None:
        """Take a partition's records of one fetch: the ownership, window and budget checks and
        the offsets' bookkeeping once for the run, then each record decoded and checked (`admit`).
        A run that needs anything else (put back, paused, not ascending) goes record by record."""
        room = len(records)
        if self.budget is not None:
            room = min(room, self.budget)
        limit = self.options.max_uncommitted
        if limit:
            room = min(room, limit - self._backlog(topic, partition))
        q = self.queues[topic]
        if room < len(records) or (topic, partition) in self.partitions.withheld or \
                (self.epochs is not None and q.name in self.epochs.paused) or \
                not self.partitions.started_run(topic, partition, [cast(int, msg.offset()) for msg in records]):
            for msg in records:
                self._take(msg, taken)
            return
        generation = self.partitions.generation_of(topic, partition)
        jobs = taken.get(topic)
        if jobs is None:
            jobs = taken[topic] = []
        epochs, max_bytes = self.epochs, self.max_bytes
        spent = 0  # of the max_jobs budget: jobs and dead-letter copies, as in `_take`
        for msg in records:
            try:
                job = admit(msg, q, generation, epochs, max_bytes, topic, partition)
            except Exception as exc:  # noqa: BLE001 - the record's failure, never the loop's
                self._not_admitted(topic, partition, cast(int, msg.offset()), generation, exc)
                continue
            if isinstance(job, JobRun):
                jobs.append(job)
                spent += 1
            else:
                self._admitted_otherwise(job, topic, partition, cast(int, msg.offset()), generation)
                spent += job is not None
        if self.budget is not None:
            self.budget -= spent

    def _not_admitted(self, topic: str, partition: int, offset: int, generation: int, exc: Exception) -> None:
        log.exception("record %s[%d]@%d could not be admitted", topic, partition, offset, exc_info=exc)
        self._park(topic, partition, offset, generation, f"could not be admitted: {exc!r}")

    def _admitted_otherwise(self, job: Move | None, topic: str, partition: int, offset: int, generation: int) -> None:
        """A record that is not a job to run: its dead-letter copy, or None (its queue was cleared)."""
        if job is None:
            self.partitions.finished(topic, partition, offset)  # its queue was cleared after dispatch
            return
        log.warning("record %s[%d]@%d dead-lettered: %s", topic, partition, offset, job.reason,
                    extra={"topic": topic, "partition": partition, "offset": offset})
        self._send(Sent(job, None, topic, partition, offset, generation))

    def _take(self, msg: Message, taken: dict[str, list[JobRun]]) -> None:
        if is_error(msg, "queue"):
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        if (topic, partition) in self.partitions.withheld:
            return  # put back earlier in this fetch: fetched again from there after the release
        if self.epochs is not None and self.queues[topic].name in self.epochs.paused and \
                self.partitions.put_back(topic, partition, offset):
            self.paused_back.add((topic, partition))  # its queue is paused across the group (kafka.control)
            log.debug("%s[%d]@%d put back: queue %s is paused", topic, partition, offset, self.queues[topic].name)
            return
        over_budget = self.budget is not None and self.budget <= 0
        limit = self.options.max_uncommitted
        if (over_budget or (limit and self._backlog(topic, partition) >= limit)) and \
                self.partitions.put_back(topic, partition, offset):
            return  # never started, never committed: it stays queued
        if not self.partitions.started(topic, partition, offset):
            return  # not ours (any more): never run, never committed
        generation = self.partitions.generation_of(topic, partition)
        try:
            job = admit(msg, self.queues[topic], generation, self.epochs, self.max_bytes)
        except Exception as exc:  # noqa: BLE001 - the record's failure, never the loop's
            self._not_admitted(topic, partition, offset, generation, exc)
            return
        if isinstance(job, JobRun):
            jobs = taken.get(topic)
            if jobs is None:
                jobs = taken[topic] = []
            jobs.append(job)
        else:
            self._admitted_otherwise(job, topic, partition, offset, generation)
            if job is None:
                return
        if self.budget is not None:
            self.budget -= 1

    def _drain(self, wait: float) -> None:
        """Apply every finished job (collected from the lanes, or handed over in `done` as a list
        or one by one) and every acknowledged move waiting in `done`."""
        finished = self._finished
        for lane in self.lanes.values():
            if lane.results:
                self._finished_many(lane.collect())
        try:
            item = self.done.get(timeout=wait) if wait else self.done.get_nowait()
        except Empty:
            return
        while True:
            if type(item) is list:
                self._finished_many(item)
            elif isinstance(item, Sent):
                self._acknowledged(item)
            else:
                finished(cast(Result, item))
            try:
                item = self.done.get_nowait()
            except Empty:
                return

    def _finished_many(self, results: list[Result]) -> None:
        """`_finished` for a lane's batch: its successes (at-least-once) as one offsets update."""
        succeeded = []
        eo = self.eo
        for result in results:
            if result.move is None and result.error is None and result.run.topic not in eo:
                succeeded.append(result.run)
            else:
                self._finished(result)
        if succeeded:
            self.counters.done += self.partitions.finished_runs(succeeded)

    def _finished(self, result: Result) -> None:
        job = result.run
        if not self.partitions.owns(job.topic, job.partition, job.generation):
            return  # revoked meanwhile: the next owner runs it again
        if result.move is not None:
            self.counters.failed += 1
            self._send(Sent(result.move, job.env, job.topic, job.partition, job.offset, job.generation,
                            cause=result.error))
            return
        if result.error is not None:  # a bug of ours, not the handler's: dead-letter it, never loop
            log.error("job %s could not be settled: %r; dead-lettering it", job.env.id, result.error)
            self.counters.failed += 1
            move = dead_letter(job.env, result.error, f"the job could not be settled: {result.error!r}", job.topic,
                               job.partition, job.offset, job.env.attempt, self.queues[job.topic].dead_letter_topic,
                               self.max_bytes)
            self._send(Sent(move, job.env, job.topic, job.partition, job.offset, job.generation, cause=result.error))
            return
        self.counters.done += 1
        if job.topic in self.eo and self.partitions.txn is not None:
            for out in job.outputs:
                self.partitions.publish_with_offset(job.topic, job.partition, out)
        self.partitions.finished(job.topic, job.partition, job.offset)

    def _send(self, sent: Sent) -> None:
        """Publish a move: with the offset's transaction (exactly-once), else acknowledged first.
        A move that cannot be produced at all fails like a refused delivery (`_undelivered`)."""
        move = sent.move
        size = record_size(move.value, move.key, move.headers)
        if size > self.max_bytes:  # librdkafka would refuse it (in a transaction: abort it)
            self._failed(sent, KafkaError.MSG_SIZE_TOO_LARGE,
                         f"MSG_SIZE_TOO_LARGE ({size} bytes, message.max.bytes is {self.max_bytes})")
            return
        if sent.topic in self.eo and self.partitions.txn is not None:
            self.partitions.publish_with_offset(sent.topic, sent.partition,
                                                Output(sent.offset, move.target, move.value, move.key, move.headers))
            sent.acked = True
            self._acknowledged(sent)
            return

        def delivered(err: KafkaError | None) -> None:
            sent.acked, sent.error = err is None, None if err is None else describe(err)
            sent.code = None if err is None else err.code()
            self.done.put(sent)

        try:
            self.outbox.send(move.target, move.value, move.key, move.headers, delivered)
        except KafkaException as exc:  # refused before it left: too large, unknown partition...
            self._failed(sent, exc.args[0].code(), describe(exc.args[0]))
        except Exception as exc:  # noqa: BLE001 - e.g. a value librdkafka will not take
            self._failed(sent, None, repr(exc))

    def _failed(self, sent: Sent, code: int | None, error: str) -> None:
        sent.acked, sent.code, sent.error = False, code, error
        self.done.put(sent)  # handled by `_undelivered` on the next drain, like a delivery report

    def _acknowledged(self, sent: Sent) -> None:
        """A retry or dead-letter copy was acknowledged (or failed: `_undelivered`)."""
        if not sent.acked:
            self._undelivered(sent)
            return
        if not self.partitions.finished(sent.topic, sent.partition, sent.offset, sent.generation):
            return
        queue = self.queues[sent.topic].name
        if sent.move.dead:
            self.counters.dead += 1
            self.hooks.after_dead_letter(sent.env, queue, sent.move.target, sent.move.reason)
        else:
            self.counters.retried += 1
            self.hooks.after_retry(sent.env, queue, sent.move.target)  # type: ignore[arg-type]

    def _undelivered(self, sent: Sent) -> None:
        """A copy was not delivered: send it again later (a passing error), or fall back to a
        dead-letter copy, then to a cut-down one, then park the record (a permanent error)."""
        if not self.partitions.owns(sent.topic, sent.partition, sent.generation):
            return  # revoked meanwhile: the next owner runs it again
        move = sent.move
        if not permanent(sent.code):
            sent.tries += 1
            delay = self._resend.later(sent, sent.tries)
            log.warning("delivery to %s failed (%s); sending it again in %.1fs", move.target, sent.error, delay)
            return
        where = f"{sent.topic}[{sent.partition}]@{sent.offset}"
        if not move.dead and sent.env is not None:
            reason = f"retry copy refused by {move.target}: {sent.error}"
            log.error("%s: %s; dead-lettering the job instead", where, reason)
            error = sent.cause if sent.cause is not None else RuntimeError(sent.error)
            copy = dead_letter(sent.env, error, reason, sent.topic, sent.partition, sent.offset, sent.env.attempt,
                               self.queues[sent.topic].dead_letter_topic, self.max_bytes)
            self._send(Sent(copy, sent.env, sent.topic, sent.partition, sent.offset, sent.generation, cause=error))
            return
        value = None if sent.shrunk else dead_letters.shrink(move.value, dead_letters.SMALL_COPY)
        if move.dead and value is not None:
            log.error("%s: dead-letter copy refused by %s (%s); sending a cut-down copy", where, move.target,
                      sent.error)
            smaller = Move(move.target, value, move.key, move.headers, dead=True, reason=move.reason)
            self._send(Sent(smaller, sent.env, sent.topic, sent.partition, sent.offset, sent.generation,
                            cause=sent.cause, shrunk=True))
            return
        self._park(sent.topic, sent.partition, sent.offset, sent.generation,
                   f"its {'dead-letter' if move.dead else 'retry'} copy was refused by {move.target}: {sent.error}")

    def _resend_due(self) -> None:
        for sent in self._resend.due():
            if self.partitions.owns(sent.topic, sent.partition, sent.generation):
                self._send(sent)

    def _park(self, topic: str, partition: int, offset: int, generation: int, reason: str) -> None:
        """The last resort for a record: log it, count it, finish its offset (never a crash loop)."""
        if not self.partitions.finished(topic, partition, offset, generation):
            return
        self.counters.parked += 1
        log.error("record %s[%d]@%d parked (not run, not retried, not dead-lettered; its offset is committed): %s",
                  topic, partition, offset, reason, extra={"topic": topic, "partition": partition, "offset": offset})
        self.hooks.after_park(topic, partition, offset, reason)

    def _expire(self) -> None:
        now = time.monotonic()
        for lane in self.lanes.values():
            lane.staff(now)
            if lane.running and lane.expire(now) and lane.wedged and lane.queue.name not in self._reported_wedged:
                self._reported_wedged.add(lane.queue.name)
                log.error("%s; /healthz reports it until they return", self._wedged_text(lane.queue.name, lane.hung))
            elif not lane.wedged:
                self._reported_wedged.discard(lane.queue.name)

    def _wedged_text(self, queue: str, hung: int) -> str:
        lane = next(lane for lane in self.lanes.values() if lane.queue.name == queue)
        return f"queue {queue} wedged: {hung} handlers hung past their timeout (limit {lane.max_hung})"

    def _flow_control(self) -> None:
        """Pause fetching while too many jobs wait; resume below half. Polling never stops. A
        partition put back (its uncommitted window full, or the max_jobs budget spent) is
        released once its window drained to half (and the budget allows)."""
        buffered = sum(lane.buffered for lane in self.lanes.values())
        if buffered < self.max_buffer:
            self._full_since = None
        elif self._full_since is None:
            self._full_since = time.monotonic()
        if not self.partitions.paused and self._full_since is not None and self.assigned and \
                time.monotonic() - self._full_since >= HOLD_AFTER_S:
            self.partitions.hold_all()
        elif self.partitions.paused and buffered < self.max_buffer // 2 and self.assigned:
            self.partitions.release_all()
        windows = self.partitions.windows()
        if self.partitions.withheld and (self.budget is None or self.budget > 0):
            limit = self.options.max_uncommitted
            half = limit // 2 if limit else float("inf")
            self.partitions.release([key for key in self.partitions.withheld
                                     if self._backlog(*key) <= half and key not in self.paused_back])
        uncommitted = dict.fromkeys(self.uncommitted, 0)
        for (topic, _partition), n in windows.items():
            if topic in self.queues:
                uncommitted[self.queues[topic].name] += n
        self.uncommitted = uncommitted  # read by the heartbeat thread: replaced, never changed

    # --- rebalancing (called by Partitions, on this thread, inside poll) ------------------------

    def partitions_revoking(self, keys: set[Key]) -> None:
        deadline = time.monotonic() + (self.options.revoke_wait if self.stopping < 2 else 0)
        if self._shutdown_by is not None:  # shutting down: no longer than the shutdown waits
            deadline = min(deadline, self._shutdown_by)
        while time.monotonic() < deadline and any(lane.busy(keys) for lane in self.lanes.values()):
            self.outbox.poll(0)
            self._drain(0.05)
        self.outbox.flush(5)
        self._drain(0)

    # --- stopping -----------------------------------------------------------------------------

    def stop(self, at_once: bool = False) -> None:
        """Ask the loop to stop (safe from a signal handler or another thread)."""
        self.stopping = 2 if at_once or self.stopping else 1

    def shutdown_timeout(self) -> float:
        """The longest wait for running jobs on shutdown: the option, else the longest timeout of
        this worker's queues plus 5 s (a job timing out meanwhile gets its retry copy out)."""
        return self.options.shutdown_timeout or max(q.timeout_ms for q in self.queues.values()) / 1000 + 5

    def _shutdown(self) -> None:
        for lane in self.lanes.values():
            lane.halt()  # buffered jobs stay unstarted (uncommitted: the next owner runs them)
        self.partitions.hold_all()
        deadline = self._shutdown_by = time.monotonic() + self.shutdown_timeout()
        while self.stopping < 2 and (any(lane.busy() for lane in self.lanes.values()) or len(self.outbox)):
            if time.monotonic() >= deadline:
                log.warning("shutdown: %d job(s) still running after %gs; not waiting longer (they are not "
                            "committed: the next owner runs them again)",
                            sum(lane.busy() for lane in self.lanes.values()), self.shutdown_timeout())
                break
            self.partitions.consumer.poll(0.05)  # keeps the group membership alive; partitions are paused
            self.outbox.poll(0)
            self._drain(0.05)
            self._expire()
        self.outbox.flush(10)
        self._drain(0)
        self.partitions.commit(asynchronous=False)

    def _close(self) -> None:
        if self.epochs is not None:
            self.epochs.close()
        self.partitions.close()
        self.outbox.flush(5)
        for lane in self.lanes.values():
            lane.close()
        if self._loop is not None:
            self._loop.close()
        self.hooks.close()
        self.hooks.worker_stopped(self.counters)


def admit(msg: Message, q: QueueSettings, generation: int, epochs: ClearEpochs | None,
          max_bytes: int = dead_letters.MAX_RECORD, topic: str | None = None,
          partition: int | None = None) -> JobRun | Move | None:
    """A polled record as a job for the lanes; or its dead-letter copy (undecodable, a payload
    that fails its schema on consume, or any other error decoding or validating it, such as a
    RecursionError); or None: its queue was cleared after it was dispatched. `topic` and
    `partition` are the record's, when the caller knows them already."""
    if topic is None or partition is None:
        topic, partition = cast(str, msg.topic()), cast(int, msg.partition())
    offset = cast(int, msg.offset())
    value = msg.value()
    try:
        env = envelope.decode(value)
        if epochs is not None and epochs.cleared(env.queue, env.dispatched_at):
            return None
        if q.validate_on_consume:
            payload_validator(q)(env.data)
    except Exception as exc:  # noqa: BLE001 - this record's failure, never the loop's
        reason = "undecodable record" if isinstance(exc, envelope.EnvelopeError) else \
            "payload failed its schema on consume" if isinstance(exc, PayloadError) else \
            "payload could not be checked against its schema on consume"
        return dead_letter(value, exc, reason, topic, partition, offset, 0, q.dead_letter_topic, max_bytes)
    chain: Hashable | None = env.key if q.ordering == "key" else (topic, partition) \
        if q.ordering == "partition" else None
    return JobRun(topic, partition, offset, env, generation, chain)


def status_line(worker: Worker, started: float) -> str:
    """The live one-line status `run` shows on a terminal."""
    c = worker.counters
    rate = c.finished / max(time.monotonic() - started, 1e-9)
    return (f"\rprotojobs: done {c.done}  failed {c.failed}  retried {c.retried}  dead {c.dead}  "
            f"{rate:,.0f} jobs/s  buffered {sum(lane.buffered for lane in worker.lanes.values())}   ")
