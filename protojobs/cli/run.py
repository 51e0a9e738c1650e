"""`protojobs run`: a worker (with the delay router and the scheduler beside it) per process.

With `--processes 1` the worker runs in this process; with N > 1, `engine.supervisor` runs N
spawned children. `--metrics-port` serves /metrics, /healthz and /readyz for all of them
(`observe.health`), on `--metrics-host` (default 127.0.0.1: this host only). Exit codes:
0 stopped cleanly, 1 failed, 3 fenced (a newer worker owns this process's exactly-once slot,
or a transaction's commit could not be settled: the next process of the slot settles it),
4 wedged (a `--processes` child whose queue had more handlers hung past their timeout than
`--max-hung`: it committed what finished and exited, and the supervisor starts it again; a
single process stays up and /healthz reports the wedged queue). `limits` are `WorkerOptions`
fields (`--max-uncommitted`, `--commit-every`, `--max-hung`, `--shutdown-timeout`, `--burst`).
SIGUSR1 prints every thread's stack to stderr (as Celery's worker does) and the process goes
on: for a worker that looks stuck.

`--concurrency N` (or `QUEUE=N`, repeatable) overrides jobs.toml's concurrency of every queue (of
that queue) in this command. `--burst` stops each worker once its queues are drained
(`engine.burst`) and exits 0.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import click

from protojobs import config
from protojobs.api.app import load_app
from protojobs.cli import base
from protojobs.engine.attempt import Handler
from protojobs.engine.router import Router, RouterThread
from protojobs.engine.scheduler import Scheduler, SchedulerThread
from protojobs.engine.supervisor import supervise
from protojobs.engine.worker import Worker, WorkerOptions
from protojobs.kafka.transactions import Fenced, Uncertain
from protojobs.observe import health, logs, presence


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def work(settings: config.Settings, options: WorkerOptions, router: str = "on", scheduler: bool = True,
         handlers: dict[str, dict[str, Handler]] | None = None) -> int:
    """One process: the worker (unless `router="only"`), the delay router (unless "off") and the
    scheduler (unless False) until stopped. Installs SIGTERM/SIGINT handlers. A router or
    scheduler thread that dies stops the process (exit 1; /healthz names it meanwhile), so that
    its supervisor restarts it instead of letting retries, delays and schedules stall."""
    stop = threading.Event()
    observed = health.Observed(options.slot) if router != "only" else None
    worker = Worker(settings, options, hooks=observed.hooks, handlers=handlers) if observed is not None else None
    on_exit = worker.stop if worker is not None else stop.set
    scheduling = SchedulerThread(Scheduler(settings, options.slot), on_exit=on_exit) if scheduler else None
    if scheduling is not None:
        scheduling.start()
    try:
        return _work(settings, worker, observed, stop, router, scheduling)
    finally:
        if scheduling is not None:
            scheduling.stop()


def _work(settings: config.Settings, worker: Worker | None, observed: health.Observed | None, stop: threading.Event,
          router: str, scheduling: SchedulerThread | None) -> int:
    options = worker.options if worker is not None else WorkerOptions()
    routing = None
    if router != "off" and settings.tiers_ms:  # a router that dies stops the worker: the process restarts
        routing = RouterThread(Router(settings, slot=options.slot, hooks=observed.hooks if observed else ()),
                               on_exit=worker.stop if worker else stop.set)
        routing.start()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        if worker is not None:
            worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack
    try:
        if worker is None:
            say("protojobs: delay router started")
            while not stop.wait(0.2):
                if routing is not None and not routing.thread.is_alive():
                    return 1
            return _stop_router(routing) or _died(scheduling)
        assert observed is not None
        observed.start(worker, (routing, scheduling))
        present = presence.Presence(settings, options.slot).start(worker, (routing, scheduling))
        say(f"protojobs: worker started for {', '.join(q.name for q in worker.queues.values())} "
            f"(group {settings.kafka.group_id})" + (", delay router on" if routing else ""))
        try:
            counters = worker.run()
        except Fenced as err:
            why = "the next worker of this slot settles it" if isinstance(err, Uncertain) else \
                "a newer worker owns this slot"
            say(f"protojobs: {err}; stopping ({why})")
            present.stop(clean=False)
            _stop_router(routing)
            return 3
        except BaseException:
            present.stop(clean=False)  # its last record stays: the dashboard shows it as lost
            raise
        finally:
            observed.stop()
        present.stop(clean=True)
        say(f"\nprotojobs: worker stopped: {counters.done} done, {counters.retried} retried, "
            f"{counters.dead} dead-lettered" + (f", {counters.parked} parked" if counters.parked else ""))
        code = _stop_router(routing) or _died(scheduling)
        if worker.wedged_on:
            say(f"protojobs: worker {options.slot} stopped wedged ("
                + "; ".join(f"queue {q}: {n} handlers hung past their timeout" for q, n in worker.wedged_on.items())
                + "); exiting with 4")
            return WEDGED
        return code
    finally:
        if routing is not None and routing.thread.is_alive():
            routing.stop()


WEDGED = 4


def _stop_router(routing: RouterThread | None) -> int:
    if routing is None:
        return 0
    routing.stop()
    if routing.error is not None:
        say(f"protojobs: the delay router stopped: {routing.error}")
        return 1
    return 0


def _died(scheduling: SchedulerThread | None) -> int:
    """1 when the scheduler thread died (it stopped the worker), else 0."""
    why = scheduling.failure() if scheduling is not None else None
    if why is None:
        return 0
    say(f"protojobs: the scheduler stopped: {why}")
    return 1


def with_concurrency(settings: config.Settings, concurrency: Mapping[str, int] | None) -> config.Settings:
    """`settings` with the concurrency of the queues named in `concurrency` (`"*"`: every queue)."""
    if not concurrency:
        return settings
    queues = {name: dataclasses.replace(q, concurrency=concurrency.get(name, concurrency.get("*", q.concurrency)))
              for name, q in settings.queues.items()}
    return dataclasses.replace(settings, queues=queues)


def _child(path: str | None, queues: Sequence[str] | None, max_jobs: int, router: str, scheduler: bool,
           limits: Mapping[str, Any], concurrency: Mapping[str, int], app: str | None, slot: int) -> None:
    logs.configure_from_env()
    settings, handlers = _load(path, app)
    settings = with_concurrency(settings, concurrency)
    options = WorkerOptions(queues=queues, max_jobs=max_jobs, slot=slot, exit_when_wedged=True, **limits)
    sys.exit(work(settings, options, router, scheduler, handlers))


def _load(path: str | None, app: str | None) -> tuple[config.Settings, dict[str, dict[str, Handler]] | None]:
    """jobs.toml, or with `--app module:app` the App's settings (from the config it names:
    `--config` is not read) and its decorated jobs' handlers."""
    if app is None:
        return config.load(path), None
    loaded = load_app(app)
    return loaded.settings, loaded.handlers()


def _restarted(slot: int, pid: int | None, code: int | None) -> None:
    why = " (wedged by handlers hung past their timeout)" if code == WEDGED else ""
    say(f"protojobs: worker {slot} exited with {code}{why}; restarting it")
    if pid is not None:
        health.child_exited(pid)


def run(path: str | None, queues: Sequence[str] | None = None, max_jobs: int = 0, processes: int = 1,
        status: bool | None = None, router: str = "on", slot: int = 0, metrics_port: int | None = None,
        scheduler: bool = True, limits: Mapping[str, Any] | None = None,
        metrics_host: str = health.DEFAULT_HOST, concurrency: Mapping[str, int] | None = None,
        app: str | None = None) -> int:
    try:
        settings, handlers = _load(path, app)
    except config.ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        print(f"protojobs: --app {app}: {err}", file=sys.stderr)
        return 1
    unknown = sorted(set(concurrency or ()) - set(settings.queues) - {"*"})
    if unknown:
        print(f"protojobs: --concurrency: unknown queue(s) {unknown}", file=sys.stderr)
        return 1
    settings = with_concurrency(settings, concurrency)
    if metrics_port is not None:  # /metrics, /healthz, /readyz for every process of this command
        try:
            slots = () if router == "only" else range(processes) if processes > 1 else (slot,)
            server = health.Server(settings, metrics_port, slots, host=metrics_host).start()
        except OSError as err:
            print(f"protojobs: cannot serve metrics on {metrics_host} port {metrics_port}: {err}", file=sys.stderr)
            return 1
        say(f"protojobs: /metrics, /healthz and /readyz on {metrics_host} port {server.port}")
        try:
            return run(path, queues, max_jobs, processes, status, router, slot, scheduler=scheduler, limits=limits,
                       concurrency=concurrency, app=app)
        finally:
            server.stop()
    limits = dict(limits or {})
    if processes <= 1:
        show = sys.stderr.isatty() if status is None else status
        return work(settings, WorkerOptions(queues=queues, max_jobs=max_jobs, status=show, slot=slot, **limits), router,
                    scheduler, handlers)
    return supervise(_child, (path, queues, max_jobs, router, scheduler, limits, dict(concurrency or {}), app),
                     processes, _restarted)


def _concurrency(values: Sequence[str]) -> dict[str, int]:
    """`--concurrency 8` (every queue) and `--concurrency emails=4` (one queue) -> {"*": 8, "emails": 4}."""
    found: dict[str, int] = {}
    for text in values:
        name, _, number = text.rpartition("=")
        value = base.COUNT.convert(number, None, None)
        if value < 1:
            raise click.BadParameter(f"{text!r}: the concurrency must be at least 1", param_hint="--concurrency")
        found[name or "*"] = value
    return found


@base.command("run")
@click.option("--queue", "queues", multiple=True, help="only this queue (repeatable)")
@click.option("--concurrency", "concurrency", multiple=True, metavar="N|QUEUE=N",
              help="handlers run at once per queue, overriding jobs.toml (QUEUE=N: that queue only; repeatable)")
@click.option("--burst", is_flag=True,
              help="exit 0 once the queues are drained (everything queued at start finished and committed)")
@click.option("--max-jobs", type=base.COUNT, default=0,
              help="run exactly N jobs, commit them and stop; the rest stay queued (0: run until stopped)")
@click.option("--processes", type=int, default=1, show_default=True, help="worker processes in the group")
@click.option("--slot", type=int, default=0,
              help="process slot on this host (exactly-once transactional.id); --processes numbers its own")
@click.option("--no-router", is_flag=True, help="do not run the delay-tier router here")
@click.option("--router-only", is_flag=True, help="run only the delay-tier router")
@click.option("--no-scheduler", is_flag=True, help="do not take part in leading the periodic schedules here")
@click.option("--metrics-port", type=int, help="serve /metrics, /healthz and /readyz for all processes on this port")
@click.option("--metrics-host", default=health.DEFAULT_HOST, show_default=True,
              help="the address --metrics-port listens on (0.0.0.0: every interface)")
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="text", show_default=True,
              help="text, or one JSON object per line with the job's fields")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default=None, help=f"the lowest level logged (default ${logs.ENV_LEVEL} or INFO)")
@click.option("--max-uncommitted", type=base.COUNT, default=5000, show_default=True,
              help="pause a partition while N of its jobs are started but not committable (a crash runs them "
                   "again; 0: no bound)")
@click.option("--commit-every", type=base.COUNT, default=500, show_default=True,
              help="commit once N jobs finished since the last commit, and every second (0: every second only); "
                   "exactly-once queues commit their transaction every second, or once a partition has half of "
                   "--max-uncommitted uncommitted")
@click.option("--max-hung", type=base.COUNT, default=0,
              help="a queue with more than N handlers hung past their timeout is wedged: /healthz fails, a "
                   "--processes child is recycled (default 0: 2 x concurrency)")
@click.option("--shutdown-timeout", type=base.SECONDS, default=0.0,
              help="on SIGTERM wait at most this long for running jobs, then commit what finished and exit "
                   "(default 0: the longest queue timeout + 5 s)")
def run_cmd(queues: tuple[str, ...], concurrency: tuple[str, ...], burst: bool, log_format: str,
            log_level: str | None, no_router: bool, router_only: bool, no_scheduler: bool, **options: Any) -> int:
    """Run workers for the queues of jobs.toml (exit 0 stopped, 1 failed, 3 fenced, 4 wedged)."""
    if no_router and router_only:
        raise click.UsageError("--no-router and --router-only exclude each other")
    if burst and router_only:
        raise click.UsageError("--burst drains queues: it needs a worker (not --router-only)")
    per_queue = _concurrency(concurrency)
    if log_level is not None:  # and for the spawned workers
        os.environ[logs.ENV_LEVEL] = log_level.upper()
    logs.configure(log_format)  # and $PROTOJOBS_LOG_FORMAT for the spawned workers
    limits = {key: options.pop(key) for key in ("max_uncommitted", "commit_every", "max_hung", "shutdown_timeout")}
    if burst:
        limits["burst"] = True
    return run(base.config_path(), queues=list(queues) or None, max_jobs=options["max_jobs"],
               processes=options["processes"], router="off" if no_router else "only" if router_only else "on",
               slot=options["slot"], metrics_port=options["metrics_port"], scheduler=not no_scheduler, limits=limits,
               metrics_host=options["metrics_host"], concurrency=per_queue, app=base.app_target())
