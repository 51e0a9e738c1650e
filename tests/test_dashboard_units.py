"""The dashboard's pure parts, without a broker: binding rules, tokens, CSRF, charts, history."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from protojobs.dashboard import charts
from protojobs.dashboard.auth import COOKIE, LOCAL, Access, BindRefused, check_bind, parse_tokens
from protojobs.dashboard.history import History, growing


def request(headers: dict[str, str] | None = None, cookie: str | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if cookie is not None:
        raw.append((b"cookie", f"{COOKIE}={cookie}".encode()))
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""})


def test_a_public_bind_needs_a_token() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(host, {})
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        with pytest.raises(BindRefused, match="without a token"):
            check_bind(host, {})
        check_bind(host, {"ops": "secret"})


def test_tokens_are_named() -> None:
    assert parse_tokens(["ops:s3cret", "bare"]) == {"ops": "s3cret", "token": "bare"}
    assert parse_tokens("only") == {"token": "only"}
    assert parse_tokens(None) == {}
    with pytest.raises(ValueError):
        parse_tokens([""])


def test_who_is_asking() -> None:
    open_access = Access({})
    assert open_access.who(request()) == LOCAL
    access = Access({"ops": "s3cret", "ci": "other"})
    assert access.who(request()) is None
    assert access.who(request({"Authorization": "Bearer s3cret"})) == "ops"
    assert access.who(request({"X-Protojobs-Token": "other"})) == "ci"
    assert access.who(request({"Authorization": "Bearer wrong"})) is None
    assert access.who(request(cookie=access.cookie_for("ops"))) == "ops"
    assert access.who(request(cookie="ops.forged")) is None
    assert access.who(request(cookie=Access({"ops": "s3cret"}).cookie_for("ops"))) is None  # another key
    assert "s3cret" not in access.cookie_for("ops")


def test_csrf_tokens_are_per_person_and_per_process() -> None:
    access = Access({"ops": "a", "ci": "b"})
    assert access.csrf_ok("ops", access.csrf("ops"))
    assert not access.csrf_ok("ci", access.csrf("ops"))
    assert not access.csrf_ok("ops", None) and not access.csrf_ok("ops", "")
    assert not Access({"ops": "a"}).csrf_ok("ops", access.csrf("ops"))


def test_spark_scales_to_its_box() -> None:
    empty = charts.spark([])
    assert "<polyline" not in empty and empty.startswith("<svg")
    line = charts.spark([0, 5, 10], width=100, height=20)
    assert 'points="2.0,18.0 50.0,10.0 98.0,2.0"' in line


def snap(produced: int, committed: int, lag: int, dead: int) -> dict[str, Any]:
    return {"queues": {"q": {"produced": produced, "committed": committed, "lag": lag}},
            "dead_letter": {"dl": {"produced": dead}}}


def test_history_rates_and_growing_lag() -> None:
    h = History(lambda: {}, every=1.0)
    for i, t in enumerate([0.0, 1.0, 2.0, 4.0]):
        h.add(t, snap(10 * i * i, 5 * i, i, i))
    s = h.series()
    assert s["q"]["in"] == [10.0, 30.0, 25.0]
    assert s["q"]["out"] == [5.0, 5.0, 2.5]
    assert s["dl"]["fail"] == [1.0, 1.0, 0.5]
    assert growing([1, 2, 3, 4, 5, 6, 7]) and not growing([1, 2, 3, 3, 5, 6, 7]) and not growing([1, 2])
