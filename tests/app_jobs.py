"""Decorated jobs for tests/test_app.py: one App whose config the test sets (`configure`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, TypedDict

from protojobs import App, PermanentError
from protojobs.api.app import JobContext

app = App({})  # replaced per test by configure(); the jobs below are declared on it
RUNS: list[tuple[str, int, int]] = []  # (job, n, attempt), in any thread
_lock = threading.Lock()


def configure(tree: dict[str, Any], eager: bool = False) -> App:
    app.configure(tree, eager=eager)
    app.eager_results.clear()
    RUNS.clear()
    return app


def _ran(job: str, n: int, ctx: JobContext) -> None:
    with _lock:
        RUNS.append((job, n, ctx.attempt))


@app.job(queue="work")
def ok(n: int, ctx: JobContext) -> int:
    _ran("ok", n, ctx)
    return n * 2


@app.job(queue="work")
def pause(n: int, wait: float, ctx: JobContext) -> float:
    """A job with a parameter named like dispatch()'s `wait` option."""
    _ran("pause", n, ctx)
    return n * wait


@app.job(queue="work")
def flaky(n: int, ctx: JobContext) -> None:
    _ran("flaky", n, ctx)
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")


@app.job(queue="work")
def doomed(n: int, ctx: JobContext) -> None:
    _ran("doomed", n, ctx)
    raise RuntimeError("always fails")


@app.job(queue="work")
def refused(n: int, ctx: JobContext) -> None:
    _ran("refused", n, ctx)
    raise PermanentError("never retried")


@app.job(queue="work", max_attempts=2)
async def twice(n: int, ctx: JobContext) -> None:
    _ran("twice", n, ctx)
    raise RuntimeError("async, and fails")


@app.job(queue="eo")
def chain(n: int) -> None:
    ok.dispatch(n=n)  # inside an exactly-once job: joins its transaction


@app.job(queue="eo")
def chain_then_fail(n: int) -> None:
    ok.dispatch(n=n)
    raise PermanentError("after dispatching")  # the dispatch above is never published


@dataclass
class Address:
    street: str
    zip: str | None = None


class Options(TypedDict):
    urgent: bool


@app.job(queue="mail")
def send(to: str, address: Address, options: Options, tags: list[str] | None = None) -> str:
    assert isinstance(address, Address)
    return f"{to} at {address.street} ({','.join(tags or [])}, urgent={options['urgent']})"


def double(data: dict[str, Any]) -> int:
    """A plain handler jobs.toml names (`handler = "app_jobs:double"`): no decorator."""
    return int(data["n"]) * 2
