"""The effective configuration: Settings back in jobs.toml's shape, every default and override
applied, safe to print once `redacted` (`protojobs show`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from protojobs.config.secrets import redact
from protojobs.config.settings import QueueSettings, Settings
from protojobs.config.toml import plain
from protojobs.model.durations import format_ms


def redacted(settings_or_dict: Settings | Mapping[str, Any]) -> dict[str, Any]:
    """A plain copy safe to print: the effective config of Settings, or any tree; secrets "***"."""
    tree = effective(settings_or_dict) if isinstance(settings_or_dict, Settings) else plain(settings_or_dict)
    return dict(redact(tree))


def effective(settings: Settings) -> dict[str, Any]:
    """The configuration in jobs.toml's shape with every default and override applied."""
    k = settings.kafka
    kafka = {f.name: getattr(k, f.name) for f in fields(k)}
    kafka.update(producer=dict(k.producer), consumer=dict(k.consumer))
    retry = {p.name: {"max_attempts": p.max_attempts,
                      "backoff": [format_ms(d) for d in p.delays_ms] if p.backoff == "list" else p.backoff,
                      "base": format_ms(p.base_ms), "max": format_ms(p.max_ms), "multiplier": p.multiplier,
                      "jitter": p.jitter, "dead_letter_on": list(p.dead_letter_on),
                      "retry_on": list(p.retry_on)}
             for p in settings.retry.values()}
    return {"kafka": kafka, "delays": {"tiers": [format_ms(t) for t in settings.tiers_ms]},
            "retry": retry, "queues": {q.name: _queue_dict(q) for q in settings.queues.values()}}


def _queue_dict(q: QueueSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"handler": q.handler} if q.handler else {"jobs": list(q.jobs)} if q.jobs else {}
    if q.schema_path is not None:
        out["schema"] = str(q.schema_path)
    out.update(retry=q.retry, partitions=q.partitions, replication_factor=q.replication_factor,
               concurrency=q.concurrency, ordering=q.ordering)
    if q.key is not None:
        out["key"] = q.key
    out.update(delivery=q.delivery, timeout=format_ms(q.timeout_ms), retention=format_ms(q.retention_ms),
               validate_on_consume=q.validate_on_consume, dead_letter=q.dead_letter_topic,
               blocking_retries=q.blocking_retries)
    return out
