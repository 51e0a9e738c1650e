"""Periodic schedules, the pure rules: next fire for every rule kind (daylight-saving changes
included), catch-up policies over clock jumps, the topic's records, and config validation."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protojobs import config
from protojobs.cli import config as cli_config
from protojobs.model import schedule_book, schedules
from protojobs.model.schedule_book import Book
from protojobs.model.schedules import (
    SKIP_GRACE_MS,
    RuleError,
    cron_rule,
    every_rule,
    next_fire,
    parse_time,
    plan,
    prev_fire,
    ticks_between,
    upcoming,
)

ROOT = Path(__file__).resolve().parents[1]
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "America/Santiago",
         "Asia/Kolkata", "Pacific/Chatham"]
T0 = parse_time("2020-01-01T00:00:00Z")
T1 = parse_time("2035-01-01T00:00:00Z")
HOUR = 3_600_000


def local(ms: int, tz: str) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, schedules.zone(tz))


# ---------------------------------------------------------------- every


@given(every=st.integers(1, 10 * 86_400_000), anchor=st.integers(0, T1), t=st.integers(0, T1 + HOUR))
def test_every_ticks_are_anchor_multiples(every: int, anchor: int, t: int) -> None:
    rule = every_rule(every, anchor)
    n = next_fire(rule, t)
    assert n is not None and n > t and (n - anchor) % every == 0 and n >= anchor + every
    assert n - t <= every or t < anchor
    p = prev_fire(rule, t)
    if p is None:
        assert t < anchor + every
    else:
        assert p <= t < next_fire(rule, p) == p + every  # type: ignore[operator]


def test_every_zero_is_refused() -> None:
    with pytest.raises(RuleError, match="longer than 0"):
        every_rule(0)


# ---------------------------------------------------------------- at


@given(at=st.integers(T0, T1), t=st.integers(T0, T1))
def test_at_fires_once(at: int, t: int) -> None:
    rule = schedules.Rule("at", at_ms=at)
    assert next_fire(rule, t) == (at if at > t else None)
    assert prev_fire(rule, t) == (at if at <= t else None)
    assert upcoming(rule, T0 - 1, 5) == [at]


def test_at_parsing() -> None:
    assert parse_time("2027-01-01T09:00:00Z") == parse_time("2027-01-01T10:00:00+01:00")
    assert parse_time("2027-01-01T09:00:00", "Europe/Paris") == parse_time("2027-01-01T08:00:00Z")
    toml_dt = datetime.datetime(2027, 1, 1, 9, tzinfo=datetime.UTC)
    assert parse_time(toml_dt) == parse_time("2027-01-01T09:00:00Z") == 1_798_794_000_000
    assert parse_time(1_798_794_000) == 1_798_794_000_000
    with pytest.raises(RuleError, match="not a time"):
        parse_time("next tuesday")


# ---------------------------------------------------------------- cron


def _field(lo: int, hi: int) -> st.SearchStrategy[str]:
    single = st.integers(lo, hi).map(str)
    pair = st.tuples(st.integers(lo, hi), st.integers(lo, hi)).map(lambda p: f"{min(p)}-{max(p)}")
    step = st.integers(1, max(1, (hi - lo) // 2)).map(lambda s: f"*/{s}")
    listed = st.lists(st.integers(lo, hi), min_size=1, max_size=3, unique=True).map(
        lambda xs: ",".join(map(str, sorted(xs))))
    return st.one_of(st.just("*"), single, pair, step, listed)


crons = st.tuples(_field(0, 59), _field(0, 23), st.one_of(st.just("*"), _field(1, 28)), st.just("*"),
                  st.one_of(st.just("*"), _field(0, 6))).map(" ".join)


def _expand(text: str, lo: int, hi: int) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if part == "*":
            out |= set(range(lo, hi + 1))
        elif part.startswith("*/"):
            out |= set(range(lo, hi + 1, int(part[2:])))
        elif "-" in part:
            a, b = map(int, part.split("-"))
            out |= set(range(a, b + 1))
        else:
            out.add(int(part))
    return out


def _gap_before(ms: int, tz: str) -> bool:
    """`ms` is right after a spring-forward gap (the local clock jumped within the last 2 h)."""
    return local(ms, tz).utcoffset() != local(ms - 2 * HOUR, tz).utcoffset()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=crons, tz=st.sampled_from(ZONES), t=st.integers(T0, T1))
def test_cron_next_and_prev_agree(expr: str, tz: str, t: int) -> None:
    rule = cron_rule(expr, tz)
    n = next_fire(rule, t)
    assert n is not None and n > t and n % 60_000 == 0
    assert prev_fire(rule, n) == n  # a tick is its own latest tick
    before = prev_fire(rule, n - 1)
    assert before is None or before <= t  # nothing fires strictly between t and n
    minute, hour, _dom, _month, _dow = expr.split()
    at = local(n, tz)
    matches = at.minute in _expand(minute, 0, 59) and at.hour in _expand(hour, 0, 23)
    assert matches or _gap_before(n, tz), (expr, tz, at)  # else: moved out of a DST gap
    p = prev_fire(rule, t)
    assert p is not None and p <= t and next_fire(rule, p) == n


@settings(max_examples=150, deadline=None)
@given(minute=st.integers(0, 59), hour=st.integers(0, 23), tz=st.sampled_from(ZONES),
       start=st.integers(T0, T1 - 400 * 86_400_000))
def test_fixed_time_daily_rule_fires_once_per_local_day(minute: int, hour: int, tz: str, start: int) -> None:
    """Across a year (so both DST changes): exactly one tick per local calendar day."""
    rule = cron_rule(f"{minute} {hour} * * *", tz)
    ticks = upcoming(rule, start, 366)
    days = [local(x, tz).date() for x in ticks]
    assert len(set(days)) == len(days)  # never twice a day (fall-back)
    assert all((b - a).days == 1 for a, b in zip(days, days[1:], strict=False))  # never a day skipped
    assert ticks == sorted(ticks)


@pytest.mark.parametrize(("tz", "day", "expected"), [
    ("Europe/Paris", "2025-03-30", "2025-03-30T03:00:00+02:00"),  # 02:30 does not exist: next valid time
    ("Europe/Paris", "2025-10-26", "2025-10-26T02:30:00+02:00"),  # 02:30 twice: the first one only
    ("America/New_York", "2025-03-09", "2025-03-09T03:00:00-04:00"),
    ("America/New_York", "2025-11-02", "2025-11-02T02:30:00-05:00"),  # 02:30 exists once there
])
def test_dst_day_fires_once(tz: str, day: str, expected: str) -> None:
    rule = cron_rule("30 2 * * *", tz)
    midnight = parse_time(f"{day}T00:00:00", tz)
    ticks = ticks_between(rule, midnight - 1, midnight + 26 * HOUR, 10)
    on_day = [x for x in ticks if local(x, tz).date().isoformat() == day]
    assert [local(x, tz).isoformat() for x in on_day] == [expected]


def test_hourly_rule_follows_real_time_across_dst() -> None:
    rule = cron_rule("30 * * * *", "Europe/Paris")
    fall = ticks_between(rule, parse_time("2025-10-26T00:00:00+02:00"), parse_time("2025-10-26T04:00:00+01:00"), 20)
    assert [local(x, "Europe/Paris").strftime("%H:%M%z") for x in fall] == [
        "00:30+0200", "01:30+0200", "02:30+0200", "02:30+0100", "03:30+0100"]
    spring = ticks_between(rule, parse_time("2025-03-30T00:00:00+01:00"), parse_time("2025-03-30T04:00:00+02:00"), 20)
    assert [local(x, "Europe/Paris").strftime("%H:%M") for x in spring] == ["00:30", "01:30", "03:30"]
    assert all(b - a == HOUR for a, b in zip(fall, fall[1:], strict=False))


@pytest.mark.parametrize(("expr", "tz", "key", "message"), [
    ("61 * * * *", "UTC", "cron", "bad minute"),
    ("0 3 * *", "UTC", "cron", "five fields"),
    ("0 3 * * * *", "UTC", "cron", "five fields"),
    ("0 0 31 2 *", "UTC", "cron", "bad day-of-month"),
    ("0 3 * * 1-5", "Mars/Olympus", "tz", "unknown time zone"),
])
def test_bad_cron_rules(expr: str, tz: str, key: str, message: str) -> None:
    with pytest.raises(RuleError, match=message) as info:
        cron_rule(expr, tz)
    assert info.value.key == key


# ---------------------------------------------------------------- catch-up over clock jumps

rules = st.one_of(
    st.integers(1, 120).map(lambda s: every_rule(s * 1000)),
    st.sampled_from(["* * * * *", "*/5 * * * *", "0 * * * *", "30 2 * * *"]).flatmap(
        lambda e: st.sampled_from(ZONES).map(lambda tz: cron_rule(e, tz))),
)
# clock readings of a scheduler loop: small steps, outages (jumps ahead), NTP steps back
steps = st.lists(st.one_of(st.integers(50, 1_500), st.integers(1_500, 4 * HOUR), st.integers(-30_000, -1)),
                 min_size=1, max_size=40)


def _drive(rule: schedules.Rule, catch_up: str, start: int, moves: list[int], floor: int | None = None
           ) -> tuple[list[int], list[tuple[int, list[int]]], int]:
    """Run `plan` the way the leader does at each clock reading; (fired, per-reading, last now)."""
    last, now, fired, log = start, start, [], []
    for move in moves:
        now += move
        while (decided := plan(rule, catch_up, last, now, floor)) is not None:
            assert decided.last_tick > last and decided.last_tick <= now
            fired += decided.fire
            log.append((now, decided.fire))
            last = decided.last_tick
            if catch_up != "all":
                break
    return fired, log, now


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule=rules, start=st.integers(T0, T1), moves=steps, catch_up=st.sampled_from(schedules.CATCH_UP))
def test_no_tick_twice_over_clock_jumps(rule: schedules.Rule, start: int, moves: list[int], catch_up: str) -> None:
    fired, log, _ = _drive(rule, catch_up, start, moves)
    assert fired == sorted(set(fired))  # never twice, in order
    for now, ticks in log:
        assert all(start < t <= now for t in ticks)
        assert all(prev_fire(rule, t) == t for t in ticks)  # real ticks
        if catch_up == "once":
            assert ticks == [prev_fire(rule, now)]  # the missed ticks make exactly one job: the latest
        if catch_up == "skip":
            assert ticks == [] or (len(ticks) == 1 and now - ticks[0] <= SKIP_GRACE_MS)


@settings(max_examples=100, deadline=None)
@given(every=st.integers(1, 60), start=st.integers(T0, T1), moves=steps)
def test_catch_up_all_fires_every_tick_exactly_once(every: int, start: int, moves: list[int]) -> None:
    rule = every_rule(every * 1000)
    fired, _, _ = _drive(rule, "all", start, moves)
    high = start
    now = start
    for move in moves:
        now += move
        high = max(high, now)
    expected = ticks_between(rule, start, high, 10**7)
    assert fired == expected


@given(every=st.integers(1, 60), start=st.integers(T0, T1), outage=st.integers(0, 10 * HOUR))
def test_once_after_an_outage_fires_one_job(every: int, start: int, outage: int) -> None:
    rule = every_rule(every * 1000)
    decided = plan(rule, "once", start, start + outage)
    missed = ticks_between(rule, start, start + outage, 10**7)
    if not missed:
        assert decided is None
    else:
        assert decided is not None and decided.fire == [missed[-1]] and decided.last_tick == missed[-1]


@given(start=st.integers(T0, T1), pause=st.integers(1, HOUR), moves=steps,
       catch_up=st.sampled_from(schedules.CATCH_UP))
def test_ticks_before_a_resume_never_fire(start: int, pause: int, moves: list[int], catch_up: str) -> None:
    rule = every_rule(1000)
    fired, _, _ = _drive(rule, catch_up, start, moves, floor=start + pause)
    assert all(t > start + pause for t in fired)


def test_clock_stepping_back_fires_nothing_again() -> None:
    rule = every_rule(1000)
    assert plan(rule, "all", 10_000, 9_000) is None
    assert plan(rule, "once", 10_000, 10_999) is None
    assert plan(rule, "once", 10_000, 11_000) == schedules.Plan([11_000], 11_000)


def test_jitter_and_job_id_are_deterministic() -> None:
    values = {schedules.jitter_for("s", t, 5_000) for t in range(0, 100_000, 1000)}
    assert all(0 <= v < 5_000 for v in values) and len(values) > 50
    assert schedules.jitter_for("s", 7, 5_000) == schedules.jitter_for("s", 7, 5_000)
    assert schedules.jitter_for("s", 7, 0) == 0
    assert schedules.job_id("nightly", 1000) == "sched-nightly-1000"


# ---------------------------------------------------------------- the topic's records


def test_book_folds_records_in_offset_order() -> None:
    book = Book()
    sched = schedules.Schedule("dyn-1", "q", None, {"a": 1}, every_rule(1000, 5), dynamic=True, created_ms=5)
    book.apply(*schedule_book.def_record(sched), offset=0)
    book.apply(*schedule_book.state_record("dyn-1", 3000), offset=1)
    book.apply(*schedule_book.control_record("dyn-1", True, 77), offset=2)
    assert book.defs["dyn-1"] == sched and book.last["dyn-1"] == 3000 and book.paused(sched)
    book.apply(*schedule_book.state_record("dyn-1", 9000), offset=1)  # an older offset, read again: ignored
    book.apply(*schedule_book.control_record("dyn-1", False, 88), offset=3)
    assert not book.paused(sched) and book.floor("dyn-1") == 88
    book.apply(*schedule_book.def_record("dyn-1"), offset=4)
    assert "dyn-1" not in book.defs and book.position == 5
    assert book.last["dyn-1"] == 3000
    book.apply(*schedule_book.state_record("y", 42, baseline=True), offset=5)
    assert book.last["y"] == 42 and "y" in book.baseline  # a first sight, not a fired tick
    book.apply(*schedule_book.state_record("y", 43), offset=6)
    assert "y" not in book.baseline
    book.apply(b"state/x", b"not json", offset=5)
    assert "x" not in book.last and book.position == 7


# ---------------------------------------------------------------- jobs.toml


def _tree(**schedule: Any) -> dict[str, Any]:
    return {"kafka": {"brokers": "127.0.0.1:1", "group_id": "g", "topic_prefix": "p-"},
            "queues": {"reports": {"handler": "protojobs.demo:build_report", "schema": "schemas/report.json"}},
            "schedules": {"nightly": {"queue": "reports", "data": {"report_id": "n"}, **schedule}}}


def _issues(tree: dict[str, Any]) -> list[str]:
    with pytest.raises(config.ConfigError) as info:
        config.from_dict(tree, ROOT, env={}, import_handlers=False)
    return [str(i) for i in info.value.issues]


@pytest.mark.parametrize(("schedule", "expected"), [
    ({"cron": "61 * * * *"}, "schedules.nightly.cron: '61 * * * *' is not a cron rule: bad minute field"),
    ({"cron": "0 3 * * *", "tz": "Mars/Olympus"}, "schedules.nightly.tz: unknown time zone 'Mars/Olympus'"),
    ({"every": "0s"}, "schedules.nightly.every: must be longer than 0"),
    ({"every": "5 minutes"}, "schedules.nightly.every: '5 minutes' is not a duration"),
    ({"every": "1m", "cron": "* * * * *"}, "schedules.nightly: give exactly one of every, cron or at"),
    ({}, "schedules.nightly: give exactly one of every, cron or at"),
    ({"every": "1m", "catch_up": "sometimes"}, "schedules.nightly.catch_up: 'sometimes' is not one of"),
    ({"every": "1m", "queue": "report"}, "schedules.nightly.queue: no queue named 'report' (did you mean 'reports'?)"),
    ({"every": "1m", "data": {"n": 1}}, "schedules.nightly.data.report_id: required field is missing"),
    ({"every": "1m", "tz": "UTC"}, "schedules.nightly.tz: only applies to cron and at rules"),
    ({"at": "soon"}, "schedules.nightly.at: 'soon' is not a time"),
    ({"every": "1m", "colour": "red"}, "schedules.nightly.colour: unknown key 'colour'"),
])
def test_bad_schedules_are_refused_with_their_key_path(schedule: dict[str, Any], expected: str) -> None:
    issues = _issues(_tree(**schedule))
    assert any(i.startswith(expected) for i in issues), issues


def test_good_schedules_load() -> None:
    tree = _tree(cron="0 3 * * 1-5", tz="Europe/Paris", catch_up="all", jitter="30s")
    tree["schedules"]["once"] = {"queue": "reports", "at": datetime.datetime(2027, 1, 1, 9, tzinfo=datetime.UTC),
                                 "data": {"report_id": "y"}, "paused": True}
    settings = config.from_dict(tree, ROOT, env={}, import_handlers=False)
    got = settings.schedules
    assert got["nightly"].rule == cron_rule("0 3 * * 1-5", "Europe/Paris")
    assert got["nightly"].catch_up == "all" and got["nightly"].jitter_ms == 30_000
    assert got["once"].rule.at_ms == parse_time("2027-01-01T09:00:00Z") and got["once"].paused


def test_validate_command_prints_the_key_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from protojobs.config import to_toml

    tree = _tree(cron="61 * * * *")
    tree["queues"]["reports"]["schema"] = str(ROOT / "schemas/report.json")
    tree["schedules"]["b"] = {"queue": "reports", "cron": "0 3 * * *", "tz": "Nowhere/Land", "data": {"report_id": "b"}}
    tree["schedules"]["c"] = {"queue": "reports", "every": "0s", "data": {"report_id": "c"}}
    path = tmp_path / "jobs.toml"
    path.write_text(to_toml(tree))
    assert cli_config.validate_command(str(path), env={}) == 1
    err = capsys.readouterr().err
    assert "schedules.nightly.cron: '61 * * * *' is not a cron rule" in err
    assert "schedules.b.tz: unknown time zone 'Nowhere/Land'" in err
    assert "schedules.c.every: must be longer than 0" in err


def test_repo_jobs_toml_schedule_validates() -> None:
    settings = config.load(ROOT / "jobs.toml", env={}, import_handlers=False)
    assert "nightly-report" in settings.schedules


def test_records_are_json() -> None:
    key, value = schedule_book.state_record("a", 5)
    assert key == b"state/a" and json.loads(value or b"") == {"last_tick": 5}
    assert ZoneInfo("Europe/Paris")  # tzdata is present
