"""protojobs.kafka: see docs/architecture.md."""
