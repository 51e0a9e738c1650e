"""What every click command shares: the global options, the config path, TTY-aware output.

Global options (`--config`, `--app`, `--json`) are accepted on the root and on every command
and group, so `protojobs --config x stats` and `protojobs stats --config x` mean the same; the
one given nearest the verb wins. A command reads them with `config_path()`, `app_target()` and
`as_json()`; `--app module:app` (an App's settings: its config and its decorated jobs' queues)
is read by `cli.common.load`, the one place commands load their settings.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
CONFIG_ENV = "PROTOJOBS_CONFIG"


@dataclass
class Globals:
    """The global options as given so far (root first, then each nested level)."""

    config: str | None = None
    app: str | None = None
    json: bool = False


def _keep(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value not in (None, False):
            setattr(ctx.ensure_object(Globals), name, value)
    return callback


def global_options(func: F, json: bool = True) -> F:
    """Add `--config` (and `--json`) to a command or group (their values go to `Globals`).
    A command without JSON output takes no `--json` of its own and ignores the root's."""
    if json:
        func = click.option("--json", "as_json", is_flag=True, expose_value=False, callback=_keep("json"),
                            help="JSON output, for scripts")(func)
    func = click.option("--app", metavar="MODULE:APP", expose_value=False, callback=_keep("app"),
                        help="an App's settings and decorated jobs (its own config; --config is not read)")(func)
    return click.option("--config", metavar="PATH", expose_value=False, callback=_keep("config"),
                        help=f"jobs.toml (default: ./jobs.toml or ${CONFIG_ENV})")(func)


def _globals() -> Globals:
    return click.get_current_context().ensure_object(Globals)


def config_path() -> str:
    return _globals().config or os.environ.get(CONFIG_ENV, "jobs.toml")


def app_target() -> str | None:
    """`--app`, when a command runs under click and one was given."""
    ctx = click.get_current_context(silent=True)
    return ctx.ensure_object(Globals).app if ctx is not None else None


def as_json() -> bool:
    return _globals().json


def command(name: str | None = None, parent: click.Group | None = None, json: bool = False,
            **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """`click.command` with the global options (`json`: it has JSON output), added to `parent`
    when given."""
    def decorate(func: Callable[..., Any]) -> click.Command:
        made = click.command(name, **kwargs)(global_options(func, json))
        if parent is not None:
            parent.add_command(made)
        return made
    return decorate


def group(name: str | None = None, parent: click.Group | None = None,
          **kwargs: Any) -> Callable[[Callable[..., Any]], click.Group]:
    """`click.group` with the global options (added to `parent` when given)."""
    def decorate(func: Callable[..., Any]) -> click.Group:
        made = click.group(name, **kwargs)(global_options(func))
        if parent is not None:
            parent.add_command(made)
        return made
    return decorate


def tty() -> bool:
    """Stdout is a terminal: print tables for people rather than lines for scripts."""
    return sys.stdout.isatty()


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def print_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to their widest cell (the last one unpadded)."""
    lines = [tuple(head)] + [tuple("-" if c is None else str(c) for c in r) for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


class Count(click.ParamType):
    """A whole number >= 0."""

    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number", param, ctx)
        if number < 0:
            self.fail(f"{number} is negative", param, ctx)
        return number


class Seconds(click.ParamType):
    """A finite number of seconds >= 0."""

    name = "SECONDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not number >= 0 or number == float("inf"):
            self.fail(f"{value!r} is not a finite, non-negative number of seconds", param, ctx)
        return number


COUNT = Count()
SECONDS = Seconds()
