"""SASL/SCRAM against a real broker: credentials in jobs.toml (or only in environment overrides)
reach librdkafka, a wrong password fails fast with a clear error, and no output, log line or
error message ever shows a secret.

The broker (`sasl_kafka`) has a SASL_PLAINTEXT listener with SCRAM-SHA-256 (user alice, created
at format time); every client here bootstraps on that listener only, which advertises itself,
so each connection authenticates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import engine_jobs
import pytest
from confluent_kafka import KafkaException
from conftest import ROOT, Running, settings_tree, wait_for, write_config

from protojobs import config
from protojobs.cli import main
from protojobs.config import ConfigError
from protojobs.engine.dispatch import Dispatcher
from protojobs.engine.worker import Worker, WorkerOptions
from protojobs.kafka import admin
from protojobs.kafka.clients import ClientError
from protojobs.model import names as topics
from protojobs.testing import Cluster
from protojobs.testing.plugin import _port_base, _state_root

pytestmark = pytest.mark.broker

USER = "alice"
PASSWORD = "alice-secret-pw"
WRONG = "not-alice-pw-7319"
SECRETS = (PASSWORD, WRONG)
FAST = 10.0  # seconds: a refused client must fail well before librdkafka's retry loop gives up
QUEUES = {"emails": {"handler": "engine_jobs:record"}}
ENV_NAMES = {"security.protocol": "SECURITY_PROTOCOL", "sasl.mechanisms": "SASL_MECHANISMS",
             "sasl.username": "SASL_USERNAME", "sasl.password": "SASL_PASSWORD"}


@pytest.fixture(scope="module")
def sasl_kafka(pytestconfig: pytest.Config) -> Iterator[Cluster]:
    cluster = Cluster(state_dir=_state_root(pytestconfig) / "sasl", nodes=1, base_port=_port_base() + 700,
                      sasl_users={USER: PASSWORD})
    cluster.start()
    yield cluster
    cluster.stop()


def sasl_props(password: str) -> dict[str, str]:
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "SCRAM-SHA-256",
            "sasl.username": USER, "sasl.password": password}


def sasl_env(password: str, sides: tuple[str, ...] = ("producer", "consumer")) -> dict[str, str]:
    """The same credentials as PROTOJOBS_KAFKA__<SIDE>__<KEY> overrides."""
    return {f"PROTOJOBS_KAFKA__{side.upper()}__{ENV_NAMES[k]}": v
            for side in sides for k, v in sasl_props(password).items()}


def sasl_tree(cluster: Cluster, prefix: str, producer: str | None = PASSWORD,
              consumer: str | None = PASSWORD, **kafka: Any) -> dict[str, Any]:
    """settings_tree on the SASL listener; `producer` / `consumer`: that side's password (None: no
    credentials in the tree at all)."""
    tree = settings_tree(cluster.sasl_bootstrap, prefix, QUEUES)
    for side, password in (("producer", producer), ("consumer", consumer)):
        if password is not None:
            tree["kafka"][side].update(sasl_props(password))
    tree["kafka"].update(kafka)
    return tree


def runs_of(job_id: str) -> list[dict[str, Any]]:
    return [r for r in engine_jobs.RUNS if r["id"] == job_id]


def dispatch_and_consume(settings: config.Settings) -> None:
    """Dispatch one job (creating the topics through the same listener), run a Worker until it
    processed that job, stop it cleanly."""
    dispatcher = Dispatcher(settings)
    try:
        job_id = dispatcher.dispatch("emails", {"n": 1})
    finally:
        assert dispatcher.close() == 0
    names = set(admin.list_topics(admin.client(settings)).topics)
    assert {s.name for s in admin.topic_specs(settings)} <= names
    assert topics.queue_topic(settings.kafka.topic_prefix, "emails") in names
    running = Running(Worker(settings, WorkerOptions()))
    try:
        wait_for(lambda: bool(runs_of(job_id)) or not running.thread.is_alive(), 60, "the job to run")
    finally:
        running.stop()
    assert [r["attempt"] for r in runs_of(job_id)] == [1]


def timed_raise(fn: Any, *args: Any) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(ClientError) as info:
        fn(*args)
    return info.value, time.monotonic() - started


def assert_auth_error(err: BaseException, elapsed: float) -> None:
    assert elapsed < FAST, f"took {elapsed:.1f}s"
    assert "authentication" in str(err).lower(), str(err)
    assert "[kafka.producer] / [kafka.consumer]" in str(err)
    assert not any(s in str(err) for s in SECRETS)


# ---------------------------------------------------------------- credentials reach librdkafka


def test_credentials_in_producer_and_consumer_tables_reach_librdkafka(
        sasl_kafka: Cluster, fresh_prefix: str) -> None:
    settings = config.from_dict(sasl_tree(sasl_kafka, fresh_prefix), ROOT, env={})
    assert settings.kafka.brokers == sasl_kafka.sasl_bootstrap
    dispatch_and_consume(settings)


def test_credentials_only_from_environment_overrides_reach_librdkafka(
        sasl_kafka: Cluster, fresh_prefix: str, tmp_path: Path) -> None:
    path = write_config(tmp_path / "jobs.toml", sasl_tree(sasl_kafka, fresh_prefix, producer=None, consumer=None))
    assert "sasl" not in path.read_text()
    env = sasl_env(PASSWORD)
    loaded = config.load(path, env=env)
    assert {k: loaded.kafka.producer[k] for k in ENV_NAMES} == sasl_props(PASSWORD)
    assert {k: loaded.kafka.consumer[k] for k in ENV_NAMES} == sasl_props(PASSWORD)
    from_dict = config.from_dict(tomllib.loads(path.read_text()), ROOT, env=env)
    assert (from_dict.kafka.producer, from_dict.kafka.consumer) == (loaded.kafka.producer, loaded.kafka.consumer)
    dispatch_and_consume(loaded)


def test_without_credentials_the_sasl_listener_is_not_usable(sasl_kafka: Cluster, fresh_prefix: str) -> None:
    """The control for the two tests above: what they prove is not that the listener is open."""
    settings = config.from_dict(sasl_tree(sasl_kafka, fresh_prefix, producer=None, consumer=None), ROOT, env={})
    with pytest.raises(KafkaException):  # plaintext against SASL: no metadata
        admin.list_topics(admin.client(settings), timeout=3)


# ---------------------------------------------------------------- a wrong password fails fast


def test_wrong_password_fails_dispatch_fast_while_creating_topics(sasl_kafka: Cluster, fresh_prefix: str) -> None:
    settings = config.from_dict(sasl_tree(sasl_kafka, fresh_prefix, producer=WRONG, consumer=WRONG), ROOT, env={})
    dispatcher = Dispatcher(settings)
    err, elapsed = timed_raise(dispatcher.dispatch, "emails", {"n": 1})
    assert_auth_error(err, elapsed)
    started = time.monotonic()
    assert dispatcher.close() == 0  # nothing was produced
    assert time.monotonic() - started < 2


def test_wrong_password_fails_dispatch_fast_when_topics_exist(sasl_kafka: Cluster, fresh_prefix: str) -> None:
    """Topics already ensured by this process: the producer's own error_cb stops the wait, and
    close() drops the undeliverable record instead of flushing until message.timeout.ms."""
    admin.ensure_topics(config.from_dict(sasl_tree(sasl_kafka, fresh_prefix), ROOT, env={}))
    settings = config.from_dict(sasl_tree(sasl_kafka, fresh_prefix, producer=WRONG), ROOT, env={})
    dispatcher = Dispatcher(settings)
    err, elapsed = timed_raise(dispatcher.dispatch, "emails", {"n": 1})
    assert_auth_error(err, elapsed)
    started = time.monotonic()
    assert dispatcher.close() == 1
    assert time.monotonic() - started < 3


def test_wrong_password_fails_dispatch_async_fast(sasl_kafka: Cluster, fresh_prefix: str) -> None:
    """An awaited dispatch is failed by the Dispatcher's delivery-report thread as soon as the
    producer is refused, as the synchronous one is."""
    admin.ensure_topics(config.from_dict(sasl_tree(sasl_kafka, fresh_prefix), ROOT, env={}))
    settings = config.from_dict(sasl_tree(sasl_kafka, fresh_prefix, producer=WRONG), ROOT, env={})
    dispatcher = Dispatcher(settings)
    err, elapsed = timed_raise(asyncio.run, dispatcher.dispatch_async("emails", {"n": 1}))
    assert_auth_error(err, elapsed)
    assert dispatcher.close() == 1


@pytest.mark.parametrize("wrong", ["consumer", "producer", "consumer-with-topics"])
def test_wrong_password_fails_the_worker_fast(sasl_kafka: Cluster, fresh_prefix: str, wrong: str) -> None:
    """consumer: run() fails creating the topics (the admin client uses [kafka.consumer]);
    producer / consumer-with-topics: the run loop's ErrorWatch check stops it."""
    if wrong == "consumer-with-topics":
        admin.ensure_topics(config.from_dict(sasl_tree(sasl_kafka, fresh_prefix), ROOT, env={}))
    bad = {"producer": WRONG} if wrong == "producer" else {"consumer": WRONG}
    settings = config.from_dict(sasl_tree(sasl_kafka, fresh_prefix, **bad), ROOT, env={})
    worker = Worker(settings, WorkerOptions())
    err, elapsed = timed_raise(worker.run)
    assert_auth_error(err, elapsed)


def test_cli_dispatch_with_wrong_password_exits_1_with_the_reason(
        sasl_kafka: Cluster, fresh_prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "jobs.toml", sasl_tree(sasl_kafka, fresh_prefix, producer=WRONG, consumer=WRONG))
    started = time.monotonic()
    assert main.main(["dispatch", "--config", str(path), "emails", '{"n": 1}']) == 1
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("dispatch: Kafka refused the client: "), err
    assert err.count("\n") == 1  # one line, no traceback
    assert_auth_error(RuntimeError(err), elapsed)


# ---------------------------------------------------------------- secrets are never printed


def test_no_output_log_line_or_error_message_shows_a_secret(
        sasl_kafka: Cluster, fresh_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in [n for n in os.environ if n.startswith("PROTOJOBS_")]:
        monkeypatch.delenv(name)
    seen: list[str] = []

    def run(*argv: str) -> tuple[int, str, str]:
        code = main.main(list(argv))
        out, err = capsys.readouterr()
        seen.extend((out, err))
        return code, out, err

    # librdkafka's own debug output (through Python logging) is part of what is checked
    good = write_config(tmp_path / "jobs.toml", sasl_tree(sasl_kafka, fresh_prefix, debug="security,broker,conf"))
    code, out, _ = run("config", "show", "--config", str(good))
    assert code == 0
    shown = tomllib.loads(out)["kafka"]
    assert shown["producer"]["sasl.password"] == shown["consumer"]["sasl.password"] == "***"
    assert shown["producer"]["sasl.username"] == USER
    code, out, _ = run("config", "show", "--format", "json", "--config", str(good))
    assert (code, json.loads(out)["kafka"]["consumer"]["sasl.password"]) == (0, "***")
    assert run("validate", "--config", str(good))[0] == 0
    code, out, err = run("validate", "--cluster", "--config", str(good))
    assert (code, err) == (0, ""), err
    assert run("dispatch", "--config", str(good), "emails", '{"n": 1}')[0] == 0

    # the wrong password as environment overrides: shown redacted, then refused by Kafka
    for name, value in sasl_env(WRONG).items():
        monkeypatch.setenv(name, value)
    code, out, _ = run("config", "show", "--config", str(good))
    assert (code, tomllib.loads(out)["kafka"]["producer"]["sasl.password"]) == (0, "***")
    assert run("validate", "--config", str(good))[0] == 0
    code, _, err = run("dispatch", "--config", str(good), "emails", '{"n": 2}')
    assert code == 1 and "authentication" in err.lower(), err
    with pytest.raises(ClientError) as failed:
        Worker(config.load(good), WorkerOptions()).run()
    seen.append(str(failed.value))
    for name in sasl_env(WRONG):
        monkeypatch.delenv(name)

    # invalid configurations that contain the password (a value is secret when it stands under a
    # secret key anywhere in the config; then it is scrubbed from every message, whatever the key)
    broken = sasl_tree(sasl_kafka, fresh_prefix)
    broken["kafka"]["sasl_password"] = PASSWORD  # [kafka] instead of [kafka.producer]: an unknown key
    broken["queues"] = {"emails": {"handler": f"{PASSWORD}:run", "concurrency": PASSWORD},
                        "images": {"handler": "engine_jobs:record", "key": PASSWORD, "partitions": PASSWORD}}
    bad = write_config(tmp_path / "broken.toml", broken)
    for argv in (["validate"], ["config", "show"], ["dispatch", "emails", "{}"]):
        code, out, err = run(*argv, "--config", str(bad))
        assert (code, out) == (1, ""), (argv, out)
        assert "queues.emails.concurrency" in err and "queues.images.partitions" in err and "***" in err, err
    overrides = {"PROTOJOBS_KAFKA__CONSUMER__SASL_PASSWORD": f'["{PASSWORD}"]',
                 "PROTOJOBS_QUEUES__EMAILS__PARTITIONS": WRONG, "PROTOJOBS_KAFKA__PRODUCER__SASL_PASSWORD": WRONG}
    with pytest.raises(ConfigError) as from_env:
        config.load(good, env=overrides)
    with pytest.raises(ConfigError) as from_tree:
        config.from_dict(broken, ROOT, env=overrides)
    for exc in (from_env.value, from_tree.value):
        message = str(exc)
        assert "kafka.consumer.\"sasl.password\"" in message and "PROTOJOBS_QUEUES__EMAILS__PARTITIONS" in message
        seen.append(message)
        seen.extend(issue.message for issue in exc.issues)
    seen.append(repr(from_env.value.issues))

    logged = [f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
    assert any(line.startswith("protojobs.kafka") and "SASL" in line for line in logged)  # librdkafka was heard
    for text in seen + logged:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} printed in: {text[:500]}"
