"""Dispatch jobs given as JSON text (`protojobs dispatch`): one payload, or a stream of JSON lines.

The options are Dispatcher.dispatch's (`key`, `job`, `job_id`, `delay`, `at`, `at_ms`).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from protojobs.config import PayloadError
from protojobs.engine.dispatch import Dispatcher, DispatchError, Outcome, Plan

IN_FLIGHT = 10_000  # jobs sent but not yet acknowledged, at most, while streaming


def dispatch_payload(dispatcher: Dispatcher, queue: str, payload: str, **options: Any) -> str:
    """Send the job whose data is the JSON text `payload`; its id once the broker acknowledged
    it. ValueError when the text is not JSON; DispatchError / PayloadError from the dispatcher."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as err:
        raise ValueError(f"the payload is not JSON: {err}") from None
    return dispatcher.dispatch(queue, data, **options)


@dataclass(frozen=True)
class Line:
    """What became of one non-blank input line (numbered from 1): its job's acknowledged id, or
    why it was not sent (not JSON, an invalid payload) or not delivered. `read` is how many
    bytes of the input were consumed when it was reported (for a progress bar)."""

    number: int
    job_id: str | None
    error: str | None
    read: int


def stream_lines(dispatcher: Dispatcher, queue: str, lines: Iterable[bytes], *, in_flight: int = IN_FLIGHT,
                 **options: Any) -> Iterator[Line]:
    """Send one job per non-blank line of `lines` (JSON, UTF-8) and yield each line's outcome in
    input order as soon as it is known. Memory stays bounded: at most `in_flight` jobs are
    unacknowledged (the next line is read only when one is acknowledged), and nothing else of
    the input is kept. A bad line is reported and skipped; the others are sent (each job gets
    its own id: `job_id` is ignored). A client refused for good (DispatchError raised by the
    dispatcher's wait) ends the stream with that exception."""
    options = {k: v for k, v in options.items() if k != "job_id"}
    waiting: deque[tuple[int, Outcome | Line]] = deque()
    read = 0
    plans: list[Plan | None] = [None]  # the queue's and options' part of building a job, made once
    for number, raw in enumerate(lines, 1):
        read += len(raw)
        if raw.strip():
            waiting.append((number, _send(dispatcher, queue, number, raw, read, options, plans)))
        while waiting and (len(waiting) > in_flight or _settled(waiting[0][1])):
            if len(waiting) > in_flight:
                dispatcher.wait([o for _, o in (waiting[0],) if isinstance(o, Outcome)])
            yield _line(*waiting.popleft(), read)
        if number % 1000 == 0:
            dispatcher.producer.poll(0)
    dispatcher.wait(o for _, o in waiting if isinstance(o, Outcome))
    while waiting:
        yield _line(*waiting.popleft(), read)


def _send(dispatcher: Dispatcher, queue: str, number: int, raw: bytes, read: int,
          options: dict[str, Any], plans: list[Plan | None]) -> Outcome | Line:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return Line(number, None, f"not JSON: {err}", read)
    try:
        env, topic, plans[0] = dispatcher.prepare_reusing(queue, data, dict(options), plans[0])
    except (PayloadError, DispatchError) as err:
        return Line(number, None, str(err), read)
    outcome = Outcome(env.id)
    dispatcher.send(env, outcome, topic)
    return outcome


def _settled(item: Outcome | Line) -> bool:
    return isinstance(item, Line) or item.done


def _line(number: int, item: Outcome | Line, read: int) -> Line:
    if isinstance(item, Line):
        return Line(item.number, None, item.error, read)
    return Line(number, item.job_id if item.error is None else None,
                None if item.error is None else str(item.error), read)
