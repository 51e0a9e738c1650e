"""`protojobs config validate | show` (`protojobs validate`: the same as `config validate`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

import click

from protojobs.cli import base
from protojobs.config import ConfigError, load, redacted, to_toml
from protojobs.ops.validate import validate


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s" if not word.endswith("y") else f"{n} {word[:-1]}ies"


def validate_command(config: str | None, cluster: bool = False, env: Mapping[str, str] | None = None,
                     *, cluster_timeout: float = 5.0, import_handlers: bool = True) -> int:
    """`protojobs validate`: 0 and a one-line summary, or 1 and every `path: message` on stderr."""
    try:
        summary = validate(config, cluster, env, cluster_timeout=cluster_timeout, import_handlers=import_handlers)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    print(f"{summary.path}: valid ({_plural(summary.queues, 'queue')}, "
          f"{_plural(summary.tiers, 'delay tier')}, {_plural(summary.policies, 'retry policy')})")
    return 0


def show_command(config: str | None, env: Mapping[str, str] | None = None, *, fmt: str = "toml") -> int:
    """`protojobs config show`: the effective config (overrides applied, secrets redacted) on stdout."""
    try:
        settings = load(config, env, import_handlers=False)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    tree = redacted(settings)
    print(json.dumps(tree, indent=2) if fmt == "json" else to_toml(tree), end="\n" if fmt == "json" else "")
    return 0


@base.group("config")
def config_group() -> None:
    """Check jobs.toml, or print the effective configuration."""


_VALIDATE_HELP = ("Check jobs.toml, its payload schemas and handlers (imports the handler modules, which "
                  "runs their top-level code; --no-import skips that).")


def _validate_options(func: base.F) -> base.F:
    func = click.option("--no-import", is_flag=True,
                        help="do not import the handler modules (nor check that they import)")(func)
    return click.option("--cluster", is_flag=True, help="also check against the live cluster")(func)


@base.command("validate", parent=config_group, help=_VALIDATE_HELP)
@_validate_options
def validate_cmd(cluster: bool, no_import: bool) -> int:
    return validate_command(base.config_path(), cluster=cluster, import_handlers=not no_import)


@base.command("validate", hidden=True, help=_VALIDATE_HELP + " Same as `protojobs config validate`.")
@_validate_options
def validate_alias(cluster: bool, no_import: bool) -> int:
    return validate_command(base.config_path(), cluster=cluster, import_handlers=not no_import)


@base.command("show", parent=config_group, json=True)
@click.option("--format", "fmt", type=click.Choice(["toml", "json"]), default=None,
              help="output format (default toml; --json: json)")
def show_cmd(fmt: str | None) -> int:
    """Print the effective configuration (overrides applied, secrets redacted)."""
    return show_command(base.config_path(), fmt=fmt or ("json" if base.as_json() else "toml"))
