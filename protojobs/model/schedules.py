"""Periodic schedules, the pure rules: parsing, next-fire computation, catch-up. No I/O.

A schedule fires its job on each *tick* of its rule:
- `every = "5m"`: ticks at anchor + k * interval (k >= 1). Schedules of jobs.toml are anchored
  at the Unix epoch (every 5 minutes means :00, :05, ... UTC), dynamic ones at their creation.
- `cron = "0 3 * * 1-5"`, `tz = "Europe/Paris"` (default UTC): standard five-field cron in that
  zone, evaluated by cronsim (a maintained library) with Debian cron's daylight-saving rules:
  a rule at a fixed local time that falls in the spring-forward gap fires once, at the first
  valid minute after it (02:30 -> 03:00); one that falls in the repeated fall-back hour fires
  once, at its first occurrence. Rules with `*` in the minute or hour field follow real time
  (an hourly rule fires in both copies of the repeated hour, none in the gap).
- `at = "2027-01-01T09:00:00Z"`: one tick (a time without a zone is read in `tz`).

The scheduler keeps per schedule the last tick it fired (or decided to skip). `plan` says which
ticks are due now: the ticks in (last, now], less those before a `floor` (a resume time);
`catch_up` decides what happens to several of them (ticks missed while no scheduler ran):
"all" fires each, "once" fires only the latest, "skip" fires the latest only if it is on time
(at most SKIP_GRACE_MS old) and none otherwise. In every case the new last tick is the latest
due tick, so a later leader never reconsiders them.

A `Schedule` is a rule with its job: jobs.toml's are built by protojobs.config (`from_table`),
dynamic ones are stored in the schedules topic (protojobs.model.schedule_book).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from protojobs.model.durations import format_ms, parse_ms

CATCH_UP = ("skip", "once", "all")
SKIP_GRACE_MS = 5_000  # catch_up = "skip": a tick at most this late still fires
MAX_BATCH = 100  # catch_up = "all": at most this many ticks per transaction
UTC = datetime.UTC


class RuleError(ValueError):
    """A rule that cannot be used; `key` is the rule's key (every, cron, tz, at, ...)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    kind: str  # every | cron | at
    every_ms: int = 0
    anchor_ms: int = 0
    cron: str = ""
    tz: str = "UTC"
    at_ms: int = 0

    def describe(self) -> str:
        if self.kind == "every":
            return f"every {format_ms(self.every_ms)}"
        if self.kind == "cron":
            return f"cron {self.cron!r} {self.tz}"
        return f"at {iso(self.at_ms)}"

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "every":
            return {"every_ms": self.every_ms, "anchor_ms": self.anchor_ms}
        if self.kind == "cron":
            return {"cron": self.cron, "tz": self.tz}
        return {"at_ms": self.at_ms}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Rule:
        if "every_ms" in d:
            return every_rule(int(d["every_ms"]), int(d.get("anchor_ms", 0)))
        if "cron" in d:
            return cron_rule(str(d["cron"]), str(d.get("tz", "UTC")))
        return Rule("at", at_ms=int(d["at_ms"]))


def zone(name: str) -> datetime.tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise RuleError("tz", f"unknown time zone {name!r}: use an IANA name, e.g. Europe/Paris or UTC") from None


def every_rule(every_ms: int, anchor_ms: int = 0) -> Rule:
    if every_ms <= 0:
        raise RuleError("every", "must be longer than 0")
    return Rule("every", every_ms=every_ms, anchor_ms=anchor_ms)


def cron_rule(expr: str, tz: str = "UTC") -> Rule:
    tzinfo = zone(tz)
    fields = expr.split()
    if len(fields) != 5:
        raise RuleError("cron", f"{expr!r} is not a cron rule: write five fields "
                                "(minute hour day-of-month month day-of-week), e.g. \"0 3 * * 1-5\"")
    try:
        it = CronSim(expr, datetime.datetime(2000, 1, 1, tzinfo=tzinfo))
        next(it)
    except CronSimError as exc:
        raise RuleError("cron", f"{expr!r} is not a cron rule: {str(exc).lower()} field "
                                "(fields: minute 0-59, hour 0-23, day-of-month 1-31, month 1-12, "
                                "day-of-week 0-7)") from None
    except StopIteration:
        raise RuleError("cron", f"{expr!r} never fires") from None
    return Rule("cron", cron=" ".join(fields), tz=tz)


def parse_time(value: Any, tz: str = "UTC") -> int:
    """ISO 8601 text, a datetime (TOML's), or epoch seconds -> epoch ms; no zone = `tz`."""
    if isinstance(value, bool):
        raise RuleError("at", f"{value!r} is not a time")
    if isinstance(value, int | float):
        return int(round(value * 1000))
    if isinstance(value, str):
        text = value.strip()
        try:
            value = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise RuleError("at", f"{text!r} is not a time: write ISO 8601, e.g. 2027-01-01T09:00:00Z") from None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=zone(tz))
        return int(value.timestamp() * 1000)
    raise RuleError("at", f"{value!r} is not a time: write ISO 8601, e.g. 2027-01-01T09:00:00Z")


def rule_from_table(table: Mapping[str, Any], anchor_ms: int = 0) -> Rule:
    """A jobs.toml `[schedules.<name>]` table's rule (exactly one of every / cron / at)."""
    kinds = [k for k in ("every", "cron", "at") if k in table]
    if len(kinds) != 1:
        raise RuleError("every", "give exactly one of every, cron or at")
    tz = str(table.get("tz", "UTC"))
    if "every" in table:
        if "tz" in table:
            raise RuleError("tz", "only applies to cron and at rules")
        try:
            ms = parse_ms(table["every"])
        except ValueError as exc:
            raise RuleError("every", str(exc)) from None
        return every_rule(ms, anchor_ms)
    if "cron" in table:
        return cron_rule(str(table["cron"]), tz)
    zone(tz)
    return Rule("at", at_ms=parse_time(table["at"], tz), tz=tz)


def iso(ms: int | None, tz: str = "UTC") -> str:
    if ms is None:
        return "-"
    dt = datetime.datetime.fromtimestamp(ms / 1000, zone(tz))
    text = dt.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


# ---------------------------------------------------------------- next fire


def next_fire(rule: Rule, after_ms: int) -> int | None:
    """The first tick strictly after `after_ms`; None when there is none (a past `at`)."""
    if rule.kind == "every":
        if after_ms < rule.anchor_ms + rule.every_ms:
            return rule.anchor_ms + rule.every_ms
        return rule.anchor_ms + ((after_ms - rule.anchor_ms) // rule.every_ms + 1) * rule.every_ms
    if rule.kind == "at":
        return rule.at_ms if rule.at_ms > after_ms else None
    start = datetime.datetime.fromtimestamp(after_ms // 1000, zone(rule.tz))
    it = CronSim(rule.cron, start)
    for _ in range(10_000):  # a fixed-time rule near a DST change may yield a time before `after`
        try:
            ms = int(next(it).timestamp() * 1000)
        except StopIteration:
            return None
        if ms > after_ms:
            return ms
    return None


def prev_fire(rule: Rule, at_ms: int) -> int | None:
    """The latest tick at or before `at_ms`; None when there is none."""
    if rule.kind == "every":
        first = rule.anchor_ms + rule.every_ms
        if at_ms < first:
            return None
        return rule.anchor_ms + ((at_ms - rule.anchor_ms) // rule.every_ms) * rule.every_ms
    if rule.kind == "at":
        return rule.at_ms if rule.at_ms <= at_ms else None
    probe = at_ms
    for _ in range(8):
        back = _cron_before(rule, probe)
        if back is None:
            return None
        tick = next_fire(rule, back - 1)  # snap to a tick of the forward iteration (the definition)
        if tick is not None and tick <= at_ms:
            while (later := next_fire(rule, tick)) is not None and later <= at_ms:
                tick = later
            return tick
        probe = back - 1000
    return None


def _cron_before(rule: Rule, at_ms: int) -> int | None:
    """cronsim's reverse iteration: a match at or before `at_ms` (whole seconds)."""
    start = datetime.datetime.fromtimestamp(at_ms // 1000 + 1, zone(rule.tz))
    try:
        return int(next(CronSim(rule.cron, start, reverse=True)).timestamp() * 1000)
    except StopIteration:
        return None


def upcoming(rule: Rule, after_ms: int, count: int) -> list[int]:
    out: list[int] = []
    t: int | None = after_ms
    while len(out) < count and t is not None:
        t = next_fire(rule, t)
        if t is not None:
            out.append(t)
    return out


def ticks_between(rule: Rule, after_ms: int, until_ms: int, limit: int) -> list[int]:
    """Ticks in (after_ms, until_ms], at most `limit` (the earliest)."""
    out: list[int] = []
    t: int | None = after_ms
    while len(out) < limit:
        t = next_fire(rule, t) if t is not None else None
        if t is None or t > until_ms:
            break
        out.append(t)
    return out


@dataclass(frozen=True)
class Plan:
    fire: list[int]  # ticks to dispatch now, oldest first
    last_tick: int  # the state to record with them


def plan(rule: Rule, catch_up: str, last_tick: int, now_ms: int, floor_ms: int | None = None,
         limit: int = MAX_BATCH) -> Plan | None:
    """What to do now for a schedule whose last tick is `last_tick`; None: nothing is due.
    Ticks at or before `floor_ms` (a resume time) are never fired."""
    since = last_tick if floor_ms is None else max(last_tick, floor_ms)
    latest = prev_fire(rule, now_ms)
    if latest is None or latest <= since:
        return None
    if catch_up == "all":
        ticks = ticks_between(rule, since, now_ms, limit)
        return Plan(ticks, ticks[-1])
    if catch_up == "skip" and now_ms - latest > SKIP_GRACE_MS:
        return Plan([], latest)
    return Plan([latest], latest)


def jitter_for(name: str, tick: int, jitter_ms: int) -> int:
    """A delay in [0, jitter_ms), the same for a (schedule, tick) in every process."""
    if jitter_ms <= 0:
        return 0
    digest = hashlib.sha256(f"{name}/{tick}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % jitter_ms


def job_id(name: str, tick: int) -> str:
    """The dispatched job's id: one per (schedule, tick), so a duplicate would be visible."""
    return f"sched-{name}-{tick}"


# ---------------------------------------------------------------- schedules


@dataclass(frozen=True)
class Schedule:
    name: str
    queue: str
    job: str | None
    data: Mapping[str, Any]
    rule: Rule
    catch_up: str = "once"
    jitter_ms: int = 0
    paused: bool = False
    dynamic: bool = False
    created_ms: int = 0

    def to_def(self) -> dict[str, Any]:
        return {"id": self.name, "queue": self.queue, "job": self.job, "data": dict(self.data),
                "rule": self.rule.to_dict(), "catch_up": self.catch_up, "jitter_ms": self.jitter_ms,
                "created_ms": self.created_ms}

    @staticmethod
    def from_def(d: Mapping[str, Any]) -> Schedule:
        return Schedule(name=str(d["id"]), queue=str(d["queue"]), job=d.get("job"), data=d.get("data") or {},
                        rule=Rule.from_dict(d["rule"]), catch_up=str(d.get("catch_up", "once")),
                        jitter_ms=int(d.get("jitter_ms", 0)), dynamic=True, created_ms=int(d.get("created_ms", 0)))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    return value


def from_table(name: str, table: Mapping[str, Any]) -> Schedule:
    """One `[schedules.<name>]` table (already accepted by the JSON Schema); RuleError if not usable."""
    try:
        jitter = parse_ms(table["jitter"]) if "jitter" in table else 0
    except ValueError as exc:
        raise RuleError("jitter", str(exc)) from None
    return Schedule(name=name, queue=str(table["queue"]), job=table.get("job"), data=_plain(table.get("data", {})),
                    rule=rule_from_table(table), catch_up=str(table.get("catch_up", "once")),
                    jitter_ms=jitter, paused=bool(table.get("paused", False)))
