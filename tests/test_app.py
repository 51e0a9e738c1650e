"""Decorator jobs (protojobs.App): schema from the signature, precedence, eager mode, and the
same outcomes in eager mode and on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import app_jobs
import msgspec
import pydantic
import pytest
from app_jobs import Address, chain, chain_then_fail, doomed, flaky, ok, pause, refused, send, twice
from confluent_kafka import KafkaException
from conftest import ROOT, settings_tree

from protojobs.api.app import App, load_app
from protojobs.config import PayloadError
from protojobs.engine.dispatch import DispatchError
from protojobs.ops import dlq
from protojobs.testing.eager import eagerly

QUEUES: dict[str, dict[str, Any]] = {"work": {"retry": "quick"}}  # no handler key: the jobs are decorated
QUICK = {"backoff": "fixed", "base": "200ms", "jitter": 0}  # max_attempts: the schema's default (5)


def tree(prefix: str = "t-eager-", bootstrap: str = "127.0.0.1:1", **retry: Any) -> dict[str, Any]:
    out = settings_tree(bootstrap, prefix, QUEUES)
    out["retry"] = {"quick": {**QUICK, **retry}}
    out["delays"] = {"tiers": ["200ms", "1s"]}
    return out


def test_the_payload_schema_comes_from_the_signature() -> None:
    app_jobs.configure(tree(), eager=True)
    schema = send.schema
    assert schema["required"] == ["to", "address", "options"]
    assert schema["properties"]["address"]["properties"]["zip"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert schema["properties"]["options"]["required"] == ["urgent"]
    assert "ctx" not in ok.schema["properties"]
    mail = app_jobs.app.settings.queues["mail"]
    assert mail.schema is not None and mail.schema["properties"]["to"] == {"type": "string"}
    job_id = send.dispatch(to="ada@example.com", address=Address("1 Main St"), options={"urgent": True},
                           tags=["a", "b"])
    result = app_jobs.app.eager_results[-1]
    assert (result.id, result.status) == (job_id, "done")
    assert result.value == "ada@example.com at 1 Main St (a,b, urgent=True)"
    with pytest.raises(PayloadError, match="address"):
        send.dispatch(to="x", address={"street": 5}, options={"urgent": True})
    with pytest.raises(TypeError, match="unexpected"):
        ok.dispatch(n=1, m=2)
    with pytest.raises(TypeError, match="missing argument.s. address, options"):
        send.dispatch(to="x")
    assert send("x", Address("s"), {"urgent": False}) == "x at s (, urgent=False)"  # a plain call runs here


def test_a_schema_in_jobs_toml_wins(tmp_path: Path) -> None:
    (tmp_path / "mail.json").write_text('{"type": "object", "required": ["subject"]}')
    config = tree()
    config["queues"] = {"mail": {"schema": "mail.json"}}
    app = App(config, eager=True)
    app.job(queue="mail")(send.func)
    os.chdir(tmp_path)  # a dict config's relative paths resolve from the working directory
    try:
        assert app.settings.queues["mail"].schema == {"type": "object", "required": ("subject",)}
    finally:
        os.chdir(ROOT)


def test_eager_mode_runs_the_engine_decisions_inline() -> None:
    app = app_jobs.configure(tree(), eager=True)
    ids = [ok.dispatch(n=1), flaky.dispatch(n=2), doomed.dispatch(n=3), refused.dispatch(n=4), twice.dispatch(n=5)]
    by_id = {r.id: r for r in app.eager_results}
    outcome = [(by_id[i].status, by_id[i].attempts) for i in ids]
    assert outcome == [("done", 1), ("done", 2), ("dead", 5), ("dead", 1), ("dead", 2)]  # twice: max_attempts=2
    assert by_id[ids[0]].value == 2
    assert by_id[ids[1]].retried_after_ms and max(by_id[ids[1]].retried_after_ms) <= 200
    dead = by_id[ids[2]].dead_letter
    assert dead is not None and (dead["error"]["type"], dead["attempts"]) == ("RuntimeError", 5)
    assert by_id[ids[2]].topic == app.settings.queues["work"].dead_letter_topic


def test_jobs_toml_wins_over_the_decorator() -> None:
    app = app_jobs.configure(tree(max_attempts=3), eager=True)
    twice.dispatch(n=1)
    assert [(r.status, r.attempts) for r in app.eager_results] == [("dead", 3)]


def test_delays_in_eager_mode_run_at_once_and_are_recorded() -> None:
    app = app_jobs.configure(tree(), eager=True)
    ok.dispatch_later("1h30m", n=1)
    ok.dispatch_later(timedelta(seconds=5), n=2)
    ok.dispatch_later(datetime.now(UTC) + timedelta(minutes=5), n=3)
    delays = [r.delayed_ms for r in app.eager_results]
    assert delays[0] > 5_399_000 and 4_000 < delays[1] <= 5_000 and 299_000 < delays[2] <= 300_001
    with pytest.raises(ValueError, match="naive"):
        ok.dispatch_later(datetime(2030, 1, 1), n=4)  # noqa: DTZ001 - the point of the test
    assert asyncio.run(ok.dispatch_async(n=5)) == app.eager_results[-1].id
    assert ok.dispatch(n=6, wait=False).result() == app.eager_results[-1].id


def test_a_job_parameter_named_wait_is_an_argument_and_underscore_wait_the_option() -> None:
    app = app_jobs.configure(tree(), eager=True)
    job_id = pause.dispatch(n=2, wait=1.5)
    assert isinstance(job_id, str) and app.eager_results[-1].value == 3.0
    future = pause.dispatch(n=2, wait=2.0, _wait=False)
    assert future.result() == app.eager_results[-1].id and app.eager_results[-1].value == 4.0
    assert isinstance(ok.dispatch(n=1, _wait=False).result(), str)


def test_a_queue_jobs_toml_names_the_handler_of_is_dispatched_by_name_in_eager_mode() -> None:
    queues = {**QUEUES, "plain": {"handler": "app_jobs:double"}}
    app = app_jobs.configure({**tree(), "queues": queues}, eager=True)
    job_id = app.dispatch("plain", {"n": 21})
    assert [(r.id, r.queue, r.status, r.value) for r in app.eager_results] == [(job_id, "plain", "done", 42)]
    with pytest.raises(DispatchError, match="unknown queue 'nope'"):
        app.dispatch("nope", {"n": 1})


def test_eagerly_switches_an_app_for_a_block() -> None:
    app = app_jobs.configure(tree(), eager=False)
    with eagerly(app) as results:
        ok.dispatch(n=7)
    assert [(r.status, r.value) for r in results] == [("done", 14)] and app.eager is False


def _outcomes_eager() -> dict[tuple[str, int], tuple[str, int]]:
    app = app_jobs.configure(tree(), eager=True)
    _dispatch_all()
    return {(r.job, r.data["n"]): (r.status, r.attempts) for r in app.eager_results}


def _dispatch_all() -> None:
    ok.dispatch(n=1)
    ok.dispatch(n=2, wait=False).result(timeout=60)
    asyncio.run(flaky.dispatch_async(n=3))
    doomed.dispatch(n=4)
    refused.dispatch(n=5)
    twice.dispatch(n=6)
    pause.dispatch(n=7, wait=0.5)  # its own `wait` argument, not the option
    app_jobs.app.dispatch("work", {"n": 8}, job="ok")  # by queue and job name


@pytest.mark.broker
def test_eager_and_the_real_broker_agree(protojobs_kafka, protojobs_fresh_prefix, protojobs_worker) -> None:
    expected = _outcomes_eager()
    assert sorted(set(expected.values())) == [("dead", 1), ("dead", 2), ("dead", 5), ("done", 1), ("done", 2)]
    app = app_jobs.configure(tree(protojobs_fresh_prefix, protojobs_kafka.bootstrap))
    _dispatch_all()
    counters = protojobs_worker(app, ["work"]).drain(timeout=120)
    attempts: dict[tuple[str, int], int] = {}
    for job, n, attempt in app_jobs.RUNS:
        attempts[(job, n)] = max(attempts.get((job, n), 0), attempt)
    dead = {(e.envelope.job, e.envelope.data["n"]): e.dead.attempts
            for e in dlq.failed_jobs(app.settings, 100) if e.envelope is not None and e.dead is not None}
    real = {key: ("dead" if key in dead else "done", n) for key, n in attempts.items()}
    assert real == expected
    assert all(dead[key] == expected[key][1] for key in dead)
    assert (counters.done, counters.dead, counters.retried) == (5, 3, 1 + 4 + 1)


@pytest.mark.broker
def test_decorated_jobs_join_an_exactly_once_transaction(protojobs_kafka, protojobs_fresh_prefix,
                                                         protojobs_worker) -> None:
    config = tree(protojobs_fresh_prefix, protojobs_kafka.bootstrap)
    config["queues"] = {**QUEUES, "eo": {"delivery": "exactly_once", "retry": "quick"}}
    app = app_jobs.configure(config)
    chain.dispatch(n=1)
    chain_then_fail.dispatch(n=2)
    counters = protojobs_worker(app).drain(timeout=120)
    assert [n for job, n, _ in app_jobs.RUNS if job == "ok"] == [1]  # n=2 was never published
    assert (counters.done, counters.dead) == (2, 1)


@pytest.mark.broker
def test_run_app_finds_decorated_jobs(protojobs_kafka, protojobs_fresh_prefix, tmp_path: Path) -> None:
    (tmp_path / "jobs.toml").write_text(textwrap.dedent(f"""
        [kafka]
        brokers = "{protojobs_kafka.bootstrap}"
        topic_prefix = "{protojobs_fresh_prefix}"
        group_id = "{protojobs_fresh_prefix}group"
        [queues.greetings]
        concurrency = 2
    """))
    (tmp_path / "greet.py").write_text(textwrap.dedent("""
        from pathlib import Path
        from protojobs import App

        app = App("jobs.toml")

        @app.job(queue="greetings")
        def hello(name: str) -> None:
            with open(Path(__file__).with_name("out.txt"), "a") as out:
                out.write(f"hello {name}\\n")
    """))
    os.chdir(tmp_path)
    try:
        app = load_app("greet:app")
        app.jobs["hello"].dispatch(name="ada")
        app.jobs["hello"].dispatch(name="grace")
        app.close()
    finally:
        os.chdir(ROOT)
        sys.modules.pop("greet", None)
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "protojobs.cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)

    done = cli("run", "--app", "greet:app", "--max-jobs", "2", "--no-scheduler")
    assert done.returncode == 0, done.stderr
    assert sorted((tmp_path / "out.txt").read_text().splitlines()) == ["hello ada", "hello grace"]
    # every command takes --app: the decorated job's queue has no handler key in jobs.toml
    assert cli("dispatch", "--app", "greet:app", "greetings", '{"name": "alan"}').returncode == 0
    stats = cli("stats", "--app", "greet:app", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["queues"]["greetings"]["depth"] == 1
    last = cli("run", "--app", "greet:app", "--max-jobs", "1", "--no-scheduler")
    assert last.returncode == 0 and "hello alan" in (tmp_path / "out.txt").read_text(), last.stderr
    wrong = cli("stats", "--app", "greet:nothing")
    assert wrong.returncode == 1 and "--app greet:nothing" in wrong.stderr


def test_load_app_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="module:attribute"):
        load_app("app_jobs")
    with pytest.raises(TypeError, match="not a protojobs.App"):
        load_app("app_jobs:RUNS")


def test_old_fixture_names_warn(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(
        "def test_old(fresh_prefix):\n    assert fresh_prefix.startswith('t-')\n"
        "def test_new(protojobs_fresh_prefix):\n    assert protojobs_fresh_prefix.startswith('t-')\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
                           "error::DeprecationWarning", "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "1 failed, 1 passed" in done.stdout or "1 passed, 1 error" in done.stdout, done.stdout
    assert "use 'protojobs_fresh_prefix'" in done.stdout


class Item(pydantic.BaseModel):
    sku: str
    qty: int = 1


class Point(msgspec.Struct):
    x: float
    y: float


def test_models_of_pydantic_and_msgspec_are_payloads() -> None:
    app = App({"queues": {}}, eager=True)

    @app.job(queue="orders")
    def place(items: list[Item], at: Point) -> str:
        assert all(isinstance(i, Item) for i in items) and isinstance(at, Point)
        return f"{sum(i.qty for i in items)} at {at.x},{at.y}"

    props = place.schema["properties"]
    assert props["items"]["items"]["required"] == ["sku"] and props["at"]["required"] == ["x", "y"]
    place.dispatch(items=[Item(sku="a", qty=2), Item(sku="b")], at=Point(1.5, 2))
    assert [(r.status, r.value) for r in app.eager_results] == [("done", "3 at 1.5,2.0")]
    with pytest.raises(PayloadError, match="qty"):
        place.dispatch(items=[{"sku": "a", "qty": "many"}], at={"x": 0, "y": 0})


def test_times_and_ids_travel_as_text() -> None:
    app = App({"queues": {}}, eager=True)
    when = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)

    @app.job(queue="times")
    def remind(at: datetime, ref: uuid.UUID) -> str:
        assert isinstance(at, datetime) and isinstance(ref, uuid.UUID)
        return f"{at.isoformat()} {ref.hex[:4]}"

    assert remind.schema["properties"]["at"] == {"type": "string", "format": "date-time"}
    remind.dispatch(at=when, ref=uuid.UUID(int=0xABCD << 112))
    assert app.eager_results[-1].value == "2026-12-01T09:30:00+00:00 abcd"
    assert app.eager_results[-1].data["at"] == "2026-12-01T09:30:00+00:00"


def test_a_bare_decorator_uses_the_default_queue_and_the_function_name() -> None:
    app = App({"queues": {}}, eager=True)

    @app.job
    def add(a: int, b: int = 1) -> int:
        return a + b

    assert (add.name, add.queue, add(2)) == ("add", "default", 3)
    add.dispatch(a=2)
    assert [(r.queue, r.job, r.value) for r in app.eager_results] == [("default", "add", 3)]
    with pytest.raises(KafkaException, match="message.max.bytes"):  # as the producer refuses it
        add.dispatch(a=1, _key="k" * 1_100_000)
    assert app.handlers()["default"]["add"].instance is add
    with pytest.raises(ValueError, match="two jobs named 'add'"):
        app.job(name="add")(lambda a: a)
