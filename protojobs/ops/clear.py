"""Delete a queue's pending jobs (`protojobs clear`)."""

from __future__ import annotations

from dataclasses import dataclass

from protojobs.config import Settings
from protojobs.engine.dispatch import now_ms
from protojobs.kafka import admin
from protojobs.kafka.control import record_clear
from protojobs.model import names
from protojobs.ops.errors import known_queue


@dataclass(frozen=True)
class Cleared:
    """How many records of `topic` were (or, for `pending`, would be) deleted."""

    queue: str
    topic: str
    records: int


def pending(settings: Settings, queue: str) -> Cleared:
    """What `clear` would delete now (UnknownQueue for a queue jobs.toml does not declare)."""
    topic = names.queue_topic(settings.kafka.topic_prefix, known_queue(settings, queue))
    count = sum(h - lo for lo, h in admin.watermarks(admin.client(settings), topic).values())
    return Cleared(queue, topic, count)


def clear(settings: Settings, queue: str) -> Cleared:
    """Record the clear epoch (jobs of the queue still in delay tiers or retries are dropped
    when they come due), then delete the queue topic's records."""
    topic = names.queue_topic(settings.kafka.topic_prefix, known_queue(settings, queue))
    client = admin.client(settings)
    admin.ensure_topics(settings, client)
    record_clear(settings, queue, now_ms())  # first: jobs of the queue still on their way are dropped
    return Cleared(queue, topic, admin.clear(client, topic))
