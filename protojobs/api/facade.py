"""The seed's facade in Python's idiom: `Jobs`, a thin layer over the engine.

Dispatch is `engine.dispatch.Dispatcher`, work is `engine.worker.Worker` (with the delay router
beside it), stats is `ops.stats`, clear is `ops.clear` (as `protojobs clear`), failed_jobs / retry are
`ops.dlq`. `Jobs.x(...)` runs on a process-wide default instance (the seed's static facade);
`Jobs(config).x(...)` on an independent one. README "Python API" shows the seed's examples.
"""

from __future__ import annotations

import datetime
import logging
import signal
import threading
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, Generic, ParamSpec, TypeVar, cast

from protojobs.api.events import JobEvent, Listeners
from protojobs.api.job import Job, registered, runnable
from protojobs.engine.hooks import Hooks

if TYPE_CHECKING:
    from protojobs.config import Settings
    from protojobs.engine.dispatch import BulkResult, Dispatcher
    from protojobs.engine.worker import Counters, Worker
    from protojobs.ops.dlq import Entry

__all__ = ["Jobs"]

log = logging.getLogger(__name__)
SEED_KAFKA_KEYS = ("brokers", "group_id", "topic_prefix", "auto_offset_reset", "enable_auto_commit",
                   "compression", "batch_size", "timeout_ms", "debug")


P = ParamSpec("P")
R = TypeVar("R")


class _either(Generic[P, R]):
    """A method that runs on the instance, or, called on the class, on the default instance."""

    def __init__(self, func: Callable[Concatenate[Jobs, P], R]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: Jobs | None, owner: type[Jobs]) -> Callable[P, R]:
        return cast(Callable[P, R], types.MethodType(self.func, obj if obj is not None else owner.default()))


class Jobs:
    """The seed's facade: `Jobs.x()` runs on the default instance, `Jobs(config).x()` on its own."""

    _default: ClassVar[Jobs | None] = None
    _default_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, config: str | Path | Settings | Mapping[str, Any] | None = None) -> None:
        self._settings: Settings | None = None
        self._dispatcher: Dispatcher | None = None
        self._listeners = Listeners()
        self._hooks: list[Hooks] = [self._listeners]
        self._workers: list[Worker] = []
        self._lock = threading.Lock()
        if config is not None:
            self._settings = _settings_from(config)

    @classmethod
    def default(cls) -> Jobs:
        """The process-wide instance that `Jobs.method(...)` calls use."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls()
            return cls._default

    @property
    def settings(self) -> Settings:
        """The configuration; if none was given, $PROTOJOBS_CONFIG or ./jobs.toml."""
        if self._settings is None:
            self._settings = _settings_from(None)
        return self._settings

    @_either
    def configure(self, config: str | Path | Settings | Mapping[str, Any] | None = None) -> None:
        """A path to jobs.toml, a Settings, or a dict (jobs.toml's tables and/or the seed's flat
        keys: driver, brokers, group_id, topic_prefix, ...); None loads ./jobs.toml."""
        settings = _settings_from(config)  # a refused config changes nothing
        self._close_dispatcher()
        self._settings = settings

    @_either
    def dispatch(self, job: type[Job] | Job | str, data: Any = None, queue: str | None = None,
                 delay: float | str | datetime.timedelta | None = None, *, key: str | None = None,
                 job_id: str | None = None, at: datetime.datetime | None = None) -> str:
        """Send a job (Job class, instance or name) to `queue` (default: the class's); return its
        id once the broker acknowledged it. `delay`: as in dispatch_later; `at`: an aware datetime."""
        return self._send(job, data, queue, _when(delay, at), key, job_id)

    @_either
    async def dispatch_async(self, job: type[Job] | Job | str, data: Any = None, queue: str | None = None,
                             delay: float | str | datetime.timedelta | None = None, *, key: str | None = None,
                             job_id: str | None = None, at: datetime.datetime | None = None) -> str:
        """`dispatch` for an event loop: awaits the broker's ack without blocking the loop (the
        Dispatcher's delivery reports resolve it; no thread per call)."""
        name, queue, dispatcher = self._route_for(job, queue, _when(delay, at))
        return await dispatcher.dispatch_async(queue, data, job=name, key=key, job_id=job_id, **_when(delay, at))

    @_either
    async def dispatch_many_async(self, job: type[Job] | Job | str, items: Any, queue: str | None = None,
                                  delay: float | str | datetime.timedelta | None = None, *,
                                  at: datetime.datetime | None = None) -> BulkResult:
        """Send many jobs of one kind (each item is a payload) at producer speed; await every ack."""
        name, queue, dispatcher = self._route_for(job, queue, _when(delay, at))
        return await dispatcher.dispatch_many_async(queue, items, job=name, **_when(delay, at))

    @_either
    def dispatch_later(self, delay: float | str | datetime.timedelta, job: type[Job] | Job | str,
                       data: Any = None, queue: str | None = None, *, key: str | None = None,
                       job_id: str | None = None) -> str:
        """Send a job that runs no earlier than `delay` (seconds, "5m" or a timedelta) from now;
        it waits in the delay tiers. Without tiers: DispatchError, nothing is sent."""
        return self._send(job, data, queue, _when(delay, None), key, job_id)

    dispatchLater = dispatch_later  # noqa: N815 - the seed's spelling

    # --- schedules (protojobs.scheduler): stored on the schedules topic, fired by the leader of
    # the `protojobs run` processes, so they survive restarts; each returns a schedule id.

    @_either
    def schedule_at(self, job: type[Job] | Job | str, when: Any, data: Any = None,
                    queue: str | None = None) -> str:
        """Run `job` once at `when`: a datetime (naive = UTC), ISO 8601 text or epoch seconds."""
        return self._schedule(job, data, queue, at=when)

    @_either
    def schedule_in(self, job: type[Job] | Job | str, delay: float | str | datetime.timedelta,
                    data: Any = None, queue: str | None = None) -> str:
        """Run `job` once after `delay`, through the delay tiers (dispatched now, held there);
        returns the job id. It cannot be unscheduled (unschedule returns False)."""
        import uuid

        return self._send(job, data, queue, _when(delay, None), None, f"sched-in-{uuid.uuid4().hex[:16]}")

    @_either
    def schedule_every(self, job: type[Job] | Job | str, interval: float | str | datetime.timedelta,
                       data: Any = None, queue: str | None = None, *, catch_up: str = "once") -> str:
        """Run `job` every `interval` (seconds, "5m" or a timedelta), the first one interval from now."""
        from protojobs.model.durations import delay_ms
        return self._schedule(job, data, queue, every_ms=delay_ms(interval), catch_up=catch_up)

    @_either
    def schedule_daily(self, job: type[Job] | Job | str, time_of_day: str, data: Any = None,
                       queue: str | None = None, *, tz: str = "UTC", catch_up: str = "once") -> str:
        """Run `job` every day at `time_of_day` ("09:00") in the IANA zone `tz`."""
        return self._schedule(job, data, queue, daily=time_of_day, tz=tz, catch_up=catch_up)

    @_either
    def unschedule(self, schedule_id: str) -> bool:
        """Remove a dynamic schedule; False if there is none with that id."""
        from protojobs.ops import schedules
        return schedules.undefine(self.settings, schedule_id, self._producer().producer)

    scheduleAt, scheduleIn, scheduleEvery, scheduleDaily = (  # noqa: N815 - the seed's spelling
        schedule_at, schedule_in, schedule_every, schedule_daily)

    def _schedule(self, job: type[Job] | Job | str, data: Any, queue: str | None, **rule: Any) -> str:
        from protojobs.ops import schedules
        name, queue = _route(job, queue, self.settings)
        return schedules.schedule(self.settings, queue, name, data, producer=self._producer().producer, **rule)

    def _route_for(self, job: type[Job] | Job | str, queue: str | None,
                   when: dict[str, Any]) -> tuple[str, str, Dispatcher]:
        from protojobs.engine.dispatch import DispatchError
        from protojobs.kafka.clock import now_ms
        from protojobs.model.durations import due_ms

        settings = self.settings
        if due_ms(0, **when) > (now_ms() if "at" in when else 0) and not settings.tiers_ms:
            raise DispatchError("dispatch_later needs delay tiers: add [delays] tiers to jobs.toml "
                                "(the job was not sent)")
        name, queue = _route(job, queue, settings)
        return name, queue, self._producer()

    def _send(self, job: type[Job] | Job | str, data: Any, queue: str | None, when: dict[str, Any],
              key: str | None, job_id: str | None) -> str:
        """Inside a running exactly-once job the job joins its transaction (Dispatcher.joined):
        "job.queued" then means buffered, published with the job's commit or never."""
        name, queue, dispatcher = self._route_for(job, queue, when)
        txn = dispatcher.joined()
        env, topic = dispatcher.prepare(queue, data, job=name, key=key, job_id=job_id, **when)
        self._listeners.emit("job.queuing", job=env, queue=env.queue, id=env.id)
        dispatcher.deliver(env, topic, txn)
        self._listeners.emit("job.queued", job=env, queue=env.queue, id=env.id)
        return env.id

    def _producer(self) -> Dispatcher:
        with self._lock:
            if self._dispatcher is None:
                from protojobs.engine.dispatch import Dispatcher

                self._dispatcher = Dispatcher(self.settings, hooks=self._hooks)
            return self._dispatcher

    def _close_dispatcher(self) -> None:
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            dispatcher.close()

    @_either
    def work(self, queue: str = "default", max_jobs: int = 0, *, router: bool = True) -> Counters:
        """Run a worker (and the delay router) for `queue` in this thread until stop(), or until
        exactly `max_jobs` jobs ran and were committed (0: forever; the rest stay queued). In the
        main thread, SIGTERM/SIGINT stop it unless the application installed its own handlers."""
        from protojobs.engine.worker import Worker, WorkerOptions
        from protojobs.kafka import admin

        settings = self.settings
        worker = Worker(settings, WorkerOptions(queues=[queue], max_jobs=max_jobs), hooks=self._hooks,
                        handlers=_registered_handlers(settings, [queue]))
        self._workers.append(worker)
        restore = _install_signals(self.stop)
        routing = None
        try:
            if router and settings.tiers_ms:
                admin.ensure_topics(settings)  # the router subscribes to the tier topics
                routing = _start_router(settings)
            return worker.run()
        finally:
            restore()
            self._workers.remove(worker)
            if routing is not None:
                routing.stop()

    @_either
    def stop(self) -> None:
        """Stop this instance's workers gracefully (again: at once). Safe in a signal handler."""
        for worker in list(self._workers):
            worker.stop()

    @_either
    def stats(self, queue: str | None = None) -> dict[str, Any]:
        """depth (from offsets), delayed (all queues share the tiers), dead_lettered (its
        dead-letter topic's records), group members; no `queue`: {queue: that dict}."""
        from protojobs.ops.stats import stats_data
        settings = self.settings
        names = [_known(settings, queue)] if queue is not None else list(settings.queues)
        data = stats_data(settings, names)
        delayed = sum(data["delayed"].values())
        out = {name: {"queue": name, "depth": data["queues"][name]["depth"],
                      "partitions": data["queues"][name]["partitions"], "delayed": delayed,
                      "dead_lettered": data["dead_letter"].get(settings.queues[name].dead_letter_topic, 0),
                      "group": data["group"], "members": data["members"]} for name in names}
        return out[queue] if queue is not None else out

    @_either
    def clear(self, queue: str = "default") -> int:
        """Clear the queue as `protojobs clear` does (ops.clear: jobs dispatched before now are
        deleted or dropped, later ones run); return how many records were deleted from its topic."""
        from protojobs.ops import clear
        return clear.clear(self.settings, queue).records

    @_either
    def failed_jobs(self, limit: int = 50, offset: int = 0) -> list[Entry]:
        """Dead-lettered jobs (`dlq.Entry`: job_id, queue, envelope, dead...), newest first."""
        from protojobs.ops import dlq
        return dlq.failed_jobs(self.settings, limit, offset)

    failedJobs = failed_jobs  # noqa: N815 - the seed's spelling

    @_either
    def retry(self, job_id: str) -> bool:
        """Re-run a dead-lettered job (as attempt 1); False when no dead-lettered job has this id."""
        from protojobs.ops import dlq
        return dlq.retry(self.settings, job_id)

    @_either
    def listen(self, event: str, callback: Callable[[JobEvent], Any]) -> Callable[[JobEvent], Any]:
        """Call `callback(JobEvent)` on `event` (one of EVENTS); one that raises is logged only.
        Job events run on the job's lane thread, never on the thread that polls Kafka."""
        self._listeners.add(event, callback)
        return callback

    @_either
    def add_hooks(self, hooks: Hooks) -> None:
        """Typed hooks (protojobs.Hooks) for this instance's dispatches and workers."""
        with self._lock:
            self._hooks.append(hooks)
        self._close_dispatcher()  # the next dispatch builds a Dispatcher with every hook

    @_either
    def reset(self) -> None:
        """Drop listeners, configuration and producer (flushing what it still holds)."""
        self._close_dispatcher()
        with self._lock:
            self._listeners.clear()
            self._hooks[1:] = []
            self._settings = None


def _settings_from(config: str | Path | Settings | Mapping[str, Any] | None) -> Settings:
    from protojobs import config as cfg

    if config is None:
        path = cfg.config_path()
        if not path.exists():
            raise cfg.ConfigError([cfg.ConfigIssue("Jobs", f"not configured: call Jobs.configure(path | dict"
                                                   f" | Settings), set PROTOJOBS_CONFIG, or create {path}")])
        return cfg.load(path)
    if isinstance(config, cfg.Settings):
        return config
    if isinstance(config, str | Path):
        return cfg.load(config)
    if isinstance(config, Mapping):
        return cfg.from_dict(_seed_tree(config), Path.cwd())
    raise TypeError(f"configure() takes a path, a Settings or a dict, not {type(config).__name__}")


def _seed_tree(config: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's dict -> jobs.toml's shape: driver "kafka"; flat keys move into `kafka`."""
    from protojobs.config import ConfigError, ConfigIssue

    tree = dict(config)
    driver = tree.pop("driver", "kafka")
    if driver != "kafka":
        raise ConfigError([ConfigIssue("driver", f"{driver!r} is not supported: protojobs has one driver, 'kafka'")])
    flat = {k: tree.pop(k) for k in SEED_KAFKA_KEYS if k in tree}
    if flat:
        nested = dict(tree.get("kafka") or {})
        both = sorted(set(flat) & set(nested))
        if both:
            raise ConfigError([ConfigIssue(f"kafka.{k}", "given both at the top level and in 'kafka'") for k in both])
        tree["kafka"] = {**nested, **flat}
    return tree


def _route(job: type[Job] | Job | str, queue: str | None, settings: Settings) -> tuple[str, str]:
    """(the envelope's job name, the queue) for a Job class, a Job instance or a name."""
    cls: type[Job] | None
    if isinstance(job, Job):
        cls = type(job)
    elif isinstance(job, type) and issubclass(job, Job):
        cls = job
    elif isinstance(job, str) and job:
        cls = registered(job.rsplit(":", 1)[-1])
        if cls is None:
            return job.rsplit(":", 1)[-1], queue or "default"
    else:
        raise TypeError(f"dispatch() takes a Job class, a Job instance or a job name, not {job!r}")
    return cls.__name__, queue or _queue_of(cls, settings)


def _queue_of(cls: type[Job], settings: Settings) -> str:
    """The class's queue, unless jobs.toml puts the class on another queue (the file wins)."""
    target = f"{cls.__module__}:{cls.__qualname__}"
    declared = [q.name for q in settings.queues.values() if target in (q.handler, *q.jobs)]
    return cls.queue if cls.queue in declared or not declared else declared[0]


def _known(settings: Settings, queue: str) -> str:
    if queue not in settings.queues:
        raise ValueError(f"unknown queue {queue!r} (configured: {', '.join(sorted(settings.queues))})")
    return queue


def _registered_handlers(settings: Settings, queues: list[str]) -> dict[str, dict[str, Any]]:
    """Queues without handler and jobs run the registered Job class their envelope names."""
    from protojobs.engine.attempt import Handler

    out: dict[str, dict[str, Any]] = {}
    for name in queues:
        q = settings.queues.get(name)
        if q is None or q.handler is not None or q.jobs:
            continue
        handlers = out.setdefault(name, {})
        for job_name, cls in runnable().items():
            try:
                handlers[job_name] = Handler(cls)
            except Exception as exc:  # noqa: BLE001 - e.g. an __init__ that needs arguments
                log.warning("Job class %s cannot run on queue %s: %s", job_name, name, exc)
    return out


def _start_router(settings: Settings) -> Any:
    from protojobs.engine.router import Router, RouterThread

    return RouterThread(Router(settings)).start()


def _install_signals(stop: Callable[[], None]) -> Callable[[], None]:
    """SIGTERM/SIGINT -> stop() where no application handler is set; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, signal.default_int_handler, None):
            previous[sig] = current
            signal.signal(sig, lambda _signum, _frame: stop())

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    return restore


def _when(delay: float | str | datetime.timedelta | None, at: datetime.datetime | None) -> dict[str, Any]:
    """The Dispatcher's `delay` / `at` options (model.durations checks them: one vocabulary)."""
    from protojobs.model.durations import delay_ms, epoch_ms

    if at is not None:
        if delay is not None:
            raise ValueError("give either a delay or at=, not both")
        epoch_ms(at)  # a naive datetime is refused here, before anything is built
        return {"at": at}
    return {"delay": delay} if delay_ms(delay) > 0 else {}
