"""Dispatch that does not block its caller: a Future of the job's id, or one await for many.

Both go through the Dispatcher's own path (`prepare`, `send`, the same producer) and are
resolved by the same delivery reports as a synchronous `dispatch`: each job's `Outcome` calls
back when its report arrives, on the Dispatcher's report thread (the one that also serves
synchronous waits, running only while reports are outstanding). A callback resolves a
`concurrent.futures.Future`, or hands an asyncio future to its loop with
`loop.call_soon_threadsafe`: no thread per call. Validation errors raise at once; inside an
exactly-once job the jobs join its transaction (`Dispatcher.joined`) and are done at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from protojobs.engine.dispatch import BulkResult, Outcome

if TYPE_CHECKING:
    from protojobs.engine.dispatch import Dispatcher


def submit(dispatcher: Dispatcher, queue: str, data: Any, **options: Any) -> Future[str]:
    """Send one job; the Future holds its id once acknowledged (or the DispatchError)."""
    txn = dispatcher.joined()
    env, topic = dispatcher.prepare(queue, data, **options)
    future: Future[str] = Future()
    if txn is not None:
        dispatcher.deliver(env, topic, txn)
        future.set_result(env.id)
        return future

    def settle(outcome: Outcome) -> None:
        if outcome.error is None:
            future.set_result(outcome.job_id)
        else:
            future.set_exception(outcome.error)

    dispatcher.send(env, Outcome(env.id, on_done=settle), topic)
    return future


async def dispatch_many(dispatcher: Dispatcher, queue: str, items: Iterable[Any], **options: Any) -> BulkResult:
    """Send every job at producer speed, then await all their reports at once (as
    `Dispatcher.dispatch_many`, through the same `Dispatcher.send_many`)."""
    loop = asyncio.get_running_loop()
    all_done: asyncio.Future[None] = loop.create_future()

    def resolved(_outcome: Outcome) -> None:  # on the report thread
        loop.call_soon_threadsafe(_resolve, all_done)

    batch = dispatcher.send_many(queue, items, options, on_done=resolved)
    await all_done
    return batch.result()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
