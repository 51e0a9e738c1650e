"""protojobs.config: jobs.toml -> typed, frozen settings (see docs/architecture.md)."""

from protojobs.config.checks import ConfigIssue, PayloadError, key_path, to_toml
from protojobs.config.load import (
    ConfigError,
    KafkaSettings,
    QueueSettings,
    RetryPolicy,
    Settings,
    config_path,
    config_schema,
    effective,
    from_dict,
    load,
    payload_validator,
    redacted,
    schema_defaults,
)

__all__ = ["ConfigError", "ConfigIssue", "KafkaSettings", "PayloadError", "QueueSettings", "RetryPolicy",
           "Settings", "config_path", "config_schema", "effective", "from_dict", "key_path", "load",
           "payload_validator", "redacted", "schema_defaults", "to_toml"]
