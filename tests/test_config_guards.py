"""Configs that `validate` accepted and the run could not honour are refused by both, naming the
key; secrets stay out of repr, `config show` and error messages; `validate --no-import`.
No broker: everything here fails before a client is made."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from protojobs import config
from protojobs.cli import config as cli_config
from protojobs.cli import main
from protojobs.cli import run as cli_run
from protojobs.config import ConfigError, load

Write = Callable[..., Path]
BASE = '[kafka]\nbrokers = "127.0.0.1:1"\n'  # nothing listens there: a test that reached Kafka would hang
QUEUE = '[queues.q]\nhandler = "json:dumps"\n'


def issues(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    return [str(issue) for issue in caught.value.issues]


# ---------------------------------------------------------------- what the run cannot honour

REFUSED = [
    ("batch_size = 1000001\n",
     "kafka.batch_size: 1000001 is more than 1000000, the most records librdkafka returns from one consume call"),
    (QUEUE + "partitions = 2147483648\n",
     "queues.q.partitions: 2147483648 is more than 10000, the most partitions Kafka creates in one request"),
    (QUEUE + "partitions = 10001\n",
     "queues.q.partitions: 10001 is more than 10000, the most partitions Kafka creates in one request"),
    ("[defaults]\nconcurrency = 1000000\n",
     "defaults.concurrency: 1000000 is more than 1000: each running job has its own thread in the worker process; "
     "run more processes (--processes) instead"),
    ("enable_auto_commit = true\n",
     "kafka.enable_auto_commit: true is not supported: protojobs commits an offset only once its job is finished "
     "(the commit rule), and auto commit would commit jobs that never ran; remove the key or set it to false"),
    ('[kafka.consumer]\n"enable.auto.commit" = true\n',
     'kafka.consumer."enable.auto.commit": must be false (or left out): protojobs commits an offset only once its '
     "job and every earlier job of its partition are finished (the commit rule); auto commit would commit jobs "
     "that never ran"),
    ('[kafka.consumer]\n"enable.auto.offset.store" = "true"\n',
     'kafka.consumer."enable.auto.offset.store": must be false (or left out): protojobs stores offsets itself, '
     "only those of finished jobs (the commit rule)"),
    ('[kafka.consumer]\n"isolation.level" = "read_uncommitted"\n',
     'kafka.consumer."isolation.level": must be read_committed (or left out): exactly-once queues, the delay '
     "router and the scheduler publish in Kafka transactions; read_uncommitted would run the jobs of aborted "
     "transactions"),
    ('[kafka.consumer]\n"group.id" = "mine"\n',
     'kafka.consumer."group.id": cannot be set here: protojobs names its consumer groups after kafka.group_id '
     "(workers, delay router, scheduler): set kafka.group_id instead"),
    ('[kafka.consumer]\n"partition.assignment.strategy" = "range"\n',
     'kafka.consumer."partition.assignment.strategy": must be cooperative-sticky (or left out): the worker takes '
     "and gives up partitions incrementally (cooperative rebalancing)"),
]


@pytest.mark.parametrize(("toml", "expected"), REFUSED, ids=[e.split(":")[0] for _, e in REFUSED])
def test_validate_and_run_refuse_what_the_engine_cannot_honour(write: Write, capsys: pytest.CaptureFixture[str],
                                                               toml: str, expected: str) -> None:
    path = write(BASE + toml)
    assert issues(path) == [expected]
    assert cli_config.validate_command(str(path), env={}) == 1
    assert capsys.readouterr().err == expected + "\n"
    # `protojobs run` refuses it the same way, at once (it used to retry it as "Kafka not reachable")
    assert cli_run.run(str(path)) == 1
    assert capsys.readouterr().err == expected + "\n"


def test_the_limits_themselves_and_the_values_protojobs_sets_are_accepted(write: Write) -> None:
    settings = load(write(BASE + '''
        enable_auto_commit = false
        batch_size = 1000000
        [kafka.consumer]
        "enable.auto.commit" = "false"
        "enable.auto.offset.store" = false
        "isolation.level" = "read_committed"
        "partition.assignment.strategy" = "cooperative-sticky"
        "session.timeout.ms" = 6000
        [queues.q]
        handler = "json:dumps"
        partitions = 10000
        concurrency = 1000
        '''), env={})
    assert (settings.kafka.batch_size, settings.queues["q"].partitions, settings.queues["q"].concurrency) == (
        1000000, 10000, 1000)


def test_timeout_ms_is_the_idle_poll_wait_capped_at_100ms(write: Write) -> None:
    """The seed's poll timeout: how long an idle worker's (and router's) poll waits; the schema says so."""
    from protojobs.kafka.clients import idle_poll_s

    assert idle_poll_s(load(write(BASE), env={}).kafka) == 0.1  # the default 1000 ms, capped
    assert idle_poll_s(load(write(BASE + "timeout_ms = 20\n"), env={}).kafka) == 0.02
    described = config.config_schema()["$defs"]["kafka"]["properties"]["timeout_ms"]["description"]
    assert "poll timeout" in described and "100 ms" in described


# ---------------------------------------------------------------- secrets


SECRETS = f"""{BASE}
[kafka.producer]
"sasl.password" = "hunter2-long"
"sasl.oauthbearer.config" = "principal=app clientSecret=oauth-secret-9"
"sasl.oauthbearer.assertion.private.key.passphrase" = "pass-phrase-7"
[kafka.consumer]
"sasl.password" = "pw3"
{QUEUE}"""


def test_repr_of_settings_never_shows_a_secret(write: Write) -> None:
    settings = load(write(SECRETS), env={}, import_handlers=False)
    for text in (repr(settings), repr(settings.kafka), str(settings), f"{settings.kafka!r}"):
        for secret in ("hunter2-long", "oauth-secret-9", "pass-phrase-7", "pw3"):
            assert secret not in text, f"{secret!r} in {text[:300]}"
    assert "'sasl.password': '***'" in repr(settings.kafka)
    assert "sasl.username" not in repr(settings.kafka) and "brokers='127.0.0.1:1'" in repr(settings.kafka)
    assert settings.kafka.producer["sasl.password"] == "hunter2-long"  # only printing hides it


def test_config_show_redacts_the_oauthbearer_config(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_config.show_command(str(write(SECRETS)), env={}) == 0
    out = capsys.readouterr().out
    assert '"sasl.oauthbearer.config" = "***"' in out
    for secret in ("hunter2-long", "oauth-secret-9", "pass-phrase-7", "pw3"):
        assert secret not in out


def test_a_short_secret_is_scrubbed_from_error_messages(write: Write) -> None:
    path = write(SECRETS)
    lines = issues_with_env(path, {"PROTOJOBS_QUEUES__Q__CONCURRENCY": "pw3", "PROTOJOBS_QUEUES__Q__KEY": "x"})
    assert lines == ["queues.q.concurrency: must be an integer, not a string ('***') "
                     "(set by PROTOJOBS_QUEUES__Q__CONCURRENCY)"]
    # a one-character secret too, where it stands alone; not inside other words
    one = write('[kafka.consumer]\n"sasl.password" = "q"\n[queues.q]\nhandler = "json:dumps"\nordering = "q"\n')
    assert issues(one) == ["queues.q.ordering: '***' is not one of ['none', 'key', 'partition']"]


def issues_with_env(path: Path, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, env=env, import_handlers=False)
    return [str(issue) for issue in caught.value.issues]


# ---------------------------------------------------------------- validate --no-import


def test_validate_no_import_leaves_handler_modules_alone(write: Write, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "sideeffect_jobs.py").write_text(
        f"open({str(marker)!r}, 'w').close()  # top-level code: runs on import\n"
        "def handle(data):\n    return data\n")
    path = write(BASE + '[queues.q]\nhandler = "sideeffect_jobs:handle"\n')
    monkeypatch.setattr(sys, "path", list(sys.path))  # load() prepends the config's directory
    assert main.main(["config", "validate", "--config", str(path), "--no-import"]) == 0
    assert capsys.readouterr().out.endswith("valid (1 queue, 5 delay tiers, 1 retry policy)\n")
    assert not marker.exists()
    assert main.main(["--config", str(path), "validate"]) == 0  # the old spelling still works
    assert marker.exists()  # without --no-import the module is imported (and its top-level code ran)
    monkeypatch.delitem(sys.modules, "sideeffect_jobs", raising=False)


def test_validate_help_says_it_imports_the_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["config", "validate", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "imports the handler modules" in out and "--no-import" in out
