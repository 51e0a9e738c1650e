"""`protojobs dashboard`: a web UI for queues, dead letters and schedules (the `dashboard`
extra: Starlette, uvicorn, Jinja2). A presenter beside the CLI: it reads and acts through
`protojobs.ops`, and nothing below it imports it.

    from protojobs.dashboard import app
    asgi = app(settings, read_only=True)            # mount it in your own ASGI app
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from protojobs.dashboard.auth import BindRefused, check_bind, parse_tokens

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from protojobs.config import Settings

ENV_TOKEN = "PROTOJOBS_DASHBOARD_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088


def app(settings: Settings, *, read_only: bool = False, token: str | list[str] | dict[str, str] | None = None,
        sample_every: float = 5.0) -> Starlette:
    """The dashboard as an ASGI app. `token`: a secret, `NAME:SECRET` strings, or {name: secret};
    None lets every request in (keep it on loopback or behind your own authentication)."""
    from protojobs.dashboard import web

    tokens = dict(token) if isinstance(token, dict) else parse_tokens(token)
    return web.app(settings, read_only=read_only, tokens=tokens, sample_every=sample_every)


def serve(settings: Settings, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, read_only: bool = False,
          token: list[str] | None = None, sample_every: float = 5.0) -> None:
    """Serve the dashboard until interrupted; BindRefused (before anything listens) when `host`
    is not a loopback address and no token is given (nor $PROTOJOBS_DASHBOARD_TOKEN)."""
    import uvicorn

    tokens = parse_tokens(token or ([os.environ[ENV_TOKEN]] if os.environ.get(ENV_TOKEN) else None))
    check_bind(host, tokens)
    uvicorn.run(app(settings, read_only=read_only, token=tokens, sample_every=sample_every), host=host, port=port,
                log_level="warning")


__all__ = ["BindRefused", "app", "check_bind", "serve"]
