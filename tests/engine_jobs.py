"""Handlers the engine tests name in their jobs.toml files.

In-process tests read `RUNS`; subprocess workers append one JSON line per run to the file named
by $PROTOJOBS_TEST_RECORD (O_APPEND: lines from several processes do not interleave).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from typing import Any

from protojobs import Job

RUNS: list[dict[str, Any]] = []
_lock = threading.Lock()
HANG = threading.Event()  # `record` jobs with "hang": N wait on it (at most N s); tests set it when done
FAILS: dict[str, int] = {}  # job id or payload "n" -> how many attempts still fail


def _record(data: dict[str, Any], ctx: Any, **extra: Any) -> None:
    row = {"n": data.get("n"), "key": ctx.key, "id": ctx.id, "attempt": ctx.attempt, "offset": ctx.offset,
           "partition": ctx.partition, "pid": os.getpid(), "t": time.time(),
           "due": ctx.available_at / 1000, **extra}
    path = os.environ.get("PROTOJOBS_TEST_RECORD")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    with _lock:
        RUNS.append(row)


def record(data: dict[str, Any], ctx: Any) -> None:
    if data.get("hang"):  # a handler stuck past any short timeout: records its start, nothing after
        _record(data, ctx, phase="hang")
        HANG.wait(float(data["hang"]))
        return
    if data.get("announce"):
        _record(data, ctx, phase="start")
    time.sleep(float(data.get("sleep", 0)))
    _record(data, ctx)


async def record_async(data: dict[str, Any], ctx: Any) -> None:
    await asyncio.sleep(float(data.get("sleep", 0)))
    _record(data, ctx)


def flaky(data: dict[str, Any], ctx: Any) -> None:
    """Fails the first `data["fail"]` attempts, then succeeds."""
    _record(data, ctx)
    if ctx.attempt <= int(data.get("fail", 0)):
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")


def poison(data: dict[str, Any], ctx: Any) -> None:
    _record(data, ctx)
    raise ValueError("this job can never succeed")


def chain(data: dict[str, Any], ctx: Any) -> None:
    """Records the run, then dispatches one follow-up job per source job."""
    _record(data, ctx)
    time.sleep(float(data.get("sleep", 0)))
    ctx.dispatch("followups", {"n": data.get("n")})


FAILED_CALLS: list[dict[str, Any]] = []  # BlockingFailure.failed() calls


class BlockingFailure(Job):
    """Always raises ValueError; its failed() blocks up to `block` seconds (on HANG)."""

    def handle(self, data: Any, ctx: Any) -> None:
        _record(data, ctx)
        raise ValueError("this job can never succeed")

    def failed(self, error: BaseException, data: Any) -> None:
        with _lock:
            FAILED_CALLS.append({"n": data.get("n"), "error": type(error).__name__})
        HANG.wait(float(data.get("block", 0)))


def hang_once(data: dict[str, Any], ctx: Any) -> None:
    """Hangs (on HANG, at most `hang` s) in its first attempt only, then records its run."""
    if ctx.attempt == 1 and data.get("hang"):
        HANG.wait(float(data["hang"]))
        return
    _record(data, ctx)
