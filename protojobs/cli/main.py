"""Command line (click): parsing only. Each command is a thin click function in its module
(protojobs.cli.broker, config, dispatch, dlq, health, queues, run, schedules, completion) that
calls a plain function of that module, which prints and returns the exit code.

Adding a command: write `protojobs/cli/<name>.py` with one `@base.command("<name>")` (or
`@base.group`) function, and add `"<name>": "protojobs.cli.<name>:<function>"` to COMMANDS.
Modules are imported only when their command runs (or `--help` lists them).

Exit codes: 0 success, 1 failure (invalid config, failed command), 2 usage error; `run` also
3 (fenced) and 4 (wedged); 130 when interrupted.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import click

from protojobs.cli import base

COMMANDS = {
    "broker": "protojobs.cli.broker:broker",
    "clear": "protojobs.cli.queues:clear_cmd",
    "completion": "protojobs.cli.completion:completion",
    "config": "protojobs.cli.config:config_group",
    "dashboard": "protojobs.cli.dashboard:dashboard",
    "dispatch": "protojobs.cli.dispatch:dispatch_cmd",
    "dlq": "protojobs.cli.dlq:dlq_group",
    "health": "protojobs.cli.health:health",
    "retry-plan": "protojobs.cli.queues:retry_plan_cmd",
    "run": "protojobs.cli.run:run_cmd",
    "schedules": "protojobs.cli.schedules:schedules_group",
    "stats": "protojobs.cli.queues:stats_cmd",
    "topics": "protojobs.cli.queues:topics_group",
    "validate": "protojobs.cli.config:validate_alias",
}


def _version() -> str:
    try:
        return version("protojobs")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


class Commands(click.Group):
    """The root group: commands are imported from COMMANDS when needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        found: click.Command = getattr(importlib.import_module(module), attr)
        return found


@base.group("protojobs", cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="protojobs", message="%(prog)s %(version)s")
def cli() -> None:
    """Declarative job engine on Apache Kafka."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit code (`--help` and `--version`: 0 after printing;
    a usage error: 2 after printing it)."""
    try:
        code = cli.main(list(argv) if argv is not None else None, prog_name="protojobs", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        print(file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
