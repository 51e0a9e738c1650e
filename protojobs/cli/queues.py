"""`protojobs dispatch | stats | clear | retry-plan | topics`: print results, return exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protojobs.cli.common import load, parse_time_ms
from protojobs.config import Settings
from protojobs.engine.dispatch import Dispatcher, DispatchError
from protojobs.model.durations import delay_ms
from protojobs.ops import clear as clearing
from protojobs.ops import topics
from protojobs.ops.dispatch_json import FileDispatch, JobFileError, dispatch_file, dispatch_payload
from protojobs.ops.errors import UnknownQueue
from protojobs.ops.retry_plan import retry_plan_rows
from protojobs.ops.stats import stats_data, unknown_queues


def dispatch(path: str | None, queue: str, payload: str | None, file: str | None, key: str | None,
             delay: str | None, at: str | None, job: str | None, job_id: str | None) -> int:
    """Print the job's id (with --file: each job's id) once the broker acknowledged it."""
    settings = load(path)
    if settings is None:
        return 1
    options: dict[str, Any] = {"key": key, "job": job, "job_id": job_id}
    try:
        if delay:
            options["delay"] = delay
            delay_ms(delay)  # a bad delay is a usage error (exit 2), before anything is sent
        if at:
            options["at_ms"] = parse_time_ms(at)
    except ValueError as err:
        print(f"dispatch: {err}", file=sys.stderr)
        return 2
    dispatcher = Dispatcher(settings)
    try:
        if file is not None:
            return _report_file(dispatch_file(dispatcher, queue, Path(file), **options))
        print(dispatch_payload(dispatcher, queue, payload or "", **options))
        return 0
    except JobFileError as err:
        print(err, file=sys.stderr)
        return 1
    except (DispatchError, ValueError) as err:
        print(f"dispatch: {err}", file=sys.stderr)
        return 1
    finally:
        dispatcher.close()


def _report_file(done: FileDispatch) -> int:
    for job_id in done.result.ids:
        print(job_id)
    for index, problem in sorted(done.result.errors.items()):
        print(f"{done.file}: job {index + 1}: {problem}", file=sys.stderr)
    print(f"dispatched {len(done.result.ids)} of {done.jobs} jobs", file=sys.stderr)
    return 0 if done.result.ok else 1


def stats(path: str | None, queues: Sequence[str] | None, as_json: bool) -> int:
    settings = load(path)
    if settings is None:
        return 1
    unknown = unknown_queues(settings, queues)
    if unknown:
        print(f"stats: unknown queue(s) {unknown}", file=sys.stderr)
        return 1
    data = stats_data(settings, queues)
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"group {data['group']}: {len(data['members'])} member(s)")
    for m in data["members"]:
        print(f"  {m['client_id']} {m['host']}: {', '.join(m['assignment']) or '-'}")
    for name, q in data["queues"].items():
        print(f"queue {name}: depth {q['depth']}  ({', '.join(f'p{p}={d}' for p, d in q['partitions'].items())})")
    for name, n in data["delayed"].items():
        print(f"delay tier {name}: {n} waiting")
    for name, n in data["dead_letter"].items():
        print(f"dead letter {name}: {n}")
    return 0


def clear(path: str | None, queue: str, yes: bool) -> int:
    """Delete the queue's pending jobs; without --yes only say how many (exit 2)."""
    settings = load(path)
    if settings is None:
        return 1
    try:
        if not yes:
            would = clearing.pending(settings, queue)
            print(f"clear: would delete {would.records} record(s) of {would.topic}; add --yes to do it",
                  file=sys.stderr)
            return 2
        done = clearing.clear(settings, queue)
    except UnknownQueue as err:
        print(f"clear: {err}", file=sys.stderr)
        return 1
    print(f"cleared {done.records} record(s) from {done.topic}; jobs of {queue} waiting in "
          "delay tiers or retries are dropped when they come due")
    return 0


def topics_command(path: str | None, action: str) -> int:
    """Print the plan (and with `apply` carry it out); 1 when a change is unsafe."""
    settings = load(path)
    if settings is None:
        return 1
    try:
        plan = topics.plan(settings)
        for change in plan.changes:
            print(change)
        if not plan.changes:
            print("topics: the cluster matches jobs.toml")
        if action == "apply" and plan.changes:
            done = topics.apply(plan)
            print(f"topics: applied {len(done)} change(s)")
        return 1 if plan.unsafe else 0
    except topics.AdminError as err:
        print(f"topics: {err}", file=sys.stderr)
        return 1


def retry_plan(path: str | None, queues: Sequence[str] | None) -> int:
    """Print each queue's retry schedule; exit 1 when a delay cannot be kept within tolerance
    (the smallest tier exceeds the delay itself, so lateness could exceed the wait)."""
    settings = load(path)
    if settings is None:
        return 1
    flagged = False
    for name in queues or settings.queues:
        if name not in settings.queues:
            print(f"retry-plan: unknown queue {name!r}", file=sys.stderr)
            return 1
        flagged = _print_retry_plan(settings, name) or flagged
    return 1 if flagged else 0


def _print_retry_plan(settings: Settings, name: str) -> bool:
    """One queue's plan; True when a row is flagged."""
    q = settings.queues[name]
    mode = "blocking (in place, order kept)" if q.blocking_retries else "through delay tiers"
    print(f"queue {name}: policy {q.retry!r}, {settings.retry[q.retry].max_attempts} attempts, retries {mode}")
    flagged = False
    for row in retry_plan_rows(settings, name):
        mark = "  <- smallest tier exceeds this delay" if row["flag"] else ""
        flagged = flagged or row["flag"]
        print(f"  attempt {row['attempt']}: after {row['delay']} (jitter {row['jitter']}), "
              f"via {' > '.join(row['tiers']) or '-'}, late by at most {row['worst_lateness']}{mark}")
    return flagged
