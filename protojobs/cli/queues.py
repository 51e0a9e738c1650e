"""`protojobs stats | clear | retry-plan | topics plan|apply`: print results, return exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from protojobs.cli import base
from protojobs.cli.common import load
from protojobs.config import Settings
from protojobs.ops import clear as clearing
from protojobs.ops import topics
from protojobs.ops.errors import UnknownQueue
from protojobs.ops.retry_plan import retry_plan_rows
from protojobs.ops.stats import stats_data, unknown_queues


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
    if base.tty():
        _stats_table(data)
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


def _stats_table(data: dict[str, Any]) -> None:
    print(f"group {data['group']}: {len(data['members'])} member(s)")
    if data["members"]:
        base.print_table(("MEMBER", "HOST", "ASSIGNMENT"),
                         [(m["client_id"], m["host"], ", ".join(m["assignment"]) or "-") for m in data["members"]])
    print()
    base.print_table(("QUEUE", "DEPTH", "PARTITIONS"),
                     [(name, q["depth"], " ".join(f"p{p}={d}" for p, d in q["partitions"].items()))
                      for name, q in data["queues"].items()])
    rows = [("delay tier", name, n) for name, n in data["delayed"].items()]
    rows += [("dead letter", name, n) for name, n in data["dead_letter"].items()]
    if rows:
        print()
        base.print_table(("WAITING IN", "TOPIC", "JOBS"), rows)


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


def topics_command(path: str | None, action: str, as_json: bool = False) -> int:
    """Print the plan (and with `apply` carry it out); 1 when a change is unsafe."""
    settings = load(path)
    if settings is None:
        return 1
    try:
        plan = topics.plan(settings)
        if as_json:
            return _topics_json(plan, action)
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


def _topics_json(plan: topics.TopicPlan, action: str) -> int:
    """`{"changes": [{topic, action, detail, unsafe}], "applied": N | null}`; 1 when a change is unsafe."""
    changes = [{"topic": c.topic, "action": c.action, "detail": c.detail, "unsafe": c.unsafe} for c in plan.changes]
    applied = len(topics.apply(plan)) if action == "apply" and plan.changes else (0 if action == "apply" else None)
    base.print_json({"changes": changes, "applied": applied})
    return 1 if plan.unsafe else 0


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


_queues = click.option("--queue", "queues", multiple=True, help="only this queue (repeatable)")


@base.command("stats", json=True)
@_queues
def stats_cmd(queues: tuple[str, ...]) -> int:
    """Depth, delayed and dead-lettered jobs, and group members (a table on a terminal; --json for scripts)."""
    return stats(base.config_path(), list(queues) or None, base.as_json())


@base.command("clear")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="really delete (without it: say how many, exit 2)")
def clear_cmd(queue: str, yes: bool) -> int:
    """Delete QUEUE's pending jobs."""
    return clear(base.config_path(), queue, yes)


@base.command("retry-plan")
@_queues
def retry_plan_cmd(queues: tuple[str, ...]) -> int:
    """Each queue's retry schedule: delays, tiers, worst lateness (exit 1 when a delay cannot be kept)."""
    return retry_plan(base.config_path(), list(queues) or None)


@base.group("topics")
def topics_group() -> None:
    """The topics jobs.toml implies: plan (show) or apply (create / alter)."""


@base.command("plan", parent=topics_group, json=True)
def topics_plan_cmd() -> int:
    """Show what apply would change (exit 1 when a change is unsafe)."""
    return topics_command(base.config_path(), "plan", base.as_json())


@base.command("apply", parent=topics_group, json=True)
def topics_apply_cmd() -> int:
    """Create and alter the topics (unsafe changes are refused: exit 1)."""
    return topics_command(base.config_path(), "apply", base.as_json())
