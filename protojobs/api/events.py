"""The facade's events (`Jobs.listen`) as an implementation of the engine's hooks.

Listeners run where the hooks run: job events on the lane thread of the job, worker events on
the worker's thread, `job.queuing` / `job.queued` on the dispatching thread; never on the thread
that polls Kafka. A listener that raises is logged and ignored.
"""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from protojobs.engine.hooks import Hooks

__all__ = ["EVENTS", "JobEvent", "Listeners"]

log = logging.getLogger(__name__)
EVENTS = ("job.queuing", "job.queued", "job.processing", "job.processed", "job.failed",
          "worker.starting", "worker.stopped")


@dataclass(frozen=True)
class JobEvent:
    """A listener's argument: `name` and fields (as attributes or keys). job.queuing/queued: job
    (the Envelope), queue, id; job.processing: job, context; job.processed: job, result, duration
    (= execution_time, s); job.failed: job, error (= exception), attempts, final;
    worker.starting: queues, queue; worker.stopped: counters, processed."""

    name: str
    fields: Mapping[str, Any]

    def __getattr__(self, key: str) -> Any:
        if key not in self.fields:
            raise AttributeError(f"event {self.name!r} has no field {key!r}")
        return self.fields[key]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


_ALIASES = {"job.processed": {"execution_time": "duration"}, "job.failed": {"exception": "error"}}


class Listeners(Hooks):
    """Callbacks by event name, fed by the worker's hooks and by the facade's dispatch."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[[JobEvent], Any]]] = {}
        self._lock = threading.Lock()

    def add(self, event: str, callback: Callable[[JobEvent], Any]) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; the events are: {', '.join(EVENTS)}")
        with self._lock:
            self._callbacks.setdefault(event, []).append(callback)

    def clear(self) -> None:
        with self._lock:
            self._callbacks.clear()

    def emit(self, name: str, **fields: Any) -> None:
        callbacks = list(self._callbacks.get(name, ()))
        if not callbacks:
            return
        for alias, field in _ALIASES.get(name, {}).items():
            fields.setdefault(alias, fields.get(field))
        event = JobEvent(name, types.MappingProxyType(fields))
        for callback in callbacks:
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - a listener never breaks dispatch or the worker
                log.exception("listener %r for %s raised", callback, name)

    def worker_started(self, queues: list[str]) -> None:
        self.emit("worker.starting", queues=queues, queue=queues[0] if queues else None)

    def before_process(self, job: Any, context: Any) -> None:
        self.emit("job.processing", job=job, context=context)

    def after_process(self, job: Any, result: Any, duration: float) -> None:
        self.emit("job.processed", job=job, result=result, duration=duration)

    def after_failure(self, job: Any, error: BaseException, final: bool) -> None:
        self.emit("job.failed", job=job, error=error, attempts=job.attempt, final=final)

    def worker_stopped(self, counters: Any) -> None:
        self.emit("worker.stopped", counters=counters, processed=getattr(counters, "finished", 0))
