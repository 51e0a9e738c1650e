"""OpenTelemetry tracing (optional: `pip install protojobs[otel]`); a no-op without it.

A trace follows a job across Kafka by its W3C `traceparent`, kept in the envelope's `trace`
field and sent as the `traceparent` record header (protojobs.envelope):

- `dispatch` (a Dispatcher with the `Tracing` hooks, e.g. `ctx.dispatch` in a worker, or
  `Dispatcher(settings, hooks=[Tracing()])` in a web app): a PRODUCER span `"{queue} publish"`,
  child of whatever span is current (the web request), whose context becomes the job's
  `traceparent` (unless the caller passed `trace=` itself).
- each handler attempt: a CONSUMER span `"{queue} process"`, child of the dispatch span, with
  the job id, attempt and partition/offset; ERROR status and the exception when it failed.
- retry and dead-letter moves: INTERNAL spans `"{queue} retry"` / `"{queue} dead_letter"`
  when the copy was acknowledged. A retry keeps the job's traceparent, so every attempt of a
  job is one trace, up to its final success or its dead letter.

The spans use the global TracerProvider (set one, or run under `opentelemetry-instrument`);
`Tracing(provider)` takes another. With no provider configured nothing is hooked in. Handler code
does not run inside the attempt span's
context (the attempt starts and ends on different threads).
"""

from __future__ import annotations

import threading
from typing import Any

from protojobs.engine.hooks import Hooks

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


class Tracing(Hooks):
    """Hooks: a span per dispatch, per handler attempt, per retry / dead-letter move."""

    inline = True  # ends a span: cheap enough for the polling thread

    def __init__(self, provider: Any = None) -> None:
        self.tracer = _tracer(provider)
        self.spans: dict[tuple[str, int], Any] = {}
        self.publishing: dict[int, Any] = {}  # id(options) -> the dispatch span, until after_enqueue
        self._lock = threading.Lock()

    def before_dispatch(self, queue: str, data: Any, options: dict[str, Any]) -> None:
        if options.get("trace") is not None:
            return
        span = self.tracer.start_span(f"{queue} publish", kind=SpanKind.PRODUCER)
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
        options["trace"] = carrier.get("traceparent")
        with self._lock:
            if len(self.publishing) > 10_000:  # jobs whose build failed never report back
                self.publishing.clear()
            self.publishing[hash(options["trace"])] = span

    def after_enqueue(self, job: Any, topic: str) -> None:
        with self._lock:
            span = self.publishing.pop(hash(job.trace), None) if job.trace else None
        if span is not None:
            for key, value in _job_attributes(job).items():
                span.set_attribute(key, value)
            span.end()

    def before_process(self, job: Any, context: Any) -> None:
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

    def after_process(self, job: Any, result: Any, duration: float) -> None:
        self._end(job)

    def after_failure(self, job: Any, error: BaseException, final: bool) -> None:
        self._end(job, error)

    def _moved(self, kind: str, job: Any, queue: str, target: str = "") -> None:
        attributes = {"messaging.destination.name": target, "protojobs.queue": queue}
        if job is not None:
            attributes.update(_job_attributes(job))
        span = self.tracer.start_span(f"{queue} {kind}", context=_parent(job.trace if job is not None else None),
                                      kind=SpanKind.INTERNAL, attributes=attributes)
        span.end()

    def after_retry(self, job: Any, queue: str, target: str) -> None:
        self._moved("retry", job, queue, target)

    def after_dead_letter(self, job: Any, queue: str, target: str, reason: str) -> None:
        self._moved("dead_letter", job, queue, target)


def hooks(provider: Any = None) -> Tracing | None:
    """The tracing hooks, or None when OpenTelemetry is not installed or no TracerProvider is
    configured (so spans cost nothing unless someone collects them)."""
    return Tracing(provider) if configured(provider) else None
