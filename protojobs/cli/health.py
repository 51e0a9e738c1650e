"""`protojobs health`: ask a running `protojobs run --metrics-port` whether it is healthy."""

from __future__ import annotations

import sys

import click

from protojobs.cli import base
from protojobs.observe.health import probe


def health_command(url: str, ready: bool = False, timeout: float = 5.0, as_json: bool = False) -> int:
    """0 and the endpoint's answer when it says healthy (or ready), else 1 with the reason
    (`as_json`: `{"ok": ..., "url": ..., "check": "healthz" | "readyz", "detail": ...}` on stdout)."""
    answer = probe(url, ready=ready, timeout=timeout)
    if as_json:
        base.print_json({"ok": answer.ok, "url": url, "check": "readyz" if ready else "healthz",
                         "detail": answer.detail})
    elif answer.ok:
        print(answer.detail)
    else:
        print(f"unhealthy: {answer.detail}", file=sys.stderr)
    return 0 if answer.ok else 1


@base.command("health", json=True)
@click.option("--url", default="http://127.0.0.1:9191", show_default=True, help="the metrics endpoint")
@click.option("--ready", is_flag=True, help="check /readyz instead of /healthz")
@click.option("--timeout", type=base.SECONDS, default=5.0, show_default=True, help="seconds to wait for the answer")
def health(url: str, ready: bool, timeout: float) -> int:
    """Ask a running `run --metrics-port` whether it is healthy (exit 0) or not (1)."""
    return health_command(url, ready=ready, timeout=timeout, as_json=base.as_json())
