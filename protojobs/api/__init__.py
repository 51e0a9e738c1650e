"""protojobs.api: see docs/architecture.md."""
