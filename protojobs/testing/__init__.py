"""Real Kafka and toxiproxy for tests and local development (see `protojobs.testing.plugin`)."""

from protojobs.local.cluster import KAFKA_VERSION, BrokerError, Cluster, ensure_kafka
from protojobs.local.toxiproxy import TOXIPROXY_VERSION, Proxy, Toxiproxy, ensure_toxiproxy

__all__ = ["KAFKA_VERSION", "TOXIPROXY_VERSION", "BrokerError", "Cluster", "Proxy", "Toxiproxy",
           "ensure_kafka", "ensure_toxiproxy"]
