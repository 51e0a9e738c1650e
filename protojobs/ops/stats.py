"""Queue statistics from the cluster: depth, delayed and dead-lettered jobs, group members."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protojobs.config import Settings
from protojobs.kafka import admin
from protojobs.model import names


def unknown_queues(settings: Settings, queues: Sequence[str] | None) -> list[str]:
    """The names of `queues` that jobs.toml does not declare, in their order."""
    return [q for q in queues or () if q not in settings.queues]


def stats_data(settings: Settings, queues: Sequence[str] | None = None) -> dict[str, Any]:
    """Depth per queue (and partition), jobs in delay tiers, dead-lettered, group members."""
    client = admin.client(settings)
    group, prefix = settings.kafka.group_id, settings.kafka.topic_prefix
    out: dict[str, Any] = {"group": group, "queues": {}}
    for name in queues or settings.queues:
        depth = admin.topic_depth(client, group, names.queue_topic(prefix, name))
        out["queues"][name] = {"depth": sum(depth.values()),
                               "partitions": {str(p): d for p, d in sorted(depth.items())}}
    router = names.router_group(group)
    out["delayed"] = {names.delay_topic(prefix, t): sum(admin.topic_depth(client, router,
                      names.delay_topic(prefix, t)).values()) for t in settings.tiers_ms}
    dead = {}
    for name in sorted({q.dead_letter_topic for q in settings.queues.values()}):
        dead[name] = sum(high - low for low, high in admin.watermarks(client, name).values())
    out["dead_letter"] = dead
    out["members"] = admin.group_members(client, group)
    return out
