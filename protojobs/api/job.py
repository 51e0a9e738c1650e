"""The seed's `Job` base class, and the registry of Job classes by name.

`handle(data[, context])` does the work. jobs.toml wins over a Job's attributes: `max_retries`
counts total attempts where the file does not set the policy's `max_attempts`; `queue` routes
dispatch unless the file puts the class on another queue; `retry_delay` and `timeout` are
informational (the retry policy and the queue's `timeout` decide). The engine asks
`should_retry` before each retry and calls `failed` once on dead-lettering, on the lane thread
that ran the job (`engine.attempt.Handler`).

Job classes register by class name when defined. A queue with no handler and no jobs in
jobs.toml (the `default` queue of a file or dict that declares no queue) runs the registered
class its envelope's `job` names: classes imported in this process, never a module named by
message content.
"""

from __future__ import annotations

import abc
import inspect
import logging
import threading
from typing import Any, ClassVar

__all__ = ["Job", "registered", "runnable"]

log = logging.getLogger(__name__)
_REGISTRY: dict[str, type[Job]] = {}
_registry_lock = threading.Lock()


class Job(abc.ABC):
    """`handle(data[, context])` does the work. The worker makes one instance per handler and
    reuses it for every job: keep per-job state in locals, not on `self`."""

    name: ClassVar[str] = "Job"  # default: the class name
    queue: ClassVar[str] = "default"
    max_retries: ClassVar[int] = 3  # total attempts, the first included
    retry_delay: ClassVar[float] = 60  # seconds
    timeout: ClassVar[float] = 300  # seconds

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        with _registry_lock:
            known = _REGISTRY.get(cls.__name__)
            if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
                log.warning("two Job classes named %s (%s and %s): the later one is used",
                            cls.__name__, known.__module__, cls.__module__)
            _REGISTRY[cls.__name__] = cls

    @abc.abstractmethod
    def handle(self, data: Any) -> Any:
        """Do the job; raising fails the attempt (PermanentError: no retry)."""

    def should_retry(self, attempts: int, error: BaseException) -> bool:
        """Asked when the retry policy would retry after attempt `attempts`: False dead-letters."""
        return True

    def failed(self, error: BaseException, data: Any) -> None:
        """Called once when the job is dead-lettered (retries exhausted or not allowed)."""
        log.error("job %s failed for good: %s: %s", self.name, type(error).__name__, error)


def registered(name: str) -> type[Job] | None:
    """The Job class registered under `name` (its class name, or its `name` attribute)."""
    with _registry_lock:
        found = _REGISTRY.get(name)
        return found or next((c for c in _REGISTRY.values() if c.name == name), None)


def runnable() -> dict[str, type[Job]]:
    """Every registered, concrete Job class by class name."""
    with _registry_lock:
        return {name: cls for name, cls in _REGISTRY.items() if not inspect.isabstract(cls)}
