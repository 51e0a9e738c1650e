"""protojobs.observe: see docs/architecture.md."""
