"""Who may use the dashboard, and the CSRF tokens of its forms.

- No token configured: every request is the local operator ("local"); `serve` only allows that
  on a loopback address.
- Tokens (`name` -> secret): a request is let in with `Authorization: Bearer <secret>`, an
  `X-Protojobs-Token: <secret>` header, or the session cookie the login form sets (an HMAC of
  the name, never the secret). The name is who the action log names.
- Every POST carries `csrf`, an HMAC of who is asking under a key made at start-up: a page of
  another site cannot forge one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.requests import Request

COOKIE = "protojobs_dashboard"
LOCAL = "local"


class BindRefused(ValueError):
    """A non-loopback bind without a token."""


def parse_tokens(values: list[str] | tuple[str, ...] | str | None) -> dict[str, str]:
    """`NAME:SECRET` or a bare `SECRET` (named "token") -> {name: secret}."""
    if values is None:
        return {}
    out: dict[str, str] = {}
    for value in [values] if isinstance(values, str) else values:
        name, sep, secret = value.partition(":")
        name, secret = (name, secret) if sep and name and secret else ("token", value)
        if not secret:
            raise ValueError("an empty dashboard token")
        out[name] = secret
    return out


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


def check_bind(host: str, tokens: Mapping[str, str]) -> None:
    """BindRefused when `host` is reachable from other machines and no token protects it."""
    if not tokens and not is_loopback(host):
        raise BindRefused(f"refusing to serve the dashboard on {host!r} without a token: anyone who can reach "
                          "it could replay and purge jobs. Give --token NAME:SECRET (or $PROTOJOBS_DASHBOARD_TOKEN), "
                          "or bind 127.0.0.1")


@dataclass
class Access:
    tokens: dict[str, str]
    read_only: bool = False
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def _sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def by_secret(self, secret: str | None) -> str | None:
        if not secret:
            return None
        for name, value in self.tokens.items():
            if hmac.compare_digest(value.encode(), secret.encode()):
                return name
        return None

    def cookie_for(self, name: str) -> str:
        return f"{name}.{self._sign('session:' + name)}"

    def who(self, request: Request) -> str | None:
        """The name of whoever sent `request`, or None when it is not let in."""
        if not self.tokens:
            return LOCAL
        auth = request.headers.get("authorization", "")
        secret = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-protojobs-token")
        name = self.by_secret(secret)
        if name is not None:
            return name
        cookie = request.cookies.get(COOKIE, "")
        name, _, sig = cookie.rpartition(".")
        if name in self.tokens and hmac.compare_digest(sig, self._sign("session:" + name)):
            return name
        return None

    def csrf(self, who: str) -> str:
        return self._sign("csrf:" + who)

    def csrf_ok(self, who: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf(who))
