"""Decorator jobs: `App("jobs.toml")` and `@app.job`, beside jobs.toml and the `Jobs` facade.

```python
app = App("jobs.toml")

@app.job(queue="emails", max_attempts=5)
def send_email(to: str, subject: str) -> None: ...

send_email.dispatch(to="ada@example.com", subject="Hi")      # the acked job id
await send_email.dispatch_async(to="ada@example.com", subject="Hi")
```

Precedence, key by key: environment variables (PROTOJOBS_QUEUES__EMAILS__...) > jobs.toml's
[queues.<queue>] > [defaults] > the decorator's queue options > the schema's defaults. The
decorator's `max_attempts` counts total attempts unless jobs.toml sets the queue's policy's
`max_attempts` (as a Job class's `max_retries`). The payload schema is jobs.toml's `schema`
when it names one, else the one derived from the signature (`api.signature`).

The settings are built on first use, once every module has declared its jobs; declaring one
later rebuilds them (and the Dispatcher) on the next use. Decorated jobs run on workers through
`Worker(handlers=app.handlers())`: `app.worker()`, or `protojobs run --app module:app`, which
needs no `handler` key in jobs.toml for them. A decorated job dispatched inside a running
exactly-once job joins its transaction (the Dispatcher does: `engine.dispatch.RUNNING_JOB`).

`App(..., eager=True)` sends nothing to Kafka: every dispatch runs at once in this process
(`api.eager`), with the same validation, retry decisions and dead-letter copies, recorded in
`app.eager_results` (a test double for unit tests; README "Quick start in Python").
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, overload

from protojobs.api import signature
from protojobs.engine.attempt import Context as JobContext
from protojobs.model.durations import Delay, delay_ms, epoch_ms

if TYPE_CHECKING:
    from protojobs.api.eager import EagerResult, EagerRunner
    from protojobs.config import Settings
    from protojobs.engine.attempt import Handler
    from protojobs.engine.dispatch import BulkResult, Dispatcher
    from protojobs.engine.worker import Worker

__all__ = ["App", "AppJob", "JobContext", "load_app"]

P = ParamSpec("P")
R = TypeVar("R")


def _is_context(annotation: Any) -> bool:
    return annotation is JobContext


class AppJob(Generic[P, R]):
    """A decorated function: call it to run it here, `.dispatch(...)` to queue it."""

    def __init__(self, app: App, func: Callable[P, R], name: str, queue: str, max_attempts: int | None,
                 schema: Mapping[str, Any] | None) -> None:
        self.app = app
        self.func = func
        self.name = name
        self.queue = queue
        self.max_retries = max_attempts  # read by engine.attempt.Handler.policy (jobs.toml wins)
        self._schema = dict(schema) if schema is not None else None
        self._types = signature.hints(func)
        params = signature.payload_params(func, _is_context)
        self._params = {p.name for p in params}
        self._required = [p.name for p in params if p.default is p.empty]
        self._extra = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(func).parameters.values())
        self._context = next((n for n, t in self._types.items() if _is_context(t)), None)
        self.__name__ = getattr(func, "__name__", name)
        self.__doc__ = func.__doc__
        self.__wrapped__ = func
        if inspect.iscoroutinefunction(func):
            self.handle = self._handle_async  # type: ignore[method-assign]

    @property
    def schema(self) -> dict[str, Any]:
        """The payload's JSON Schema: the decorator's `schema=`, else derived from the signature
        (on first use: TypeError for an annotation with no JSON form, unless jobs.toml names a
        schema for the queue, which is then used instead)."""
        if self._schema is None:
            self._schema = signature.schema_for(self.func, _is_context)
        return self._schema

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now (no queue, no retry)."""
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<job {self.name} on queue {self.queue!r}>"

    # --- sending -------------------------------------------------------------------------------

    def payload(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON payload of a call's keyword arguments (TypeError: not this signature's)."""
        unknown = sorted(set(kwargs) - self._params)
        if unknown and not self._extra:
            raise TypeError(f"{self.name}() got unexpected argument(s) {', '.join(unknown)}")
        missing = [name for name in self._required if name not in kwargs]
        if missing:
            raise TypeError(f"{self.name}() is missing argument(s) {', '.join(missing)}")
        return {k: signature.to_json(v) for k, v in kwargs.items()}

    @overload
    def dispatch(self, *, wait: Literal[True] = ..., **kwargs: Any) -> str: ...

    @overload
    def dispatch(self, *, wait: Literal[False], **kwargs: Any) -> Future[str]: ...

    def dispatch(self, **kwargs: Any) -> str | Future[str]:
        """Queue the job; return its id once the broker acknowledged it (inside an exactly-once
        job: once buffered in its transaction). `wait=False`: a Future of the id instead (a
        job with a parameter named `wait` gets it as an argument: say `_wait=False`).
        `_key`, `_job_id`, `_delay` and `_at` are the Dispatcher's options."""
        wait = kwargs.pop("_wait", True)
        if "wait" in kwargs and "wait" not in self._params:
            wait = kwargs.pop("wait")
        options, data = _split(kwargs)
        return self.app.send(self, data, options, wait=bool(wait))

    def dispatch_later(self, delay_or_at: Delay | datetime, **kwargs: Any) -> str:
        """Queue the job to run no earlier than a delay ("5m", "1h30m", seconds, a timedelta)
        from now, or at an aware datetime; return its id once acknowledged."""
        options, data = _split(kwargs)
        options.update(_when(delay_or_at))
        result = self.app.send(self, data, options, wait=True)
        assert isinstance(result, str)
        return result

    async def dispatch_async(self, **kwargs: Any) -> str:
        """`dispatch` for an event loop: awaits the ack without blocking the loop."""
        options, data = _split(kwargs)
        return await self.app.send_async(self, data, options)

    async def dispatch_many_async(self, calls: Iterable[Mapping[str, Any]], **options: Any) -> BulkResult:
        """Queue one job per mapping of keyword arguments; await every ack."""
        return await self.app.send_many_async(self, [self.payload(c) for c in calls], options)

    # --- running (the engine's Handler calls `handle`) ------------------------------------------

    def arguments(self, data: Mapping[str, Any], ctx: JobContext | None) -> dict[str, Any]:
        kwargs = {k: signature.from_json(self._types.get(k, Any), v) for k, v in data.items()}
        if self._context is not None:
            kwargs[self._context] = ctx
        return kwargs

    def handle(self, data: Mapping[str, Any], ctx: JobContext) -> Any:
        func: Callable[..., Any] = self.func
        return func(**self.arguments(data, ctx))

    async def _handle_async(self, data: Mapping[str, Any], ctx: JobContext) -> Any:
        func: Callable[..., Any] = self.func
        return await func(**self.arguments(data, ctx))


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    options = {k[1:]: kwargs.pop(k) for k in [k for k in kwargs if k in ("_key", "_job_id", "_delay", "_at")]}
    return options, kwargs


def _when(delay_or_at: Delay | datetime) -> dict[str, Any]:
    if isinstance(delay_or_at, datetime):
        epoch_ms(delay_or_at)  # a naive datetime is refused here
        return {"at": delay_or_at}
    delay_ms(delay_or_at)
    return {"delay": delay_or_at}


class App:
    """Decorated jobs over one jobs.toml (a path, a dict of its tables, or None: $PROTOJOBS_CONFIG
    or ./jobs.toml, else the built-in defaults). Thread-safe; one per application."""

    def __init__(self, config: str | Path | Mapping[str, Any] | None = None, *, eager: bool = False) -> None:
        self.config = config
        self.eager = eager
        self.jobs: dict[str, AppJob[Any, Any]] = {}
        self.eager_results: list[EagerResult] = []
        self._settings: Settings | None = None
        self._dispatcher: Dispatcher | None = None
        self._runner: EagerRunner | None = None
        self._lock = threading.RLock()
        self._options: dict[str, dict[str, Any]] = {}  # queue -> the decorators' queue options

    # --- declaring -------------------------------------------------------------------------------

    @overload
    def job(self, func: Callable[P, R], /) -> AppJob[P, R]: ...

    @overload
    def job(self, func: None = None, /, *, queue: str = ..., name: str | None = ..., max_attempts: int | None = ...,
            schema: Mapping[str, Any] | None = ...,
            **queue_options: Any) -> Callable[[Callable[P, R]], AppJob[P, R]]: ...

    def job(self, func: Callable[P, R] | None = None, /, *, queue: str = "default", name: str | None = None,
            max_attempts: int | None = None, schema: Mapping[str, Any] | None = None,
            **queue_options: Any) -> AppJob[P, R] | Callable[[Callable[P, R]], AppJob[P, R]]:
        """Declare a job: `name` (default: the function's name) is the envelope's `job`;
        `queue_options` are [queues.<queue>] keys (concurrency, timeout, ordering, key, ...) that
        jobs.toml overrides; `schema` replaces the one derived from the signature."""

        def declare(f: Callable[P, R]) -> AppJob[P, R]:
            job = AppJob(self, f, name or f.__name__, queue, max_attempts, schema)
            with self._lock:
                if job.name in self.jobs and self.jobs[job.name].func is not f:
                    raise ValueError(f"two jobs named {job.name!r}: give one of them name=...")
                merged = self._options.setdefault(queue, {})
                clash = {k for k in queue_options if k in merged and merged[k] != queue_options[k]}
                if clash:
                    raise ValueError(f"jobs on queue {queue!r} disagree on {', '.join(sorted(clash))}")
                merged.update(queue_options)
                self.jobs[job.name] = job
                self._reset()
            return job

        return declare(func) if func is not None else declare

    # --- the settings, the Dispatcher, workers ------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """jobs.toml with the decorated jobs' queues (see the module for precedence)."""
        with self._lock:
            if self._settings is None:
                self._settings = self._build()
            return self._settings

    def _build(self) -> Settings:
        from protojobs import config as cfg
        from protojobs.config.load import config_path

        code = {q: dict(options) for q, options in self._options.items()}
        if isinstance(self.config, Mapping):
            settings = cfg.from_dict(self.config, Path.cwd(), code_queues=code)
        else:
            path = config_path(self.config)
            if self.config is None and not path.exists():
                settings = cfg.from_dict({}, Path.cwd(), code_queues=code)
            else:
                settings = cfg.load(path, code_queues=code)
        queues = dict(settings.queues)
        for name, q in settings.queues.items():
            jobs = [j for j in self.jobs.values() if j.queue == name]
            if jobs and q.schema_path is None and q.handler is None and not q.jobs:
                schemas = [j.schema for j in jobs]
                derived = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
                # its jobs list names the decorated jobs, so a dispatch without a job name (the
                # CLI's, or `dispatch(queue, data)`) picks a queue's only job as for jobs.toml's
                queues[name] = dataclasses.replace(q, schema=MappingProxyType(derived), jobs=tuple(
                    f"{j.func.__module__}:{j.name}" for j in jobs))
        return dataclasses.replace(settings, queues=queues)

    def handlers(self) -> dict[str, dict[str, Handler]]:
        """queue -> {job name: handler}: what `Worker(handlers=...)` takes."""
        from protojobs.engine.attempt import Handler

        out: dict[str, dict[str, Handler]] = {}
        for job in self.jobs.values():
            out.setdefault(job.queue, {})[job.name] = Handler(job)
        return out

    def dispatcher(self) -> Dispatcher:
        from protojobs.engine.dispatch import Dispatcher

        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = Dispatcher(self.settings)
            return self._dispatcher

    def worker(self, queues: Iterable[str] | None = None, **options: Any) -> Worker:
        """A Worker for `queues` (default: every queue) running the decorated jobs; `options`
        are WorkerOptions fields. Run it with `.run()` (in a thread: `.stop()` ends it)."""
        from protojobs.engine.worker import Worker, WorkerOptions

        return Worker(self.settings, WorkerOptions(queues=list(queues) if queues else None, **options),
                      handlers=self.handlers())

    def configure(self, config: str | Path | Mapping[str, Any] | None = None, *, eager: bool | None = None) -> None:
        """Use another jobs.toml (or dict), and/or switch eager mode; the jobs stay declared."""
        with self._lock:
            self.config = config
            if eager is not None:
                self.eager = eager
            self._reset()

    def close(self) -> None:
        """Flush and close the Dispatcher (and the eager runner's event loop)."""
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
            runner, self._runner = self._runner, None
        if dispatcher is not None:
            dispatcher.close()
        if runner is not None:
            runner.close()

    def _reset(self) -> None:
        self._settings = None
        self.close()

    # --- sending (AppJob's methods land here) ------------------------------------------------------------

    def dispatch(self, queue: str, data: Any, **options: Any) -> str:
        """A job of a queue by name, for queues whose handler jobs.toml names (no decorated
        job): the id once acknowledged, as `Dispatcher.dispatch` (same options: `key`,
        `job_id`, `delay`, `at`, `job`); in eager mode it runs at once, like a decorated job's."""
        if self.eager:
            return self.runner().dispatch(queue, data, **options)
        return self.dispatcher().dispatch(queue, data, **options)

    def send(self, job: AppJob[Any, Any], data: dict[str, Any], options: dict[str, Any],
             wait: bool = True) -> str | Future[str]:
        payload = job.payload(data)
        if self.eager:
            job_id = self.runner().dispatch(job.queue, payload, job=job.name, **options)
            if wait:
                return job_id
            done: Future[str] = Future()
            done.set_result(job_id)
            return done
        dispatcher = self.dispatcher()
        if wait:
            return dispatcher.dispatch(job.queue, payload, job=job.name, **options)
        return dispatcher.submit(job.queue, payload, job=job.name, **options)

    async def send_async(self, job: AppJob[Any, Any], data: dict[str, Any], options: dict[str, Any]) -> str:
        payload = job.payload(data)
        if self.eager:
            return self.runner().dispatch(job.queue, payload, job=job.name, **options)
        return await self.dispatcher().dispatch_async(job.queue, payload, job=job.name, **options)

    async def send_many_async(self, job: AppJob[Any, Any], payloads: list[dict[str, Any]],
                              options: dict[str, Any]) -> BulkResult:
        if self.eager:
            return self.runner().dispatch_many(job.queue, payloads, job=job.name, **options)
        return await self.dispatcher().dispatch_many_async(job.queue, payloads, job=job.name, **options)

    def runner(self) -> EagerRunner:
        from protojobs.api.eager import EagerRunner

        with self._lock:
            if self._runner is None:
                self._runner = EagerRunner(self.settings, self.handlers(), self.eager_results)
            return self._runner


def load_app(target: str) -> App:
    """The App named by `module:attribute` (as `protojobs run --app` takes it); the current
    directory is importable, as it is for `python -m`."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{target!r}: write module:attribute, e.g. myapp.jobs:app")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        raise TypeError(f"{target} is a {type(obj).__name__}, not a protojobs.App")
    return obj
