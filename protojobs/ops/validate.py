"""`protojobs validate`: jobs.toml, its payload schemas and handlers, and (`cluster`) the live
cluster's replication limits. Returns what it found; never prints.

`check_cluster` talks to the cluster through an AdminClient: it lives here, not in
protojobs.config, which does no Kafka I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protojobs.config import ConfigError, ConfigIssue, Settings, config_path, load
from protojobs.config.checks import finish_loaded, queue_key_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Summary:
    """A valid configuration: the file read and how many of each it declares."""

    path: str
    queues: int
    tiers: int
    policies: int


def validate(config: str | None, cluster: bool = False, env: Mapping[str, str] | None = None,
             *, cluster_timeout: float = 5.0, import_handlers: bool = True) -> Summary:
    """Load and check the configuration (`import_handlers`: import every handler module, which
    runs its top-level code; `cluster`: also check it against the live cluster); ConfigError
    lists every issue, secrets scrubbed."""
    shown = str(config_path(config, env))
    settings = load(config, env, import_handlers=import_handlers)
    if cluster:
        problems = check_cluster(settings, timeout=cluster_timeout)
        if problems:
            raise ConfigError(finish_loaded(settings, problems))
    return Summary(shown, len(settings.queues), len(settings.tiers_ms), len(settings.retry))


def check_cluster(settings: Settings, timeout: float = 5.0) -> list[ConfigIssue]:
    """Replication factors vs the live cluster: at most its broker count, at least its
    min.insync.replicas (else acks=all produces fail). An unreachable cluster is one issue."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    brokers = settings.kafka.brokers
    try:
        conf: dict[str, Any] = {**settings.kafka.producer, "bootstrap.servers": brokers, "logger": log}
        admin = AdminClient(conf)
    except (KafkaException, ValueError, TypeError) as exc:
        return [ConfigIssue("kafka.producer", f"not a usable client configuration: {_kafka_reason(exc)}")]
    try:
        metadata = admin.list_topics(timeout=timeout)
        resource = ConfigResource(ResourceType.BROKER, str(min(metadata.brokers)))
        future = admin.describe_configs([resource], request_timeout=timeout)[resource]
        described = future.result(timeout=timeout)
        min_isr = int(described["min.insync.replicas"].value)
    except (KafkaException, ValueError, KeyError, TimeoutError) as exc:
        reason = _kafka_reason(exc)
        return [ConfigIssue("kafka.brokers", f"cannot reach {brokers} within {timeout:g}s: {reason}")]
    count = len(metadata.brokers)
    issues = []
    for q in settings.queues.values():
        path = queue_key_path(settings, q.name, "replication_factor")
        if q.replication_factor > count:
            issues.append(ConfigIssue(path, f"{q.replication_factor} is more than the cluster's "
                                            f"{count} broker(s)"))
        if q.replication_factor < min_isr:
            issues.append(ConfigIssue(path, f"{q.replication_factor} is below the cluster's "
                                            f"min.insync.replicas ({min_isr}): acks=all produces would fail"))
    return list(dict.fromkeys(issues))


def _kafka_reason(exc: BaseException) -> str:
    first = exc.args[0] if exc.args else exc
    return str(first.str()) if hasattr(first, "str") else str(first) or type(exc).__name__
