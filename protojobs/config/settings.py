"""The typed, frozen settings a jobs.toml is built into (protojobs.config.load builds them).

Everything the engine needs is here resolved: durations in milliseconds, [defaults] and the
schema's defaults applied to every queue, each retry policy complete.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from protojobs.config.payloads import compile_payload_schema
from protojobs.config.secrets import redact
from protojobs.model.schedules import Schedule

__all__ = ["KafkaSettings", "QueueSettings", "RetryPolicy", "Settings"]


class _Frozen:
    """Mapping fields become read-only copies on construction."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, dict):
                object.__setattr__(self, f.name, MappingProxyType(dict(value)))


def _redacted_repr(obj: Any) -> str:
    """The dataclass repr with every secret of its mapping fields shown as "***"
    (config.secrets): a logged or printed Settings never shows a password."""
    parts = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        parts.append(f"{f.name}={redact(value) if isinstance(value, Mapping) else value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


@dataclass(frozen=True)
class KafkaSettings(_Frozen):
    """[kafka]; `producer` / `consumer` are librdkafka properties passed through as written."""

    brokers: str
    group_id: str
    topic_prefix: str
    auto_offset_reset: str
    enable_auto_commit: bool
    compression: str
    batch_size: int
    timeout_ms: int
    debug: str
    dead_letter_topic: str
    producer: Mapping[str, Any]
    consumer: Mapping[str, Any]

    __repr__ = _redacted_repr


@dataclass(frozen=True)
class RetryPolicy(_Frozen):
    """[retry.<name>]; `backoff` is "exponential", "fixed" or "list" (then `delays_ms` holds it).
    `max_attempts_declared`: jobs.toml (or an override) sets this policy's max_attempts, so it
    wins over a Job class's `max_retries`; otherwise `max_attempts` is the schema's default.
    It says where the value came from, not what it is, so equality ignores it."""

    name: str
    max_attempts: int
    max_attempts_declared: bool = field(compare=False)
    backoff: str
    delays_ms: tuple[int, ...]
    base_ms: int
    max_ms: int
    multiplier: float
    jitter: float
    dead_letter_on: tuple[str, ...]
    retry_on: tuple[str, ...]


@dataclass(frozen=True)
class QueueSettings(_Frozen):
    """[queues.<name>] over [defaults] over the schema's defaults; `schema` is the loaded file."""

    name: str
    handler: str | None
    jobs: tuple[str, ...]
    schema_path: Path | None
    schema: Mapping[str, Any] | None
    retry: str
    partitions: int
    replication_factor: int
    concurrency: int
    ordering: str
    key: str | None
    delivery: str
    timeout_ms: int
    retention_ms: int
    validate_on_consume: bool
    dead_letter_topic: str
    blocking_retries: bool

    @cached_property
    def _payload_validator(self) -> Callable[[Any], None]:
        return compile_payload_schema(self.schema)


@dataclass(frozen=True)
class Settings(_Frozen):
    """The whole configuration; `schedules` are jobs.toml's [schedules.*] (the dynamic ones live
    in the schedules topic); `raw` is the merged tree (files + env) as validated."""

    kafka: KafkaSettings
    tiers_ms: tuple[int, ...]
    retry: Mapping[str, RetryPolicy]
    queues: Mapping[str, QueueSettings]
    schedules: Mapping[str, Schedule]
    source: Path | None
    raw: Mapping[str, Any]

    __repr__ = _redacted_repr
