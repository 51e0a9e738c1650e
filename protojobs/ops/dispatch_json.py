"""Dispatch jobs given as JSON text (`protojobs dispatch`): one payload, or a JSON-lines file.

The options are Dispatcher.dispatch's (`key`, `job`, `job_id`, `delay`, `at`, `at_ms`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protojobs.engine.dispatch import BulkResult, Dispatcher


class JobFileError(ValueError):
    """Lines of a JSON-lines file that are not JSON (nothing was sent); one problem per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class FileDispatch:
    """What `dispatch_file` did: `jobs` read from `file`, the dispatcher's per-job result."""

    file: Path
    jobs: int
    result: BulkResult


def dispatch_payload(dispatcher: Dispatcher, queue: str, payload: str, **options: Any) -> str:
    """Send the job whose data is the JSON text `payload`; its id once the broker acknowledged
    it. ValueError when the text is not JSON; DispatchError / PayloadError from the dispatcher."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as err:
        raise ValueError(f"the payload is not JSON: {err}") from None
    return dispatcher.dispatch(queue, data, **options)


def read_jobs(file: Path) -> list[Any]:
    """The jobs of a JSON-lines file, one per non-blank line; JobFileError lists the bad lines."""
    items, bad = [], []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as err:
            bad.append(f"{file}:{number}: not JSON: {err}")
    if bad:
        raise JobFileError(bad)
    return items


def dispatch_file(dispatcher: Dispatcher, queue: str, file: Path, **options: Any) -> FileDispatch:
    """Send every job of the JSON-lines `file` (each gets its own id: `job_id` is ignored)."""
    items = read_jobs(file)
    options = {k: v for k, v in options.items() if k != "job_id"}
    return FileDispatch(file, len(items), dispatcher.dispatch_many(queue, items, **options))
