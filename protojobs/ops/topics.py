"""The topics jobs.toml implies: plan the changes against the cluster, apply the safe ones.

`plan` changes nothing. `apply` creates topics, adds partitions and alters configs, and raises
`admin.AdminError` listing the unsafe changes it refused (after doing the rest).
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka.admin import AdminClient

from protojobs.config import Settings
from protojobs.kafka import admin
from protojobs.kafka.admin import AdminError, Change

__all__ = ["AdminError", "Change", "TopicPlan", "apply", "plan"]


@dataclass(frozen=True)
class TopicPlan:
    """The differences between jobs.toml and the cluster (empty: they match)."""

    client: AdminClient
    changes: list[Change]

    @property
    def unsafe(self) -> bool:
        """Some change cannot be applied (fewer partitions, another replication factor)."""
        return any(c.unsafe for c in self.changes)


def plan(settings: Settings) -> TopicPlan:
    client = admin.client(settings)
    return TopicPlan(client, admin.plan(client, admin.topic_specs(settings)))


def apply(topic_plan: TopicPlan) -> list[Change]:
    """Carry out the plan's safe changes; the applied changes."""
    return admin.apply(topic_plan.client, topic_plan.changes)
