"""Durations as jobs.toml writes them: a number and a unit (`250ms`, `5s`, `1m`, `2h`, `7d`)."""

from __future__ import annotations

import re

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
