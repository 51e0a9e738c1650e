"""Pause and resume a queue's consumption across the consumer group (`kafka.control` pause
records: every worker obeys within about a second, and a restarted one too)."""

from __future__ import annotations

from protojobs.config import Settings
from protojobs.engine.dispatch import now_ms
from protojobs.kafka import admin, control
from protojobs.kafka.clients import ErrorWatch
from protojobs.ops.errors import known_queue


def set_paused(settings: Settings, queue: str, paused: bool, by: str) -> None:
    """Pause (or resume) `queue` (UnknownQueue when jobs.toml has none)."""
    known_queue(settings, queue)
    admin.ensure_topics(settings)
    control.record_pause(settings, queue, paused, now_ms(), by)


def paused_queues(settings: Settings) -> set[str]:
    """The queues paused now, read from the control topic."""
    reader = control.ClearEpochs(settings, ErrorWatch())
    try:
        reader.catch_up()
        return set(reader.paused)
    finally:
        reader.close()
