"""The bench's job handlers, imported by protojobs workers (in-process and `protojobs run`).

- `noop`: does nothing but note the wall time of the first and the last call (two stores).
- `stamp`: records handler-start latency: time.time_ns() minus the payload's `t` (set at send).
- `due`: records lateness: time.time_ns() // 1e6 minus ctx.available_at (epoch ms).

With $BENCH_REPORT_DIR set, each process writes `report-<pid>.json` there at exit (first/last
call, count, latencies, RSS at the first call and at exit, CPU seconds). `reset()` clears the
state for an in-process run.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import time
from typing import Any

_state: dict[str, Any] = {}


def reset() -> None:
    _state.clear()
    _state.update(first=0, last=0, count=0, lat=[], rss_first=0, cpu_first=0.0)


reset()


def _rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _first(now: int) -> None:
    _state["first"] = now
    _state["rss_first"] = _rss()
    _state["cpu_first"] = _cpu()


def noop(data: Any) -> None:
    now = time.time_ns()
    s = _state
    if not s["first"]:
        _first(now)
    s["last"] = now
    s["count"] += 1  # approximate under concurrency; the bench counts commits, not this


def stamp(data: Any) -> None:
    now = time.time_ns()
    s = _state
    s["lat"].append(now - data["t"])
    if not s["first"]:
        _first(now)
    s["last"] = now
    s["count"] += 1


def due(data: Any, ctx: Any) -> None:
    now = time.time_ns()
    s = _state
    s["lat"].append([data.get("note", ""), now // 1_000_000 - ctx.available_at])
    if not s["first"]:
        _first(now)
    s["last"] = now
    s["count"] += 1


def report() -> dict[str, Any]:
    return {"pid": os.getpid(), "first": _state["first"], "last": _state["last"], "count": _state["count"],
            "lat": _state["lat"], "rss_first": _state["rss_first"], "rss_exit": _rss(),
            "cpu_first": _state["cpu_first"], "cpu_exit": _cpu()}


@atexit.register
def _write() -> None:
    where = os.environ.get("BENCH_REPORT_DIR")
    if where and _state["count"]:
        with open(os.path.join(where, f"report-{os.getpid()}.json"), "w") as fh:
            json.dump(report(), fh)
