"""Run handlers with bounded concurrency per queue, and per-key or per-partition order.

A `Lane` per queue owns its buffered jobs. `concurrency` lane threads pull jobs from it; a job
whose chain (its key with `ordering = "key"`, its partition with `"partition"`) is busy waits in
that chain and starts as soon as the job before it finishes, on the same thread, so one key's
jobs never overlap and keep their dispatch order while other keys run in parallel.

`async def` handlers run on one event loop per process (a daemon thread); `concurrency` of them
are in flight per queue. A timeout fails the attempt, never the worker: a coroutine is
cancelled; a sync handler cannot be killed (Python threads cannot be), so the worker's loop
declares it timed out at its deadline, the lane gets a fresh thread, and whatever the old thread
returns later is ignored. Handlers see the deadline in their context (`ctx.deadline`, epoch s).

Completed jobs go to `done` (a SimpleQueue) for the consume loop, which owns offsets.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import Any

from protojobs.config import QueueSettings
from protojobs.config.checks import import_target, is_job_class
from protojobs.model.envelope import Envelope

WAITING, RUNNING, DONE, TIMED_OUT, DROPPED = range(5)


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler may take as its second argument."""

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
class Job:
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
    outputs: list[Any] = field(default_factory=list)  # exactly-once: records to publish on success


@dataclass(slots=True)
class Result:
    job: Job
    error: BaseException | None
    value: Any
    duration: float


class Handler:
    """A resolved `handler = "module:callable"` (function, coroutine function or Job class)."""

    def __init__(self, target: Any) -> None:
        self.target = target
        func = target
        if is_job_class(target):
            instance = target()
            func = instance.handle
        self.func = func
        self.is_async = inspect.iscoroutinefunction(func)
        self.takes_context = _positional_count(func) >= 2

    @classmethod
    def load(cls, target: str) -> Handler:
        obj, why = import_target(target)
        if why is not None:
            raise ImportError(why)
        return cls(obj)

    def __call__(self, data: Any, ctx: Context) -> Any:
        return self.func(data, ctx) if self.takes_context else self.func(data)


def _positional_count(func: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


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

    def __init__(self, queue: QueueSettings, handlers: dict[str, Handler], done: SimpleQueue[Any],
                 valid: Callable[[Job], bool], loop: Callable[[], EventLoop],
                 attempt: Callable[[Job, Handler], Any]) -> None:
        self.queue = queue
        self.handlers = handlers
        self.done = done
        self.valid = valid  # False once the job's partition was revoked: drop it unstarted
        self._loop = loop
        self._attempt = attempt
        self.lock = threading.Lock()
        self.ready: deque[Job] = deque()
        self.chains: dict[Hashable, deque[Job]] = {}
        self.running: dict[int, Job] = {}  # id(job) -> job
        self.threads = 0
        self.buffered = 0
        self.halted = False
        self.pool = ThreadPoolExecutor(max_workers=queue.concurrency * 2 + 2,
                                       thread_name_prefix=f"protojobs-{queue.name}")

    def submit(self, job: Job) -> None:
        with self.lock:
            self.buffered += 1
            if job.chain is not None:
                chain = self.chains.get(job.chain)
                if chain is not None:
                    chain.append(job)
                    return
                self.chains[job.chain] = deque()
            self.ready.append(job)
            if self.threads < self.queue.concurrency:
                self.threads += 1
                self.pool.submit(self._work)

    def _next(self, previous: Job | None) -> Job | None:
        """Release `previous`'s chain (starting its successor) and take the next ready job."""
        with self.lock:
            if previous is not None:
                if previous.state == TIMED_OUT:  # expire() released its chain and its thread slot
                    return None
                self.running.pop(id(previous), None)
                self._release_chain_locked(previous)
            while self.ready and not self.halted:
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
            self.threads -= 1
            return None

    def _release_chain_locked(self, job: Job) -> None:
        if job.chain is None:
            return
        chain = self.chains.get(job.chain)
        if chain:
            self.ready.appendleft(chain.popleft())
        else:
            self.chains.pop(job.chain, None)

    def _work(self) -> None:
        job = self._next(None)
        while job is not None:
            handler = self.handlers.get(job.env.job) or self.handlers.get("*")
            started = time.perf_counter()
            try:
                value, error = self._attempt(job, handler) if handler else (None, LookupError(
                    f"job {job.env.job!r} is not on queue {self.queue.name!r}'s jobs list"))
            except BaseException as exc:  # noqa: BLE001 - a handler's failure is the job's, never the worker's
                value, error = None, exc
            with self.lock:
                late = job.state == TIMED_OUT
                if not late:
                    job.state = DONE
            if not late:
                self.done.put(Result(job, error, value, time.perf_counter() - started))
            job = self._next(job)

    def expire(self, now: float) -> list[Job]:
        """Declare running jobs past their deadline timed out; give the lane fresh threads."""
        expired = []
        with self.lock:
            for job in list(self.running.values()):
                if job.deadline <= now and job.state == RUNNING:
                    job.state = TIMED_OUT
                    self.running.pop(id(job), None)
                    self._release_chain_locked(job)
                    expired.append(job)
            for _ in expired:
                self.pool.submit(self._work)  # replaces the thread that is stuck in the handler
        for job in expired:
            self.done.put(Result(job, TimeoutError(f"handler ran past its timeout of "
                                                   f"{self.queue.timeout_ms / 1000:g}s"), None,
                                 self.queue.timeout_ms / 1000))
        return expired

    def halt(self) -> None:
        """Start no more jobs (running ones finish)."""
        with self.lock:
            self.halted = True

    def busy(self, partitions: set[tuple[str, int]] | None = None) -> int:
        """Running jobs (of `partitions`, or all)."""
        with self.lock:
            return sum(1 for j in self.running.values()
                       if partitions is None or (j.topic, j.partition) in partitions)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
