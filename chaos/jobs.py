"""The handler every chaos queue runs: one JSON line per execution in $PROTOJOBS_CHAOS_RECORD.

The payload says what the job is: `kind` "normal" (succeeds), "flaky" (its first `fail`
attempts raise RuntimeError, then it succeeds) or "poison" (always raises ValueError). Each
line says whether this execution succeeded (`ok`), so the checker needs no guessing. Lines are
written with O_APPEND in one write, so lines of several processes never interleave. A line
is written just before the handler returns or raises: a SIGKILL after it is an execution
whose result the engine never saw (at-least-once runs it again).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


def _write(row: dict[str, Any]) -> None:
    path = os.environ.get("PROTOJOBS_CHAOS_RECORD")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row, separators=(",", ":")) + "\n").encode())
    finally:
        os.close(fd)


def run(data: dict[str, Any], ctx: Any) -> None:
    started = time.time()
    sleep = float(data.get("sleep", 0))
    if sleep:
        time.sleep(sleep)
    kind = data.get("kind", "normal")
    ok = kind == "normal" or (kind == "flaky" and ctx.attempt > int(data.get("fail", 0)))
    _write({"id": ctx.id, "n": data.get("n"), "attempt": ctx.attempt, "key": ctx.key, "queue": ctx.queue,
            "pid": os.getpid(), "t": started, "end": time.time(), "due": ctx.available_at / 1000,
            "ok": ok, "topic": ctx.topic, "partition": ctx.partition, "offset": ctx.offset})
    if ok:
        return
    if kind == "poison":
        raise ValueError(f"poison job {ctx.id} can never succeed")
    raise RuntimeError(f"flaky job {ctx.id}: attempt {ctx.attempt} fails on purpose")
