"""Errors the operations raise; the command line turns them into messages and exit codes."""

from __future__ import annotations

from protojobs.config import Settings


class UnknownQueue(ValueError):
    """A queue name that jobs.toml does not declare."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        super().__init__(f"unknown queue {queue!r}")


def known_queue(settings: Settings, queue: str) -> str:
    """`queue` if jobs.toml declares it, else UnknownQueue."""
    if queue not in settings.queues:
        raise UnknownQueue(queue)
    return queue
