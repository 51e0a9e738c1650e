"""Typed extension points of the dispatcher and the worker (Dramatiq's middleware is the model).

Subclass `Hooks`, override the methods you need (each is a no-op here) and pass instances to
`Dispatcher(..., hooks=[...])`, `Worker(..., hooks=[...])` or `Jobs.add_hooks(...)`. Metrics,
tracing, the health heartbeat and the facade's event listeners are all implementations.

Where each method runs (never on the thread that polls Kafka, unless the hook says `inline`):
- `before_dispatch`, `after_enqueue`: the caller of `dispatch` (or the handler calling
  `ctx.dispatch`), before the broker's acknowledgement.
- `before_process`, `after_process`, `after_failure`: the lane thread that runs the job, around
  the handler (so a slow hook slows that job's lane, not the queue's polling and commits).
- `after_retry`, `after_dead_letter`: once the retry / dead-letter copy was acknowledged. The
  acknowledgement arrives on the polling thread: a hook with `inline = False` (the default) is
  called from the hook thread instead, in order; protojobs' own cheap hooks set `inline = True`.
- `after_park`: like `after_retry`: a record that could be neither run, retried nor
  dead-lettered (or a malformed control record) was parked: logged, its offset finished.
- `worker_started`, `worker_stopped`: the thread that runs `Worker.run`, before the first
  poll and after the consumer closed.

A hook that raises is logged and ignored: it never fails a job or stops a worker.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protojobs.engine.attempt import Context
    from protojobs.model.envelope import Envelope

log = logging.getLogger(__name__)


class Hooks:
    """No-op hooks; override what you need."""

    inline = False  # True: cheap and non-blocking, may run on the polling thread

    def before_dispatch(self, queue: str, data: Any, options: dict[str, Any]) -> None:
        """A job is about to be built; `options` (key, delay_ms, job_id, trace, ...) may be changed."""

    def after_enqueue(self, job: Envelope, topic: str) -> None:
        """The job was built, validated and handed to the producer (not yet acknowledged)."""

    def worker_started(self, queues: list[str]) -> None:
        """The worker subscribed to `queues` and is about to poll."""

    def before_process(self, job: Envelope, context: Context) -> None:
        """An attempt of `job` starts (every attempt, blocking retries included)."""

    def after_process(self, job: Envelope, result: Any, duration: float) -> None:
        """The handler returned `result` after `duration` seconds."""

    def after_failure(self, job: Envelope, error: BaseException, final: bool) -> None:
        """The attempt failed; `final` when the job is dead-lettered rather than retried."""

    def after_retry(self, job: Envelope, queue: str, target: str) -> None:
        """The retry copy of `job` was acknowledged on `target` (a delay tier or the queue)."""

    def after_dead_letter(self, job: Envelope | None, queue: str, target: str, reason: str) -> None:
        """The dead-letter copy was acknowledged on `target` (`job` is None for an undecodable record)."""

    def after_park(self, topic: str, partition: int, offset: int, reason: str) -> None:
        """The record at `topic`[`partition`]@`offset` was parked: it could not even be
        dead-lettered (or it is a malformed control record); its offset is finished anyway."""

    def worker_stopped(self, counters: Any) -> None:
        """The worker left the group; `counters` has done / failed / retried / dead / parked."""


_METHODS = tuple(name for name in vars(Hooks) if not name.startswith("_") and name != "inline")


class HookSet(Hooks):
    """Several hooks called as one, each guarded; non-inline hooks of acknowledgement events run
    on one daemon hook thread. An empty set costs one attribute check per call."""

    inline = True

    def __init__(self, hooks: Iterable[Hooks] = ()) -> None:
        self.hooks: list[Hooks] = []
        self._deferred: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] | None = None
        self._thread: threading.Thread | None = None
        self._overridden: dict[str, list[tuple[Hooks, Callable[..., Any]]]] = {name: [] for name in _METHODS}
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Hooks) -> None:
        self.hooks.append(hook)
        for name in _METHODS:
            if getattr(type(hook), name, None) is not getattr(Hooks, name):
                self._overridden[name].append((hook, getattr(hook, name)))

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def wants(self, name: str) -> bool:
        """True when some hook overrides method `name` (e.g. "before_process")."""
        return bool(self._overridden[name])

    def _call(self, name: str, *args: Any) -> None:
        for hook, method in self._overridden[name]:
            try:
                method(*args)
            except Exception:  # noqa: BLE001 - a hook never fails a job or stops a worker
                log.exception("hook %s.%s raised", type(hook).__name__, name)

    def _acknowledged(self, name: str, *args: Any) -> None:
        """An event raised on the polling thread: inline hooks now, the others on the hook thread."""
        for hook, method in self._overridden[name]:
            if hook.inline:
                try:
                    method(*args)
                except Exception:  # noqa: BLE001
                    log.exception("hook %s.%s raised", type(hook).__name__, name)
            else:
                self._defer(method, args)

    def _defer(self, method: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if self._deferred is None:
            self._deferred = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run_deferred, name="protojobs-hooks", daemon=True)
            self._thread.start()
        self._deferred.put((method, args))

    def _run_deferred(self) -> None:
        assert self._deferred is not None
        while (item := self._deferred.get()) is not None:
            method, args = item
            try:
                method(*args)
            except Exception:  # noqa: BLE001
                log.exception("hook %r raised", method)

    def close(self, timeout: float = 5.0) -> None:
        """Let the hook thread finish what it was given (bounded), then stop it."""
        if self._deferred is not None and self._thread is not None:
            self._deferred.put(None)
            self._thread.join(timeout)
            self._deferred, self._thread = None, None

    def before_dispatch(self, queue: str, data: Any, options: dict[str, Any]) -> None:
        self._call("before_dispatch", queue, data, options)

    def after_enqueue(self, job: Envelope, topic: str) -> None:
        self._call("after_enqueue", job, topic)

    def worker_started(self, queues: list[str]) -> None:
        self._call("worker_started", queues)

    def before_process(self, job: Envelope, context: Context) -> None:
        self._call("before_process", job, context)

    def after_process(self, job: Envelope, result: Any, duration: float) -> None:
        self._call("after_process", job, result, duration)

    def after_failure(self, job: Envelope, error: BaseException, final: bool) -> None:
        self._call("after_failure", job, error, final)

    def after_retry(self, job: Envelope, queue: str, target: str) -> None:
        self._acknowledged("after_retry", job, queue, target)

    def after_dead_letter(self, job: Envelope | None, queue: str, target: str, reason: str) -> None:
        self._acknowledged("after_dead_letter", job, queue, target, reason)

    def after_park(self, topic: str, partition: int, offset: int, reason: str) -> None:
        self._acknowledged("after_park", topic, partition, offset, reason)

    def worker_stopped(self, counters: Any) -> None:
        self._call("worker_stopped", counters)
