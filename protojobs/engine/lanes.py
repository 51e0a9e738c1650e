"""Run handlers with bounded concurrency per queue, and per-key or per-partition order.

A `Lane` per queue owns its buffered jobs. `concurrency` lane threads pull jobs from it; a job
whose chain (its key with `ordering = "key"`, its partition with `"partition"`) is busy waits in
that chain and starts as soon as the job before it finishes, on the same thread, so one key's
jobs never overlap and keep their dispatch order while other keys run in parallel.

`async def` handlers run on one event loop per process (a daemon thread); `concurrency` of them
are in flight per queue. A timeout fails the attempt, never the worker: a coroutine is
cancelled; a sync handler cannot be killed (Python threads cannot be), so the worker's loop
declares it timed out at its deadline, the lane starts a fresh thread in its place (the lane
keeps `concurrency` threads working, however many are stuck), and whatever the old thread
returns later is ignored. Handlers see the deadline in their context (`ctx.deadline`, epoch s).
With `blocking_retries`, a timed-out job keeps its key held: its replacement thread waits out
the retry's backoff and runs the next attempt itself, so the key's later jobs never pass it.

The hard limit (docs/architecture.md, "Threads of a worker process"): lane threads are daemon
threads the lane starts itself, so an abandoned one never keeps the process alive. `hung`
counts abandoned threads still inside their handler; above `max_hung` (default 2 x
concurrency) the lane is `wedged`: the worker reports it (/healthz 503 naming the queue) and a
`--processes` child exits to be recycled.

Each attempt runs through `engine.attempt.Attempt` on the lane thread, failure decision
included; a job declared timed out gets its failure decided on the thread that replaces it.

Batches, not single jobs, cross threads (the hot path: a thread wake or a queue hand-off per
job costs more than a no-op job): the consume loop hands a lane every job of one fetch with
`submit_many` (one lock, one wake-up), lane threads stay alive while there is work (an idle one
waits `IDLE_S` for more before it ends, so a burst does not start threads per job), and the
results of finished jobs collect in the lane under its lock: the loop takes them with `collect`
on every pass, and a lane thread hands them to `done` (the loop's SimpleQueue, which owns
offsets) as one list when `FLUSH_AT` are waiting or when it runs out of ready jobs. A lane thread
still takes one job at a time, so concurrency, chains and timeouts work per job as before.

Cheap jobs run on one thread. Under the GIL, threads that only compute cannot run at once: for
jobs of a few microseconds, a second or fourth thread adds lock and GIL hand-offs per job and
doubles the cost of each job (measured: a no-op drain at concurrency 4 ran at half the rate of
concurrency 1). So a lane measures every `SAMPLE_EVERY`-th job (wall clock and the thread's CPU
clock around the attempt) and calls itself `cheap` while its jobs take under `CHEAP_S` and
compute most of that time. A cheap lane keeps one thread pulling jobs: a thread that finished a
cheap job while another thread is pulling waits idle instead of taking the next one, and the
loop (`staff`, on every pass) wakes or starts one more thread whenever ready jobs wait and no
thread is pulling (each running job is older than `STUCK_S`: the one slow job of a mostly cheap
queue holds back the others for at most one loop pass). A lane whose jobs wait on I/O (a
database, an HTTP call) is not cheap, and runs up to `concurrency` threads as soon as jobs are
ready, as before.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from queue import SimpleQueue
from typing import Any

from protojobs.config import QueueSettings
from protojobs.engine.attempt import (
    DONE,
    DROPPED,
    RUNNING,
    TIMED_OUT,
    Attempt,
    Handler,
    JobRun,
    Result,
)
from protojobs.kafka.clock import now_ms
from protojobs.model import envelope, retry

log = logging.getLogger(__name__)
IDLE_S = 2.0  # an idle lane thread waits this long for more jobs before it ends
FLUSH_AT = 256  # results waiting in a lane: a lane thread hands them to `done` as one list
SAMPLE_EVERY = 8  # a lane thread measures one attempt in this many (a CPU clock read costs ~0.4 us)
CHEAP_S = 0.001  # an attempt shorter than this that computes most of it is cheap
STUCK_S = 0.002  # a running job older than this no longer counts as a thread pulling jobs


class EventLoop:
    """One asyncio loop in a daemon thread, shared by every async handler of the process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="protojobs-asyncio", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(coro, timeout)
        return asyncio.run_coroutine_threadsafe(bounded(), self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class Lane:
    """The buffered and running jobs of one queue."""

    waits_in_place = True  # a blocking retry sleeps its backoff on the lane thread (engine.attempt.Timer)

    def __init__(self, queue: QueueSettings, handlers: dict[str, Handler], done: SimpleQueue[Any],
                 valid: Callable[[JobRun], bool], attempt: Attempt, max_hung: int = 0) -> None:
        self.queue = queue
        self.handlers = handlers  # envelope job name -> handler; "*": the queue's one handler
        self.done = done
        self.valid = valid  # False once the job's partition was revoked: drop it unstarted
        self.attempt = attempt
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)  # idle lane threads wait on it for jobs
        self.idle = 0  # lane threads inside `wake.wait` (some may be notified and not yet running)
        self.results: list[Result] = []  # finished, not yet taken by the loop (`collect`)
        self.ready: deque[JobRun] = deque()
        self.chains: dict[Hashable, deque[JobRun]] = {}
        self.running: dict[int, JobRun] = {}  # id(job) -> job
        self.deciding: dict[int, JobRun] = {}  # timed out, its failure being decided by its replacement thread
        self.threads = 0  # working lane threads (a thread stuck in a timed-out handler is not one)
        self.hung = 0  # abandoned threads still inside a handler past its timeout
        self.timed_out = 0  # attempts declared timed out, in all
        self.max_hung = max_hung or 2 * queue.concurrency
        self.buffered = 0
        self.halted = False
        self.cheapness = 0  # from -3 (jobs wait on I/O or run long) to 3 (cheap): see the module
        self._names = itertools.count(1)

    @property
    def cheap(self) -> bool:
        """Recent jobs were cheap: one thread pulling keeps up (see the module)."""
        return self.cheapness > 0

    @property
    def wedged(self) -> bool:
        """More than `max_hung` threads are stuck in handlers past their timeout."""
        return self.hung > self.max_hung

    def _start_thread(self, target: Callable[..., None], *args: Any) -> None:
        """A daemon thread: one stuck in a handler never keeps the process from exiting."""
        threading.Thread(target=target, args=args, name=f"protojobs-{self.queue.name}-{next(self._names)}",
                         daemon=True).start()

    def submit(self, job: JobRun) -> None:
        self.submit_many([job])

    def submit_many(self, jobs: list[JobRun]) -> None:
        """Buffer jobs (in their order) and wake or start the lane threads to run them."""
        with self.lock:
            self.buffered += len(jobs)
            chains, ready = self.chains, self.ready
            for job in jobs:
                if job.chain is not None:
                    chain = chains.get(job.chain)
                    if chain is not None:
                        chain.append(job)
                        continue
                    chains[job.chain] = deque()
                ready.append(job)
            self._staff_locked(time.monotonic())

    def staff(self, now: float) -> None:
        """Called by the loop on every pass: a cheap lane whose one pulling thread got stuck in a
        slow job gets another (see the module)."""
        if self.ready and self.cheap and not self.halted:
            with self.lock:
                self._staff_locked(now)

    def _pulling_locked(self, now: float, me: int = 0) -> int:
        """Threads taking jobs, other than `me` (1: the caller is one of the working threads and
        its own job is settled): between jobs, or in a job younger than `STUCK_S`."""
        between = self.threads - self.idle - me - len(self.running) - len(self.deciding)
        stuck = now - STUCK_S
        return between + sum(1 for job in self.running.values() if job.started > stuck)

    def _staff_locked(self, now: float) -> None:
        """Wake idle lane threads, and start more (up to `concurrency`), for the ready jobs; a
        cheap lane only when no thread is pulling jobs, and one thread."""
        want = len(self.ready)
        if not want:
            return
        if self.cheap:
            if self._pulling_locked(now) > 0:
                return
            want = 1
        if self.idle > 0:  # notify() skips waiters already notified: at worst fewer are woken
            woken = min(want, self.idle)
            self.wake.notify(woken)
            want -= woken
        while want > 0 and self.threads < self.queue.concurrency:
            self.threads += 1
            want -= 1
            self._start_thread(self._work)

    def collect(self) -> list[Result]:
        """Take the results waiting in the lane (the loop calls it on every pass)."""
        if not self.results:
            return []
        with self.lock:
            taken, self.results = self.results, []
        return taken

    def _next(self, previous: JobRun | None, result: Result | None = None, ended: float = 0.0,
              cpu: float = -1.0) -> JobRun | None:
        """Settle `previous` (its result, its chain's successor; `ended`: when its attempt ended,
        `cpu`: the attempt's CPU time when it was measured, else -1) and take the next ready job,
        waiting up to `IDLE_S` for one; None: this thread ends. After a cheap job, the thread
        waits instead while another thread is pulling jobs (see the module)."""
        yields = False
        with self.lock:
            if previous is not None:
                if previous.state == TIMED_OUT:  # expire() released its chain and gave its slot to a
                    self.hung -= 1  # fresh thread: this one, back from its handler at last, ends
                    return None
                previous.state = DONE
                self.running.pop(id(previous), None)
                self._release_chain_locked(previous)
                if result is not None:
                    self.results.append(result)
                    if len(self.results) >= FLUSH_AT:
                        self.done.put(self.results)
                        self.results = []
                if cpu >= 0:  # a measured attempt: cheap if short and mostly computing
                    wall = ended - previous.started
                    if wall < CHEAP_S and cpu > wall / 2:
                        self.cheapness = min(3, self.cheapness + 1)
                    else:
                        self.cheapness = max(-3, self.cheapness - 1)
                yields = self.cheap
            waited = False
            while True:
                while self.ready and not self.halted and not (yields and self._pulling_locked(time.monotonic(), 1) > 0):
                    job = self.ready.popleft()
                    self.buffered -= 1
                    if not self.valid(job):
                        job.state = DROPPED
                        self._release_chain_locked(job)
                        continue
                    job.state = RUNNING
                    job.started = time.monotonic()
                    job.deadline = job.started + self.queue.timeout_ms / 1000
                    self.running[id(job)] = job
                    return job
                if self.results:  # out of work: hand over what finished (wakes a waiting loop)
                    self.done.put(self.results)
                    self.results = []
                if waited or self.halted:
                    self.threads -= 1
                    return None
                # Counted by the waiter itself, so a wait that times out just as it is notified
                # is never counted twice; after it, ready jobs are taken before the thread ends.
                self.idle += 1
                try:
                    self.wake.wait(IDLE_S)
                finally:
                    self.idle -= 1
                waited = True

    def _release_chain_locked(self, job: JobRun) -> None:
        if job.chain is None:
            return
        chain = self.chains.get(job.chain)
        if chain:
            self.ready.appendleft(chain.popleft())
        else:
            self.chains.pop(job.chain, None)

    def handler_for(self, job: JobRun) -> Handler | None:
        return self.handlers.get(job.env.job) or self.handlers.get("*")

    def _work(self, first: JobRun | None = None) -> None:
        run, handlers, monotonic, thread_time = self.attempt.run, self.handlers, time.monotonic, time.thread_time
        job = first or self._next(None)
        count = 0
        while job is not None:
            count += 1
            cpu = thread_time() if count % SAMPLE_EVERY == 0 else -1.0
            try:
                result = run(job, handlers.get(job.env.job) or handlers.get("*"), self)
            except BaseException as exc:  # noqa: BLE001 - never lose a job to a bug of ours
                result = Result(job, exc, None, 0.0)
            if cpu >= 0:
                cpu = thread_time() - cpu
            # a late result (the job timed out meanwhile) is dropped there
            job = self._next(job, result, monotonic(), cpu)

    def _timed_out(self, job: JobRun) -> None:
        """On the thread that replaces a stuck one: decide the timed-out attempt's failure, then work.
        With blocking retries the job's key stays held (expire() kept its chain): a retry waits
        out its backoff here and runs on this thread, so nothing later of the key passes it."""
        error = TimeoutError(f"handler ran past its timeout of {self.queue.timeout_ms / 1000:g}s")
        held = self.queue.blocking_retries
        try:
            if job.decided is not None:  # the handler had failed; its failed() overran: keep that failure
                result = job.decided
            else:
                handler = self.handler_for(job)
                decision = self.attempt.decide(job, error, handler)
                if held and isinstance(decision, retry.Retry) and not self.halted:
                    self._work(self._again(job, error, decision))
                    return
                result = self.attempt.failed(job, error, handler, time.perf_counter() - self.queue.timeout_ms / 1000,
                                             decision)
        except BaseException as exc:  # noqa: BLE001
            result = Result(job, exc, None, 0.0)
        self.done.put(result)
        with self.lock:
            self.deciding.pop(id(job), None)
            if held:
                self._release_chain_locked(job)
        self._work()

    def _again(self, job: JobRun, error: BaseException, decision: retry.Retry) -> JobRun:
        """A blocking retry of a timed-out attempt: wait out the backoff, then the next attempt
        runs as a new JobRun of the same record (the stuck thread still holds the old one)."""
        log.warning("job failed: %s", f"{type(error).__name__}: {error}", extra={
            "queue": self.queue.name, "topic": job.topic, "partition": job.partition, "offset": job.offset,
            "job_id": job.env.id, "attempt": job.env.attempt})
        self.attempt.hooks.after_failure(job.env, error, False)
        time.sleep(decision.delay_ms / 1000)
        env = envelope.with_attempt(job.env, job.env.attempt + 1, decision.available_at, failed_at=now_ms())
        again = JobRun(job.topic, job.partition, job.offset, env, job.generation, job.chain, state=RUNNING)
        with self.lock:
            again.started = time.monotonic()
            again.deadline = again.started + self.queue.timeout_ms / 1000
            self.deciding.pop(id(job), None)
            self.running[id(again)] = again
        return again

    def hold(self, job: JobRun) -> bool:
        """Suspend `job`'s timeout (a blocking retry's backoff); False if it already timed out."""
        with self.lock:
            if job.state != RUNNING:
                return False
            job.deadline = float("inf")
            return True

    def rearm(self, job: JobRun) -> None:
        with self.lock:
            job.deadline = time.monotonic() + self.queue.timeout_ms / 1000

    def expire(self, now: float) -> list[JobRun]:
        """Declare running jobs past their deadline timed out; each gets a fresh thread that
        decides its failure and then takes the lane's next job."""
        expired = []
        with self.lock:
            for job in list(self.running.values()):
                if job.deadline <= now and job.state == RUNNING:
                    job.state = TIMED_OUT
                    self.running.pop(id(job), None)
                    self.deciding[id(job)] = job
                    if not self.queue.blocking_retries:  # else its key waits for its retry (_timed_out)
                        self._release_chain_locked(job)
                    expired.append(job)
            self.hung += len(expired)
            self.timed_out += len(expired)
            for job in expired:
                self._start_thread(self._timed_out, job)  # replaces the thread stuck in the handler
            hung = self.hung
        for job in expired:
            log.warning("job %s ran past its timeout of %gs: its thread is abandoned and a fresh one takes "
                        "its place (%d hung in queue %s, limit %d)", job.env.id, self.queue.timeout_ms / 1000,
                        hung, self.queue.name, self.max_hung,
                        extra={"queue": self.queue.name, "topic": job.topic, "partition": job.partition,
                               "offset": job.offset, "job_id": job.env.id, "attempt": job.env.attempt})
        return expired

    def halt(self) -> None:
        """Start no more jobs (running ones finish); idle lane threads end."""
        with self.lock:
            self.halted = True
            self.wake.notify_all()

    def busy(self, partitions: set[tuple[str, int]] | None = None) -> int:
        """Running jobs, and timed-out ones whose failure is being decided (of `partitions`, or all)."""
        with self.lock:
            return sum(1 for j in [*self.running.values(), *self.deciding.values()]
                       if partitions is None or (j.topic, j.partition) in partitions)

    def close(self) -> None:
        """Start nothing more; lane threads end when their job does (stuck ones are daemons)."""
        self.halt()
