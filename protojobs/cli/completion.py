"""`protojobs completion bash|zsh|fish`: print the shell's completion script (click's)."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from protojobs.cli import base

SHELLS = ("bash", "zsh", "fish")


def script(shell: str) -> str:
    """The completion script of `shell` for the `protojobs` command."""
    from protojobs.cli.main import cli

    found = get_completion_class(shell)
    if found is None:
        raise ValueError(f"no completion for shell {shell!r}; choose one of {', '.join(SHELLS)}")
    return found(cli, {}, "protojobs", "_PROTOJOBS_COMPLETE").source()


@base.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> int:
    """Print the completion script of SHELL. Install it with, e.g.,
    `eval "$(protojobs completion bash)"` in ~/.bashrc, `eval "$(protojobs completion zsh)"` in
    ~/.zshrc, or `protojobs completion fish > ~/.config/fish/completions/protojobs.fish`."""
    print(script(shell), end="")
    return 0
