"""`protojobs run`: a worker (with the delay router and the scheduler beside it) per process.

With `--processes 1` the worker runs in this process; with N > 1, `engine.supervisor` runs N
spawned children. `--metrics-port` serves /metrics, /healthz and /readyz for all of them
(`observe.health`), on `--metrics-host` (default 127.0.0.1: this host only). Exit codes:
0 stopped cleanly, 1 failed, 3 fenced (a newer worker owns this process's exactly-once slot,
or a transaction's commit could not be settled: the next process of the slot settles it),
4 wedged (a `--processes` child whose queue had more handlers hung past their timeout than
`--max-hung`: it committed what finished and exited, and the supervisor starts it again; a
single process stays up and /healthz reports the wedged queue). `limits` are `WorkerOptions`
fields (`--max-uncommitted`, `--commit-every`, `--max-hung`, `--shutdown-timeout`).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from protojobs import config
from protojobs.engine.router import Router, RouterThread
from protojobs.engine.scheduler import Scheduler, SchedulerThread
from protojobs.engine.supervisor import supervise
from protojobs.engine.worker import Worker, WorkerOptions
from protojobs.kafka.transactions import Fenced, Uncertain
from protojobs.observe import health, logs, presence


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def work(settings: config.Settings, options: WorkerOptions, router: str = "on", scheduler: bool = True) -> int:
    """One process: the worker (unless `router="only"`), the delay router (unless "off") and the
    scheduler (unless False) until stopped. Installs SIGTERM/SIGINT handlers. A router or
    scheduler thread that dies stops the process (exit 1; /healthz names it meanwhile), so that
    its supervisor restarts it instead of letting retries, delays and schedules stall."""
    stop = threading.Event()
    observed = health.Observed(options.slot) if router != "only" else None
    worker = Worker(settings, options, hooks=observed.hooks) if observed is not None else None
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


def _child(path: str | None, queues: Sequence[str] | None, max_jobs: int, router: str, scheduler: bool,
           limits: Mapping[str, Any], slot: int) -> None:
    logs.configure_from_env()
    settings = config.load(path)
    options = WorkerOptions(queues=queues, max_jobs=max_jobs, slot=slot, exit_when_wedged=True, **limits)
    sys.exit(work(settings, options, router, scheduler))


def _restarted(slot: int, pid: int | None, code: int | None) -> None:
    why = " (wedged by handlers hung past their timeout)" if code == WEDGED else ""
    say(f"protojobs: worker {slot} exited with {code}{why}; restarting it")
    if pid is not None:
        health.child_exited(pid)


def run(path: str | None, queues: Sequence[str] | None = None, max_jobs: int = 0, processes: int = 1,
        status: bool | None = None, router: str = "on", slot: int = 0, metrics_port: int | None = None,
        scheduler: bool = True, limits: Mapping[str, Any] | None = None,
        metrics_host: str = health.DEFAULT_HOST) -> int:
    try:
        settings = config.load(path)
    except config.ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    if metrics_port is not None:  # /metrics, /healthz, /readyz for every process of this command
        try:
            slots = () if router == "only" else range(processes) if processes > 1 else (slot,)
            server = health.Server(settings, metrics_port, slots, host=metrics_host).start()
        except OSError as err:
            print(f"protojobs: cannot serve metrics on {metrics_host} port {metrics_port}: {err}", file=sys.stderr)
            return 1
        say(f"protojobs: /metrics, /healthz and /readyz on {metrics_host} port {server.port}")
        try:
            return run(path, queues, max_jobs, processes, status, router, slot, scheduler=scheduler, limits=limits)
        finally:
            server.stop()
    limits = dict(limits or {})
    if processes <= 1:
        show = sys.stderr.isatty() if status is None else status
        return work(settings, WorkerOptions(queues=queues, max_jobs=max_jobs, status=show, slot=slot, **limits), router,
                    scheduler)
    return supervise(_child, (path, queues, max_jobs, router, scheduler, limits), processes, _restarted)
