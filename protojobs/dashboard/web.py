"""The dashboard's pages and actions (Starlette). Every number comes from `ops`; this module
only renders. Endpoints are plain functions: Starlette runs them on its thread pool, so a
Kafka round trip never blocks the event loop.

Live refresh: each page's `<div id="live">` is fetched again every few seconds by
`static/live.js` (a request with `X-Live: 1` gets the fragment only).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from protojobs.config import Settings
from protojobs.config.secrets import scrub, secret_values
from protojobs.dashboard import charts
from protojobs.dashboard.auth import COOKIE, Access
from protojobs.dashboard.history import History
from protojobs.ops import browse, dlq

log = logging.getLogger("protojobs.dashboard")


class Dashboard:
    """The state behind one dashboard app: settings, clients, access rules, the history."""

    def __init__(self, settings: Settings, access: Access, sample_every: float = 5.0) -> None:
        self.settings, self.access = settings, access
        self.browser = browse.Browser(settings)
        self.history = History(lambda: browse.overview(self.browser), sample_every)
        self.secrets = secret_values(getattr(settings, "raw", {}))
        self.env = Environment(loader=PackageLoader("protojobs.dashboard", "templates"),
                               autoescape=select_autoescape(["html"]))
        self.env.globals.update(spark=charts.spark, iso=dlq.iso, since=_since, pretty=_pretty, mib=_mib)

    def clean(self, text: Any) -> str:
        """Text with every secret of the configuration removed."""
        return scrub(str(text), self.secrets)

    def render(self, request: Request, template: str, who: str, **ctx: Any) -> Response:
        self.history.start()
        ctx.update(request=request, who=who, read_only=self.access.read_only, csrf=self.access.csrf(who),
                   prefix=request.scope.get("root_path", ""), settings=self.settings, clean=self.clean,
                   auth=bool(self.access.tokens), live_only=request.headers.get("x-live") == "1")
        return HTMLResponse(self.env.get_template(template).render(**ctx))

    def action(self, who: str, what: str, **fields: Any) -> None:
        log.info("dashboard action by %s: %s %s", who, what, json.dumps(fields, default=str, sort_keys=True))


def _since(ms: int | None) -> str:
    if ms is None:
        return "-"
    delta = (ms - time.time() * 1000) / 1000
    word = "in " if delta > 0 else ""
    delta = abs(delta)
    text = (f"{delta:.0f}s" if delta < 120 else f"{delta / 60:.0f}m" if delta < 7200 else f"{delta / 3600:.1f}h")
    return word + text + ("" if word else " ago")


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def _pretty(obj: Any) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(obj)


Handler = Callable[[Request, str], Response]


def app(settings: Settings, *, read_only: bool = False, tokens: dict[str, str] | None = None,
        sample_every: float = 5.0) -> Starlette:
    dash = Dashboard(settings, Access(dict(tokens or {}), read_only), sample_every)

    def page(handler: Handler, post: bool = False) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            who = dash.access.who(request)
            if who is None:
                return RedirectResponse(f"{request.scope.get('root_path', '')}/login", 303)
            if post and dash.access.read_only:
                return HTMLResponse("read-only dashboard: actions are off", 403)
            return handler(request, who)
        return endpoint

    def action(handler: Callable[[Request, str, dict[str, Any]], Response]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            who = dash.access.who(request)
            if who is None:
                return HTMLResponse("log in first", 401)
            if dash.access.read_only:
                return HTMLResponse("read-only dashboard: actions are off", 403)
            form = await request.form()
            fields: dict[str, Any] = {k: form.getlist(k) if k == "ref" else form.get(k) for k in form}
            if not dash.access.csrf_ok(who, fields.get("csrf")):
                return HTMLResponse("bad or missing CSRF token: reload the page", 403)
            from starlette.concurrency import run_in_threadpool
            return await run_in_threadpool(handler, request, who, fields)
        return endpoint

    from protojobs.dashboard import pages

    routes = [
        Route("/", page(lambda r, w: pages.overview(dash, r, w))),
        Route("/workers", page(lambda r, w: pages.workers(dash, r, w))),
        Route("/queues/{name}", page(lambda r, w: pages.queue(dash, r, w))),
        Route("/records", page(lambda r, w: pages.record(dash, r, w))),
        Route("/dead-letters", page(lambda r, w: pages.dead_letters(dash, r, w))),
        Route("/dead-letters/{topic}/{partition:int}/{offset:int}", page(lambda r, w: pages.dead_letter(dash, r, w))),
        Route("/schedules", page(lambda r, w: pages.schedules_page(dash, r, w))),
        Route("/queues/{name}/pause", action(lambda r, w, f: pages.pause_queue(dash, r, w, f)), methods=["POST"]),
        Route("/dead-letters/replay", action(lambda r, w, f: pages.replay(dash, r, w, f)), methods=["POST"]),
        Route("/dead-letters/purge", action(lambda r, w, f: pages.purge(dash, r, w, f)), methods=["POST"]),
        Route("/schedules/{name}/{verb}", action(lambda r, w, f: pages.schedule_action(dash, r, w, f)),
              methods=["POST"]),
        Route("/login", login(dash), methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("protojobs.dashboard", "static")]), name="static"),
    ]
    async def failed(request: Request, exc: Exception) -> Response:
        log.error("dashboard: %s %s failed: %s", request.method, request.url.path, dash.clean(repr(exc)))
        html = dash.env.get_template("error.html").render(prefix=request.scope.get("root_path", ""),
                                                          error=dash.clean(f"{type(exc).__name__}: {exc}"))
        return HTMLResponse(html, 500)

    web = Starlette(routes=routes, exception_handlers={Exception: failed})
    web.state.dashboard = dash
    return web


def login(dash: Dashboard) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        error = ""
        if request.method == "POST":
            form = await request.form()
            name = dash.access.by_secret(str(form.get("token") or ""))
            if name is not None:
                out = RedirectResponse(f"{root}/", 303)
                out.set_cookie(COOKIE, dash.access.cookie_for(name), httponly=True, samesite="strict")
                log.info("dashboard login: %s", name)
                return out
            error = "unknown token"
        html = dash.env.get_template("login.html").render(prefix=root, error=error)
        return HTMLResponse(html, 401 if error else 200)
    return endpoint


async def logout(request: Request) -> Response:
    out = RedirectResponse(f"{request.scope.get('root_path', '')}/login", 303)
    out.delete_cookie(COOKIE)
    return out


