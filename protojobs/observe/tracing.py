"""OpenTelemetry tracing (optional: `pip install protojobs[otel]`); a no-op without it.

A trace follows a job across Kafka by its W3C `traceparent`, kept in the envelope's `trace`
field and sent as the `traceparent` record header (protojobs.envelope):

- `dispatch` (an instrumented Dispatcher, e.g. `ctx.dispatch` in a worker, or
  `instrument_dispatcher(Dispatcher(...))` in a web app): a PRODUCER span `"{queue} publish"`,
  child of whatever span is current (the web request), whose context becomes the job's
  `traceparent` (unless the caller passed `trace=` itself).
- each handler attempt: a CONSUMER span `"{queue} process"`, child of the dispatch span, with
  the job id, attempt and partition/offset; ERROR status and the exception when it failed.
- retry and dead-letter moves: INTERNAL spans `"{queue} retry"` / `"{queue} dead_letter"`
  when the copy was acknowledged. A retry keeps the job's traceparent, so every attempt of a
  job is one trace, up to its final success or its dead letter.

The spans use the global TracerProvider (set one, or run under `opentelemetry-instrument`);
`worker_events(provider)` takes another. With no provider configured nothing is hooked in. Handler code does not run inside the attempt span's
context (the attempt starts and ends on different threads).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the `otel` extra is not installed
    trace = None  # type: ignore[assignment]

NAME = "protojobs"


def available() -> bool:
    return trace is not None


def configured(provider: Any = None) -> bool:
    """OpenTelemetry is installed and a real TracerProvider is set (not the API's no-op one),
    so spans cost something only when someone collects them."""
    if trace is None:
        return False
    current = provider or trace.get_tracer_provider()
    return not isinstance(current, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _tracer(provider: Any = None) -> Any:
    return (provider or trace.get_tracer_provider()).get_tracer(NAME)


def _parent(traceparent: str | None) -> Any:
    return TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if traceparent else None


def _job_attributes(env: Any) -> dict[str, Any]:
    return {"messaging.system": "kafka", "messaging.destination.name": env.queue,
            "messaging.message.id": env.id, "protojobs.job": env.job, "protojobs.attempt": env.attempt}


def instrument_dispatcher(dispatcher: Any, provider: Any = None) -> Any:
    """Wrap `dispatcher.build` so each job gets a dispatch span and its traceparent."""
    if not configured(provider):
        return dispatcher
    tracer = _tracer(provider)
    build = dispatcher.build

    def traced(queue: str, data: Any, **options: Any) -> Any:
        if options.get("trace") is not None:
            return build(queue, data, **options)
        with tracer.start_as_current_span(f"{queue} publish", kind=SpanKind.PRODUCER) as span:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
            env = build(queue, data, trace=carrier.get("traceparent"), **options)
            for key, value in _job_attributes(env).items():
                span.set_attribute(key, value)
            return env

    dispatcher.build = traced
    return dispatcher


class WorkerTracing:
    """The Worker's `events` hook: one span per handler attempt, one per retry / dead-letter move."""

    def __init__(self, provider: Any = None) -> None:
        self.tracer = _tracer(provider)
        self.spans: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, **fields: Any) -> None:
        handler = self._EVENTS.get(name)
        if handler is not None:
            handler(self, **fields)

    def _processing(self, job: Any, context: Any = None, **_: Any) -> None:
        attributes = _job_attributes(job)
        if context is not None:
            attributes.update({"messaging.kafka.destination.partition": context.partition,
                               "messaging.kafka.message.offset": context.offset})
        span = self.tracer.start_span(f"{job.queue} process", context=_parent(job.trace), kind=SpanKind.CONSUMER,
                                      attributes=attributes)
        with self._lock:
            if len(self.spans) > 100_000:  # attempts of revoked partitions never report back
                self.spans.clear()
            self.spans[(job.id, job.attempt)] = span

    def _end(self, job: Any, error: BaseException | None = None) -> None:
        with self._lock:
            span = self.spans.pop((job.id, job.attempt), None)
        if span is None:
            return
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()

    def _processed(self, job: Any, **_: Any) -> None:
        self._end(job)

    def _failed(self, job: Any, error: BaseException | None = None, final: bool = False, **_: Any) -> None:
        self._end(job, error)

    def _moved(self, kind: str, job: Any, queue: str, target: str = "") -> None:
        attributes = {"messaging.destination.name": target, "protojobs.queue": queue}
        if job is not None:
            attributes.update(_job_attributes(job))
        span = self.tracer.start_span(f"{queue} {kind}", context=_parent(job.trace if job is not None else None),
                                      kind=SpanKind.INTERNAL, attributes=attributes)
        span.end()

    def _retried(self, job: Any, queue: str, target: str = "", **_: Any) -> None:
        self._moved("retry", job, queue, target)

    def _dead_lettered(self, job: Any, queue: str, target: str = "", **_: Any) -> None:
        self._moved("dead_letter", job, queue, target)

    _EVENTS: dict[str, Callable[..., None]] = {
        "job.processing": _processing, "job.processed": _processed, "job.failed": _failed,
        "job.retried": _retried, "job.dead_lettered": _dead_lettered,
    }


def worker_events(provider: Any = None) -> WorkerTracing | None:
    """The tracing hook for a Worker's `events`, or None when OpenTelemetry is not installed or
    no TracerProvider is configured."""
    return WorkerTracing(provider) if configured(provider) else None
