"""Delete a queue's pending jobs: `protojobs clear` and `Jobs.clear`, one function, one meaning.

The cut-off is the clear epoch T, recorded on the control topic (`kafka.control`):
1. the queue topic's end offsets are read: every record below them was dispatched before T;
2. T is recorded: jobs of the queue dispatched before T that are not below those offsets (in a
   delay tier, a retry, a record produced meanwhile) are dropped, unrun, by the delay router
   and the workers when they meet them;
3. the records below the offsets read in 1 are deleted.
A job dispatched at or after T is never deleted nor dropped: it runs. Jobs a worker already
fetched or started before it saw T are not stopped. T is the clearing host's clock, compared
with the dispatching hosts' (`dispatched_at`): keep the clocks in sync (NTP).
"""

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
    """Clear `queue` as of now (the module's cut-off): `records` is how many were deleted from its
    topic. UnknownQueue for a queue jobs.toml does not declare."""
    topic = names.queue_topic(settings.kafka.topic_prefix, known_queue(settings, queue))
    client = admin.client(settings)
    admin.ensure_topics(settings, client)
    marks = admin.watermarks(client, topic)  # before T: everything below was dispatched before it
    record_clear(settings, queue, now_ms())  # T: what is still on its way is dropped when met
    return Cleared(queue, topic, admin.clear(client, topic, marks))  # never a job dispatched after T
