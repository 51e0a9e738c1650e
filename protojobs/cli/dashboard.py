"""`protojobs dashboard`: serve the web dashboard (the `dashboard` extra; all its logic is in
`protojobs.dashboard`)."""

from __future__ import annotations

import sys

import click

from protojobs.cli import base
from protojobs.cli.common import load


def dashboard_command(path: str | None, host: str, port: int, read_only: bool, tokens: list[str] | None,
                      sample_every: float) -> int:
    try:
        from protojobs import dashboard
    except ImportError as exc:
        print(f"dashboard: {exc}; install the extra: pip install 'protojobs[dashboard]'", file=sys.stderr)
        return 1
    from protojobs.observe import logs
    logs.configure("text")  # the action log: who did what
    settings = load(path, import_handlers=False)
    if settings is None:
        return 1
    try:
        dashboard.serve(settings, host=host, port=port, read_only=read_only, token=tokens,
                        sample_every=sample_every)
    except (dashboard.BindRefused, ValueError) as exc:
        print(f"dashboard: {exc}", file=sys.stderr)
        return 1
    return 0


@base.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (any other needs --token)")
@click.option("--port", type=int, default=8088, show_default=True, help="port")
@click.option("--read-only", is_flag=True, help="hide every action and refuse action requests")
@click.option("--token", "tokens", multiple=True, metavar="[NAME:]SECRET",
              help="let in requests carrying this token (repeatable; default $PROTOJOBS_DASHBOARD_TOKEN)")
@click.option("--sample-every", type=base.SECONDS, default=5.0, show_default=True,
              help="how often the overview's 15-minute charts sample the cluster, in seconds")
def dashboard(host: str, port: int, read_only: bool, tokens: tuple[str, ...], sample_every: float) -> int:
    """Serve the web dashboard: queues, workers, delays, dead letters and schedules."""
    return dashboard_command(base.config_path(), host, port, read_only, list(tokens) or None, sample_every)
