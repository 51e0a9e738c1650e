"""The handlers every chaos queue runs: one JSON line per execution in $PROTOJOBS_CHAOS_RECORD.

The payload says what the job is: `kind` "normal" (succeeds), "flaky" (its first `fail`
attempts raise RuntimeError, then it succeeds), "poison" (always raises ValueError) or "hang"
(its first `fail` attempts sleep `hang` seconds, past the queue's timeout, then it succeeds).
Each line says whether this execution succeeded (`ok`), so the checker needs no guessing; a
hung attempt is written with `ok` false and `end` at its deadline (when the engine declared it
timed out). Lines are written with O_APPEND in one write, so lines of several processes never
interleave. A line is written just before the handler returns or raises: a SIGKILL after it is
an execution whose result the engine never saw (at-least-once runs it again).

`run` is a plain function; `Strict` is a Job class (the `strict` queue: 1 s timeout, blocking
retries with a backoff longer than the timeout) whose `failed()` blocks for `block_failed`
seconds when the payload says so, as a careless handler author's would.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from protojobs import Job


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
    hangs = kind == "hang" and ctx.attempt <= int(data.get("fail", 0))
    if hangs:
        time.sleep(float(data.get("hang", 1.5)))
    ok = kind == "normal" or (kind in ("flaky", "hang") and ctx.attempt > int(data.get("fail", 0)))
    end = time.time()
    _write({"id": ctx.id, "n": data.get("n"), "attempt": ctx.attempt, "key": ctx.key, "queue": ctx.queue,
            "pid": os.getpid(), "t": started, "end": min(end, ctx.deadline) if hangs else end,
            "due": ctx.available_at / 1000, "ok": ok, "topic": ctx.topic, "partition": ctx.partition,
            "offset": ctx.offset})
    if ok or hangs:
        return  # a hung attempt's return comes too late: the engine already failed it
    if kind == "poison":
        raise ValueError(f"poison job {ctx.id} can never succeed")
    raise RuntimeError(f"{kind} job {ctx.id}: attempt {ctx.attempt} fails on purpose")


class Strict(Job):
    """`run`, as a Job class whose `failed()` (called once, when the job is dead-lettered) may block."""

    def handle(self, data: Any, ctx: Any) -> None:
        run(data, ctx)

    def failed(self, error: BaseException, data: Any) -> None:
        time.sleep(float(data.get("block_failed", 0)))
