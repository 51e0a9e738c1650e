"""`protojobs schedules list | pause | resume | remove | next`: print what protojobs.ops.schedules
found or did; exit 1 on an invalid config, an unknown schedule or an unreadable topic."""

from __future__ import annotations

import json
import sys
from typing import Any

from confluent_kafka import KafkaException

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
    head = ("NAME", "RULE", "QUEUE", "NEXT FIRE", "LAST FIRED", "STATE")
    lines = [head] + [(r["name"], r["rule"], r["queue"], r["next_fire"] or "-", r["last_fired"] or "-",
                       ("paused" if r["paused"] else "active") + ("" if r["source"] == "jobs.toml" else ", dynamic"))
                      for r in table]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


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


def next_command(path: str | None, name: str, count: int = 5) -> int:
    """The next `count` fire times of a schedule (jobs.toml's without a broker)."""
    settings = load(path, import_handlers=False)
    if settings is None:
        return 1
    try:
        nxt = schedules.next_fires(settings, name, count)
    except schedules.ScheduleError as exc:
        print(f"schedules: {exc}", file=sys.stderr)
        return 1
    for t in nxt.times:
        print(iso(t, nxt.tz) + ("" if nxt.tz == "UTC" else f"  ({iso(t)})"))
    if not nxt.times:
        print(f"{name}: fires no more ({nxt.rule.describe()})")
    return 0
