"""Every Kafka name protojobs uses, in one place: topics, consumer groups, transactional ids.

- `{prefix}{queue}`           one topic per queue (`queue_topic`)
- `{prefix}dead-letter`       failed jobs (`dead_letter_topic`; a queue may name its own)
- `{prefix}delay-{tier}`      one topic per delay tier, shared by all queues (`delay_topic`)
- `{prefix}schedules`         the scheduler's state (`schedules_topic`)
- `{prefix}control`           compacted control records, e.g. per-queue clear epochs (`control_topic`)

Guarantees: every function returns a name Kafka accepts (legal characters, at most 249 of
them) or raises ValueError naming the problem; a queue topic never collides with an internal
topic of the same prefix, because queue names that would (`dead-letter`, `schedules`,
`delay-...`) are rejected. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from protojobs.model.durations import format_ms

MAX_TOPIC_NAME = 249
_LEGAL = re.compile(r"^[A-Za-z0-9._-]+$")
DEAD_LETTER = "dead-letter"
SCHEDULES = "schedules"
CONTROL = "control"
WORKERS = "workers"
DELAY_PREFIX = "delay-"


def check_topic_name(name: str) -> str:
    """Return `name` unchanged if Kafka accepts it as a topic name, else raise ValueError."""
    if not isinstance(name, str) or not _LEGAL.match(name):
        raise ValueError(
            f"topic name {name!r} is not legal: use only letters, digits, '.', '_' and '-'"
        )
    if name in (".", ".."):
        raise ValueError(f"topic name {name!r} is not legal")
    if len(name) > MAX_TOPIC_NAME:
        raise ValueError(f"topic name {name[:40]!r}... is longer than {MAX_TOPIC_NAME} characters")
    return name


def is_reserved_queue_name(queue: str) -> bool:
    """True if a queue of this name would share a topic with protojobs' own topics."""
    return queue in (DEAD_LETTER, SCHEDULES, CONTROL, WORKERS) or queue.startswith(DELAY_PREFIX)


def queue_topic(prefix: str, queue: str) -> str:
    """The topic of a queue: `{prefix}{queue}`; ValueError for an empty or reserved queue name."""
    if not queue:
        raise ValueError("a queue name must not be empty")
    if is_reserved_queue_name(queue):
        raise ValueError(
            f"queue name {queue!r} is reserved: its topic would collide with protojobs' "
            f"{DEAD_LETTER!r}, {SCHEDULES!r} or {DELAY_PREFIX!r}... topics"
        )
    return check_topic_name(f"{prefix}{queue}")


def dead_letter_topic(prefix: str) -> str:
    """The shared dead-letter topic: `{prefix}dead-letter`."""
    return check_topic_name(f"{prefix}{DEAD_LETTER}")


def delay_topic(prefix: str, tier_ms: int) -> str:
    """The topic of one delay tier, e.g. `{prefix}delay-5s` (the tier's shortest spelling)."""
    if isinstance(tier_ms, bool) or not isinstance(tier_ms, int) or tier_ms <= 0:
        raise ValueError(f"a delay tier must be a positive number of milliseconds, not {tier_ms!r}")
    return check_topic_name(f"{prefix}{DELAY_PREFIX}{format_ms(tier_ms)}")


def schedules_topic(prefix: str) -> str:
    """The scheduler's topic: `{prefix}schedules`."""
    return check_topic_name(f"{prefix}{SCHEDULES}")


def control_topic(prefix: str) -> str:
    """Compacted control records (per-queue clear epochs): `{prefix}control`."""
    return check_topic_name(f"{prefix}{CONTROL}")


def workers_topic(prefix: str) -> str:
    """Compacted worker presence records (`observe.presence`), one key per process: `{prefix}workers`."""
    return check_topic_name(f"{prefix}{WORKERS}")


def worker_key(host: str, pid: int, slot: int) -> str:
    """The key of one worker process's presence records."""
    return f"{host}/{pid}/{slot}"


@dataclass(frozen=True)
class TopicSpec:
    """What one topic should look like: created or altered to this by `topics apply`.

    Validated on construction (legal name, at least one partition and one replica). `config`
    holds topic-level settings (e.g. `retention.ms`) as strings and is stored as a read-only
    copy, so a spec can be shared freely.
    """

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_topic_name(self.name)
        for label in ("partitions", "replication_factor"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"topic {self.name}: {label} must be an integer >= 1, not {value!r}"
                )
        for key, value in self.config.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(
                    f"topic {self.name}: config entries must be strings, not {key!r}={value!r}"
                )
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))


# --- consumer groups and transactional ids -----------------------------------------------------
# Every group and transactional.id protojobs uses is built here. `group_id` is `[kafka] group_id`.


def worker_group(group_id: str) -> str:
    """The workers' group: `[kafka] group_id` itself (the seed's name)."""
    return group_id


def router_group(group_id: str) -> str:
    """The delay routers' group: `{group_id}-delays`."""
    return f"{group_id}-delays"


def scheduler_group(group_id: str) -> str:
    """The schedulers' group (the member holding partition 0 leads): `{group_id}-scheduler`."""
    return f"{group_id}-scheduler"


def dlq_reader_group(group_id: str) -> str:
    """The group `dlq` reads with (it assigns partitions and never commits): `{group_id}-dlq-reader`."""
    return f"{group_id}-dlq-reader"


def control_reader_group(unique: str) -> str:
    """A private, never-committing group for reading the control topic: `protojobs-control-{unique}`."""
    return f"protojobs-control-{unique}"


def transactional_id(group_id: str, host: str, slot: int, role: str = "worker") -> str:
    """`{group_id}.{host}.{slot}` for workers, `{group_id}.{role}.{host}.{slot}` for the router and
    the scheduler: stable for a host and process slot (a restarted process fences its zombie) and
    unique across hosts (two hosts' slot-0 workers never fence each other)."""
    middle = "" if role == "worker" else f"{role}."
    return f"{group_id}.{middle}{host}.{slot}"
