"""`protojobs schedules list | pause | resume | remove | next`: print what protojobs.ops.schedules
found or did; exit 1 on an invalid config, an unknown schedule or an unreadable topic."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from confluent_kafka import KafkaException

from protojobs.cli import base
from protojobs.cli.common import load
from protojobs.model.schedules import iso
from protojobs.ops import schedules


def list_command(path: str | None, as_json: bool = False) -> int:
    settings = load(path, import_handlers=False)
    if settings is None:
        return 1
    try:
        listed = schedules.listing(settings)
    except (KafkaException, TimeoutError) as exc:
        print(f"schedules: cannot read the schedules topic: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(listed, indent=2))
        return 0
    print(f"leader: {listed['leader'] or 'none (no `protojobs run` with the scheduler is up)'}")
    if not listed["schedules"]:
        print("no schedules")
        return 0
    _print_table(listed["schedules"])
    return 0


def _print_table(table: list[dict[str, Any]]) -> None:
    base.print_table(("NAME", "RULE", "QUEUE", "NEXT FIRE", "LAST FIRED", "STATE"),
                     [(r["name"], r["rule"], r["queue"], r["next_fire"] or "-", r["last_fired"] or "-",
                       ("paused" if r["paused"] else "active") + ("" if r["source"] == "jobs.toml" else ", dynamic"))
                      for r in table])


def control_command(path: str | None, action: str, name: str) -> int:
    """pause | resume | remove NAME."""
    settings = load(path, import_handlers=False)
    if settings is None:
        return 1
    try:
        sched = schedules.control(settings, action, name)
    except schedules.ScheduleError as exc:
        print(f"schedules: {exc}", file=sys.stderr)
        return 1
    if action == "remove":
        print(f"{name}: removed")
        return 0
    if action == "resume" and sched.paused:
        print(f"{name}: resumed, but jobs.toml sets paused = true, which still holds it", file=sys.stderr)
        return 1
    print(f"{name}: {'paused' if action == 'pause' else 'resumed (ticks missed while paused are skipped)'}")
    return 0


def next_command(path: str | None, name: str, count: int = 5, as_json: bool = False) -> int:
    """The next `count` fire times of a schedule (jobs.toml's without a broker)."""
    settings = load(path, import_handlers=False)
    if settings is None:
        return 1
    try:
        nxt = schedules.next_fires(settings, name, count)
    except schedules.ScheduleError as exc:
        print(f"schedules: {exc}", file=sys.stderr)
        return 1
    if as_json:
        base.print_json({"name": name, "rule": nxt.rule.describe(), "tz": nxt.tz,
                         "next": [iso(t, nxt.tz) for t in nxt.times]})
        return 0
    for t in nxt.times:
        print(iso(t, nxt.tz) + ("" if nxt.tz == "UTC" else f"  ({iso(t)})"))
    if not nxt.times:
        print(f"{name}: fires no more ({nxt.rule.describe()})")
    return 0


@base.group("schedules")
def schedules_group() -> None:
    """Periodic schedules: list, pause, resume, remove, next fire times."""


@base.command("list", parent=schedules_group, json=True)
def list_cmd() -> int:
    """Every schedule: rule, queue, next and last fire, state, and the scheduler leader."""
    return list_command(base.config_path(), base.as_json())


def _control(action: str, summary: str) -> None:
    @base.command(action, parent=schedules_group, help=summary)
    @click.argument("name")
    def control(name: str) -> int:
        return control_command(base.config_path(), action, name)


_control("pause", "Pause schedule NAME (until resumed).")
_control("resume", "Resume schedule NAME (ticks missed while paused are skipped).")
_control("remove", "Remove the dynamic schedule NAME.")


@base.command("next", parent=schedules_group, json=True)
@click.argument("name")
@click.option("--count", type=base.COUNT, default=5, show_default=True, help="how many fire times")
def next_cmd(name: str, count: int) -> int:
    """The next fire times of schedule NAME (jobs.toml's need no broker)."""
    return next_command(base.config_path(), name, count, base.as_json())
