"""Seed-style Job classes that dispatch follow-ups with the facade (`Jobs.dispatch`), not
`ctx.dispatch`, for tests/test_exactly_once_facade.py. The default `Jobs` instance is configured
from $PROTOJOBS_CONFIG in a `protojobs run` child, or by the test in process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from engine_jobs import _record

from protojobs import Job, Jobs


class FollowUp(Job):
    """Only ever dispatched: the tests count its records."""

    queue = "followups"

    def handle(self, data: Any) -> None:
        return None


class FacadeChain(Job):
    """Records the run, dispatches its follow-up through the facade, then works a little: a
    SIGKILL meanwhile finds follow-ups dispatched by jobs whose offsets are not committed."""

    queue = "work"

    def handle(self, data: Any, ctx: Any) -> None:
        _record(data, ctx)
        Jobs.dispatch(FollowUp, {"n": data["n"]})
        time.sleep(float(data.get("sleep", 0)))


class DispatchThenFail(Job):
    queue = "work"

    def handle(self, data: Any, ctx: Any) -> None:
        _record(data, ctx)
        Jobs.dispatch(FollowUp, {"n": data["n"]})
        raise ValueError("fails after dispatching")


class DispatchThenFailAsync(Job):
    queue = "work"

    async def handle(self, data: Any, ctx: Any) -> None:
        _record(data, ctx)
        await asyncio.sleep(0)
        Jobs.dispatch(FollowUp, {"n": data["n"]})
        raise ValueError("fails after dispatching")
