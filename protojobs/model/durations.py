"""Durations as jobs.toml writes them: a number and a unit (`250ms`, `5s`, `1m`, `2h`, `7d`)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
DURATION_REGEX = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)\s*$"


def parse_ms(text: str) -> int:
    """Return the duration in whole milliseconds; ValueError names the accepted form."""
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a duration: write a number and a unit, e.g. 250ms, 5s, 1m, 2h, 7d")
    return int(round(float(match.group(1)) * _UNITS_MS[match.group(2)]))


def format_ms(ms: int) -> str:
    """The shortest exact spelling of a duration (inverse of parse_ms for whole units)."""
    for unit in ("d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


# --- delays: the one vocabulary of every dispatch API (Dispatcher, Jobs, App jobs, the CLI) ------

_DELAY_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
Delay = float | str | timedelta


def delay_ms(delay: Delay | None) -> int:
    """A delay as whole milliseconds (>= 0): seconds (int or float), a duration with one or more
    units ("250ms", "5m", "1h30m"), or a timedelta; None is 0. ValueError / TypeError say why not."""
    if delay is None:
        return 0
    if isinstance(delay, str):
        text = delay.replace(" ", "")
        parts = _DELAY_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{delay!r} is not a delay: write seconds, a timedelta, or a duration such as "
                             "250ms, 5s, 5m, 1h30m, 2d")
        units = [u for _, u in parts]
        if len(set(units)) != len(units):
            raise ValueError(f"{delay!r} repeats a unit")
        return sum(int(round(float(n) * _UNITS_MS[u])) for n, u in parts)
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise TypeError(f"a delay is seconds, a duration string (\"5m\") or a timedelta, not {delay!r}")
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"a delay must be 0 or more seconds, not {delay!r}")
    return int(round(seconds * 1000))


def epoch_ms(at: datetime) -> int:
    """An absolute time (`at=`) as epoch milliseconds; a naive datetime is refused (which zone
    it means is a guess: pass datetime.now(timezone.utc) + ..., or a datetime with tzinfo)."""
    if not isinstance(at, datetime):
        raise TypeError(f"at= takes a datetime with a time zone, not {at!r}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"at={at.isoformat()} is a naive datetime (no time zone): pass an aware one, "
                         "e.g. datetime(2026, 1, 1, 9, 0, tzinfo=timezone.utc), or use a delay")
    return int(round(at.timestamp() * 1000))


def due_ms(now_ms: int, delay: Delay | None = None, at: datetime | None = None) -> int:
    """When a job is due (epoch ms): `at`, else `now_ms` + `delay`; both given is an error."""
    if delay is not None and at is not None:
        raise ValueError("give either a delay or at=, not both")
    return epoch_ms(at) if at is not None else now_ms + delay_ms(delay)
