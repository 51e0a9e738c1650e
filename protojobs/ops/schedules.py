"""The schedules admin: list, pause, resume, remove, next fire times, and dynamic schedules.

The leader (protojobs.engine.scheduler) fires the ticks; these functions read the schedules
topic (`read_book`) and write plain records to it, which the leader's consumer reads as they
come. Dynamic schedules are validated here, so the leader never meets a bad one.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Producer

from protojobs.config import Settings
from protojobs.engine.dispatch import Dispatcher
from protojobs.engine.scheduler import group_of, read_book
from protojobs.kafka import admin
from protojobs.kafka.clients import ErrorWatch, producer_config
from protojobs.kafka.clock import now_ms
from protojobs.kafka.outbox import produce
from protojobs.model import names
from protojobs.model.schedule_book import Book, control_record, def_record, state_record
from protojobs.model.schedules import Rule, Schedule, iso, next_fire, upcoming

__all__ = ["ScheduleError", "Upcoming", "control", "define", "leader", "listing", "next_fires", "read_book",
           "rows", "schedule", "undefine", "write"]


class ScheduleError(ValueError):
    """No such schedule, or the action does not apply to it; the message says why."""


# --- reading and writing the topic ---------------------------------------------------------------


def write(settings: Settings, records: Iterable[tuple[bytes, bytes | None]], producer: Producer | None = None) -> None:
    """Write records to the schedules topic and wait for the broker's acks."""
    admin.ensure_topics(settings)
    producer = producer or Producer(producer_config(settings.kafka, ErrorWatch()))
    topic = names.schedules_topic(settings.kafka.topic_prefix)
    errors: list[str] = []
    for key, value in records:
        produce(producer, topic, value, key, on_delivery=lambda err: errors.append(err.str()) if err else None)
    if producer.flush(30) or errors:
        raise RuntimeError(f"could not write to {topic}: {errors or 'no acknowledgement'}")


def define(settings: Settings, sched: Schedule, producer: Producer | None = None) -> str:
    """Store a dynamic schedule (validated here, so the leader never meets a bad one)."""
    producer = producer or Producer(producer_config(settings.kafka, ErrorWatch()))
    dispatcher = Dispatcher(settings, producer=producer, ensure_topics=False)
    dispatcher.build(sched.queue, dict(sched.data), job=sched.job, now=0)  # PayloadError / DispatchError
    write(settings, [def_record(sched)], producer)
    return sched.name


def undefine(settings: Settings, name: str, producer: Producer | None = None) -> bool:
    """Remove a dynamic schedule; False if there is none of that id."""
    if name not in read_book(settings).defs:
        return False
    write(settings, [def_record(name), state_record(name, None), control_record(name, None, 0)], producer)
    return True


def leader(settings: Settings) -> str | None:
    """Which process leads (its client id and host), if any."""
    try:
        members = admin.group_members(admin.client(settings), group_of(settings))
    except Exception:  # noqa: BLE001 - shown as unknown
        return None
    for m in members:
        if m["assignment"]:
            return f"{m['client_id']} ({m['host'].lstrip('/')})"
    return None


# --- list, pause / resume / remove, next ---------------------------------------------------------


def rows(settings: Settings, book: Book, now: int) -> list[dict[str, Any]]:
    """One row per schedule (jobs.toml's and dynamic ones), by name."""
    out = []
    for sched in sorted(book.schedules(settings.schedules).values(), key=lambda s: s.name):
        last = book.last.get(sched.name)
        since = last if last is not None else (sched.created_ms if sched.dynamic else now)
        floor = book.floor(sched.name)
        paused = book.paused(sched)
        nxt = None if paused else next_fire(sched.rule, since if floor is None else max(since, floor))
        out.append({"name": sched.name, "source": "dynamic" if sched.dynamic else "jobs.toml",
                    "queue": sched.queue, "job": sched.job, "rule": sched.rule.describe(),
                    "catch_up": sched.catch_up, "paused": paused,
                    "next_fire": iso(nxt) if nxt is not None else None,
                    "last_fired": iso(last) if last is not None and sched.name not in book.baseline else None})
    return out


def listing(settings: Settings) -> dict[str, Any]:
    """{"leader": who leads or None, "schedules": rows}; KafkaException / TimeoutError when the
    schedules topic cannot be read."""
    table = rows(settings, read_book(settings), now_ms())
    return {"leader": leader(settings), "schedules": table}


def _find(scheds: dict[str, Schedule], name: str) -> Schedule:
    if name not in scheds:
        raise ScheduleError(f"no schedule named {name!r} (known: {', '.join(sorted(scheds)) or 'none'})")
    return scheds[name]


def control(settings: Settings, action: str, name: str) -> Schedule:
    """pause | resume | remove the schedule `name`; the schedule acted on (as it was). A schedule
    of jobs.toml cannot be removed, and its `paused = true` still holds it after a resume."""
    book = read_book(settings)
    sched = _find(book.schedules(settings.schedules), name)
    if action == "remove":
        if not sched.dynamic:
            raise ScheduleError(f"{name!r} is declared in jobs.toml: delete its [schedules.{name}] table "
                                "(or pause it)")
        undefine(settings, name)
        return sched
    write(settings, [control_record(name, action == "pause", now_ms())])
    return sched


@dataclass(frozen=True)
class Upcoming:
    """The next fire times (epoch ms) of a schedule; `tz` is the rule's zone (UTC but for cron)."""

    name: str
    rule: Rule
    tz: str
    times: list[int]


def next_fires(settings: Settings, name: str, count: int = 5) -> Upcoming:
    """The next `count` fire times of a schedule; jobs.toml's need no broker (a dynamic one is
    looked up in the schedules topic when reachable)."""
    scheds = dict(settings.schedules)
    if name not in scheds:
        with contextlib.suppress(KafkaException, TimeoutError):
            scheds = read_book(settings, timeout=10).schedules(scheds)
    rule = _find(scheds, name).rule
    return Upcoming(name, rule, rule.tz if rule.kind == "cron" else "UTC", upcoming(rule, now_ms(), count))


# --- dynamic schedules (the facade: Jobs.schedule_at / schedule_every / schedule_daily) ------------


def schedule(settings: Settings, queue: str, job: str | None, data: Any, *, at: Any = None,
             every_ms: int | None = None, daily: str | None = None, tz: str = "UTC", catch_up: str = "once",
             jitter_ms: int = 0, producer: Producer | None = None) -> str:
    """Store one dynamic schedule (exactly one of at / every_ms / daily "HH:MM"); its id.
    `every_ms` ticks count from now (the first fires one interval later)."""
    from protojobs.model.schedules import cron_rule, every_rule, parse_time

    now = now_ms()
    if sum(x is not None for x in (at, every_ms, daily)) != 1:
        raise ValueError("give exactly one of at, every or daily")
    if catch_up not in ("skip", "once", "all"):
        raise ValueError(f"catch_up must be 'skip', 'once' or 'all', not {catch_up!r}")
    if at is not None:
        rule = Rule("at", at_ms=parse_time(at, tz), tz=tz)
    elif every_ms is not None:
        rule = every_rule(every_ms, anchor_ms=now)
    else:
        hour, _, minute = str(daily).partition(":")
        if not (hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
            raise ValueError(f"{daily!r} is not a time of day: write HH:MM, e.g. 09:00")
        rule = cron_rule(f"{int(minute)} {int(hour)} * * *", tz)
    sched = Schedule(name=f"dyn-{uuid.uuid4().hex[:16]}", queue=queue, job=job, data=data if data is not None else {},
                     rule=rule, catch_up=catch_up, jitter_ms=jitter_ms, dynamic=True, created_ms=now)
    return define(settings, sched, producer)
