"""Job classes the facade tests (tests/test_jobs.py) dispatch and run; jobs.toml names some of them.

`RUNS` records every attempt, `FAILED` every call of a `failed` hook (in-process workers only).
"""

from __future__ import annotations

import threading
from typing import Any

from protojobs import Job, PermanentError

RUNS: list[dict[str, Any]] = []
FAILED: list[dict[str, Any]] = []
_lock = threading.Lock()


def _record(job: Job, data: Any, ctx: Any = None) -> None:
    with _lock:
        RUNS.append({"job": job.name, "data": data, "attempt": getattr(ctx, "attempt", None),
                     "queue": getattr(ctx, "queue", None)})


class SendEmailJob(Job):
    """The seed's example job: declares its queue."""

    queue = "emails"

    def handle(self, data: Any, ctx: Any) -> dict[str, Any]:
        _record(self, data, ctx)
        return {"sent_to": data.get("to")}


class CleanupJob(Job):
    """Runs on the default queue; returns what it was given."""

    def handle(self, data: Any) -> Any:
        _record(self, data)
        return data


class FlakyJob(Job):
    """Fails its first `data["fail"]` attempts, then succeeds."""

    def handle(self, data: Any, ctx: Any) -> str:
        _record(self, data, ctx)
        if ctx.attempt <= int(data.get("fail", 0)):
            raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
        return "ok"


class NoRetryJob(Job):
    """Always fails; refuses every retry; records its `failed` calls."""

    def handle(self, data: Any, ctx: Any) -> None:
        _record(self, data, ctx)
        raise ConnectionError("the mail server said no")

    def should_retry(self, attempts: int, error: BaseException) -> bool:
        return False

    def failed(self, error: BaseException, data: Any) -> None:
        with _lock:
            FAILED.append({"job": self.name, "error": error, "data": data})


class BrokenHookJob(Job):
    """Fails for good at once; its `failed` hook raises too."""

    def handle(self, data: Any, ctx: Any) -> None:
        _record(self, data, ctx)
        raise PermanentError("cannot ever work")

    def failed(self, error: BaseException, data: Any) -> None:
        with _lock:
            FAILED.append({"job": self.name, "error": error, "data": data})
        raise RuntimeError("the failed() hook itself is broken")


class TwoAttemptsJob(Job):
    """Always fails; `max_retries = 2` total attempts (used where the file sets none)."""

    max_retries = 2

    def handle(self, data: Any, ctx: Any) -> None:
        _record(self, data, ctx)
        raise RuntimeError(f"attempt {ctx.attempt} fails")

    def failed(self, error: BaseException, data: Any) -> None:
        with _lock:
            FAILED.append({"job": self.name, "error": error, "data": data})


class NowhereJob(Job):
    """Declares a queue no configuration has."""

    queue = "nowhere"

    def handle(self, data: Any) -> None:
        _record(self, data)


SWITCH = {"broken": True}


class ToggleJob(Job):
    """Fails while SWITCH["broken"] is set (a dead-lettered job that a retry can then fix)."""

    def handle(self, data: Any, ctx: Any) -> str:
        _record(self, data, ctx)
        if SWITCH["broken"]:
            raise RuntimeError("still broken")
        return "fixed"
