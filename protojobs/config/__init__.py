"""protojobs.config: jobs.toml -> typed, frozen settings (see docs/architecture.md)."""

from protojobs.config.effective import effective, redacted
from protojobs.config.issues import ConfigError, ConfigIssue
from protojobs.config.load import (
    config_path,
    config_schema,
    from_dict,
    load,
    schema_defaults,
)
from protojobs.config.payloads import PayloadError, payload_validator
from protojobs.config.settings import KafkaSettings, QueueSettings, RetryPolicy, Settings
from protojobs.config.toml import key_path, to_toml

__all__ = ["ConfigError", "ConfigIssue", "KafkaSettings", "PayloadError", "QueueSettings", "RetryPolicy",
           "Settings", "config_path", "config_schema", "effective", "from_dict", "key_path", "load",
           "payload_validator", "redacted", "schema_defaults", "to_toml"]
