"""protojobs: a declarative, fault-tolerant job engine on Apache Kafka."""

__version__ = "0.1.0"
