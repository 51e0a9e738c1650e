"""protojobs.cli: the command line (the only code that prints or exits)."""

from protojobs.cli.main import main

__all__ = ["main"]
