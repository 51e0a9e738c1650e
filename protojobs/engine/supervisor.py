"""`protojobs run`: worker processes in one consumer group, supervised.

With `--processes 1` the worker runs in this process. With N > 1, N children are started with
the spawn method (librdkafka threads and fork do not mix); a child that dies unexpectedly is
reported and restarted; SIGTERM/SIGINT is passed on to every child (a second one stops them at
once) and the supervisor exits when they have.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from protojobs import config
from protojobs.engine.router import Router, RouterThread
from protojobs.engine.scheduler import Scheduler, SchedulerThread
from protojobs.engine.worker import Worker, WorkerOptions
from protojobs.kafka.transactions import Fenced
from protojobs.observe import health, logs

log = logging.getLogger(__name__)


def work(settings: config.Settings, options: WorkerOptions, router: str = "on", scheduler: bool = True) -> int:
    """`_work`, with the scheduler (protojobs.scheduler: leads or waits to lead the periodic
    schedules) in a thread beside it unless `scheduler` is False."""
    scheduling = SchedulerThread(Scheduler(settings, options.slot)).start() if scheduler else None
    try:
        return _work(settings, options, router)
    finally:
        if scheduling is not None:
            scheduling.stop()


def _work(settings: config.Settings, options: WorkerOptions, router: str = "on") -> int:
    """Run one worker (and, unless `router` is "off", the delay router beside it) in this
    process until stopped; `router="only"` runs just the router. Installs signal handlers."""
    stop = threading.Event()
    worker = Worker(settings, options) if router != "only" else None
    if worker is not None:
        health.attach(worker, options.slot)  # metrics (--metrics-port), tracing (otel), heartbeat
    routing = RouterThread(Router(settings, slot=options.slot)).start() if router != "off" and settings.tiers_ms else None

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        if worker is not None:
            worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if worker is None:
        print("protojobs: delay router started", file=sys.stderr, flush=True)
        while not stop.wait(0.2):
            if routing is not None and not routing.thread.is_alive():
                return 1
    else:
        names = ", ".join(q.name for q in worker.queues.values())
        print(f"protojobs: worker started for {names} (group {settings.kafka.group_id})"
              + (", delay router on" if routing else ""), file=sys.stderr, flush=True)
        try:
            counters = worker.run()
        except Fenced as err:
            print(f"protojobs: {err}; stopping (a newer worker owns this slot)", file=sys.stderr, flush=True)
            if routing is not None:
                routing.stop()
            return 3
        print(f"\nprotojobs: worker stopped: {counters.done} done, {counters.retried} retried, "
              f"{counters.dead} dead-lettered", file=sys.stderr, flush=True)
    if routing is not None:
        routing.stop()
        if routing.error is not None:
            return 1
    return 0


def _child(path: str | None, queues: Sequence[str] | None, max_jobs: int, router: str, slot: int,
           scheduler: bool = True) -> None:
    logs.configure_from_env()
    settings = config.load(path)
    sys.exit(work(settings, WorkerOptions(queues=queues, max_jobs=max_jobs, slot=slot), router, scheduler))


def run(path: str | None, queues: Sequence[str] | None = None, max_jobs: int = 0, processes: int = 1,
        status: bool | None = None, router: str = "on", slot: int = 0, metrics_port: int | None = None,
        scheduler: bool = True) -> int:
    try:
        settings = config.load(path)
    except config.ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    if metrics_port is not None:  # /metrics, /healthz, /readyz for every process of this command
        try:
            slots = () if router == "only" else range(processes) if processes > 1 else (slot,)
            server = health.Server(settings, metrics_port, slots).start()
        except OSError as err:
            print(f"protojobs: cannot serve metrics on port {metrics_port}: {err}", file=sys.stderr)
            return 1
        print(f"protojobs: /metrics, /healthz and /readyz on port {server.port}", file=sys.stderr, flush=True)
        try:
            return run(path, queues, max_jobs, processes, status, router, slot, scheduler=scheduler)
        finally:
            server.stop()
    if processes <= 1:
        show = sys.stderr.isatty() if status is None else status
        return work(settings, WorkerOptions(queues=queues, max_jobs=max_jobs, status=show, slot=slot), router,
                    scheduler)
    return supervise(path, queues, max_jobs, processes, router, scheduler)


def supervise(path: str | None, queues: Sequence[str] | None, max_jobs: int, processes: int,
              router: str = "on", scheduler: bool = True) -> int:
    ctx = multiprocessing.get_context("spawn")
    signals: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        signals.append(signum)
        for child in children:
            if child.is_alive() and child.pid:
                child.terminate() if len(signals) == 1 else child.kill()

    def start(slot: int) -> Any:
        child = ctx.Process(target=_child, args=(path, queues, max_jobs, router, slot, scheduler), name=f"protojobs-worker-{slot}")
        child.start()
        return child

    children = [start(i) for i in range(processes)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while any(c.is_alive() for c in children):
        time.sleep(0.2)
        for slot, child in enumerate(children):
            if not child.is_alive() and not signals and child.exitcode not in (0, None):
                print(f"protojobs: worker {slot} exited with {child.exitcode}; restarting it",
                      file=sys.stderr, flush=True)
                health.child_exited(child.pid)
                children[slot] = start(slot)
    return 0 if all(c.exitcode == 0 for c in children) or signals else 1
