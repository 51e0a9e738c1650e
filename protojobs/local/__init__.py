"""protojobs.local: see docs/architecture.md."""
