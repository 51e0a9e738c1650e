"""Real Kafka and toxiproxy for tests and local development (see `protojobs.testing.plugin`), and
eager mode for unit tests without a broker (`protojobs.testing.eager`: `App(..., eager=True)`,
`eagerly(app)`; imported on first use)."""

from typing import Any

from protojobs.local.cluster import KAFKA_VERSION, BrokerError, Cluster, ensure_kafka
from protojobs.local.toxiproxy import TOXIPROXY_VERSION, Proxy, Toxiproxy, ensure_toxiproxy

__all__ = ["KAFKA_VERSION", "TOXIPROXY_VERSION", "App", "BrokerError", "Cluster", "EagerResult", "Proxy", "Toxiproxy",
           "eagerly", "ensure_kafka", "ensure_toxiproxy"]


def __getattr__(name: str) -> Any:
    """`eagerly`, `App`, `EagerResult` import the engine on first use: the plugin stays light."""
    if name in ("App", "EagerResult", "eagerly"):
        from protojobs.testing import eager as module

        return getattr(module, name)
    raise AttributeError(f"module 'protojobs.testing' has no attribute {name!r}")
