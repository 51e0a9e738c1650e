"""protojobs.model: see docs/architecture.md."""
