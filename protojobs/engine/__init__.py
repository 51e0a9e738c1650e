"""protojobs.engine: see docs/architecture.md."""
