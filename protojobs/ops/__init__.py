"""protojobs.ops: see docs/architecture.md."""
