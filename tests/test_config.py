"""protojobs.config: jobs.toml layering, validation, cross-checks, printing."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from protojobs import config
from protojobs.cli import config as cli_config
from protojobs.config import ConfigError, PayloadError, load, payload_validator, payloads
from protojobs.model.durations import DURATION_REGEX
from protojobs.testing import Cluster

TESTS = Path(__file__).resolve().parent
SCHEMAS = TESTS.parent / "schemas"
Write = Callable[..., Path]

VALID = f"""
[kafka]
brokers = "127.0.0.1:9092"
group_id = "my-app-jobs-consumer"
topic_prefix = "my-app-jobs-"
[kafka.producer]
"security.protocol" = "SASL_PLAINTEXT"
"sasl.username" = "app"
"sasl.password" = "hunter2-secret"

[delays]
tiers = ["1s", "5s", "30s", "5m", "1h"]

[retry.default]
max_attempts = 5
dead_letter_on = ["ValueError"]

[retry.fast]
max_attempts = 3
backoff = ["1s", "2s"]

[defaults]
concurrency = 8
timeout = "10s"

[queues.emails]
handler = "demo_handlers:ok"
schema = "{SCHEMAS}/send_email.json"
ordering = "key"
key = "to"

[queues.images]
handler = "demo_handlers:async_ok"
schema = "{SCHEMAS}/resize_image.json"
retry = "fast"
concurrency = 2

[queues.reports]
jobs = ["demo_handlers:Resize"]
schema = "{SCHEMAS}/report.json"
"""


@pytest.fixture(autouse=True)
def _demo_handlers_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


def errors(path: Path, env: dict[str, str] | None = None, **kwargs: bool) -> list[str]:
    """The `path: message` lines of the ConfigError that loading `path` must raise."""
    with pytest.raises(ConfigError) as caught:
        load(path, env={} if env is None else env, **kwargs)
    assert str(caught.value).splitlines() == [str(i) for i in caught.value.issues]
    return str(caught.value).splitlines()


def one_error(path: Path, env: dict[str, str] | None = None, **kwargs: bool) -> str:
    lines = errors(path, env, **kwargs)
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------- defaults and inheritance


def test_empty_file_gives_the_seed_defaults_and_a_default_queue(write: Write) -> None:
    settings = load(write(""), env={})
    k = settings.kafka
    assert (k.brokers, k.group_id, k.topic_prefix) == ("localhost:9092", "proto-jobs-consumer", "proto-jobs-")
    assert (k.auto_offset_reset, k.enable_auto_commit, k.compression) == ("earliest", False, "snappy")
    assert (k.batch_size, k.timeout_ms, k.debug) == (10000, 1000, "")
    assert k.dead_letter_topic == "proto-jobs-dead-letter"
    assert settings.tiers_ms == (1000, 5000, 30000, 300000, 3600000)
    assert list(settings.retry) == ["default"]
    policy = settings.retry["default"]
    assert (policy.max_attempts, policy.backoff, policy.base_ms, policy.max_ms) == (5, "exponential", 1000, 600000)
    assert (policy.multiplier, policy.jitter, policy.delays_ms) == (2.0, 0.2, ())
    assert list(settings.queues) == ["default"]
    queue = settings.queues["default"]
    assert (queue.handler, queue.jobs, queue.schema, queue.retry) == (None, (), None, "default")
    assert (queue.partitions, queue.replication_factor, queue.concurrency) == (3, 1, 4)
    assert (queue.ordering, queue.key, queue.delivery) == ("none", None, "at_least_once")
    assert (queue.timeout_ms, queue.retention_ms) == (30000, 7 * 86400000)
    assert (queue.validate_on_consume, queue.blocking_retries) == (True, False)


def test_default_queue_takes_the_handler_of_defaults(write: Write) -> None:
    settings = load(write('[defaults]\nhandler = "demo_handlers:ok"\nconcurrency = 9\n'), env={})
    assert settings.queues["default"].handler == "demo_handlers:ok"
    assert settings.queues["default"].concurrency == 9


def test_no_default_queue_when_queues_are_declared(write: Write) -> None:
    settings = load(write('[queues.emails]\nhandler = "demo_handlers:ok"\n'), env={})
    assert list(settings.queues) == ["emails"]


def test_a_queue_inherits_defaults_then_overrides(write: Write) -> None:
    settings = load(write(VALID), env={})
    emails, images = settings.queues["emails"], settings.queues["images"]
    assert (emails.concurrency, emails.timeout_ms) == (8, 10000)
    assert (images.concurrency, images.timeout_ms) == (2, 10000)
    assert emails.partitions == 3  # neither sets it: the schema's default
    assert settings.queues["reports"].jobs == ("demo_handlers:Resize",)
    assert settings.retry["fast"].backoff == "list"
    assert settings.retry["fast"].delays_ms == (1000, 2000)
    assert settings.retry["default"].dead_letter_on == ("ValueError",)


def test_a_queue_setting_jobs_does_not_inherit_the_handler_of_defaults(write: Write) -> None:
    settings = load(write("""
        [defaults]
        handler = "demo_handlers:ok"
        [queues.emails]
        [queues.reports]
        jobs = ["demo_handlers:Resize"]
    """), env={})
    assert settings.queues["emails"].handler == "demo_handlers:ok"
    assert (settings.queues["reports"].handler, settings.queues["reports"].jobs) == (None, ("demo_handlers:Resize",))


def test_brokers_may_be_an_array_and_dead_letter_follows_the_prefix(write: Write) -> None:
    settings = load(write('[kafka]\nbrokers = ["a:1", "b:2"]\ntopic_prefix = "x-"\n[queues.q]\n'
                          'handler = "demo_handlers:ok"\ndead_letter = "q-dlq"\n'), env={})
    assert settings.kafka.brokers == "a:1,b:2"
    assert settings.kafka.dead_letter_topic == "x-dead-letter"
    assert settings.queues["q"].dead_letter_topic == "q-dlq"


def test_settings_are_frozen_and_read_only(write: Write) -> None:
    settings = load(write(VALID), env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.kafka.brokers = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.queues["new"] = settings.queues["emails"]  # type: ignore[index]
    with pytest.raises(TypeError):
        settings.kafka.producer["acks"] = "all"  # type: ignore[index]
    with pytest.raises(TypeError):
        settings.raw["kafka"]["brokers"] = "x"
    assert settings.source is not None and settings.source.name == "jobs.toml"


def test_a_relative_schema_path_is_resolved_from_the_config_directory(write: Write, tmp_path: Path) -> None:
    (tmp_path / "payloads").mkdir()
    shutil.copy(SCHEMAS / "send_email.json", tmp_path / "payloads" / "mail.json")
    settings = load(write('[queues.emails]\nhandler = "demo_handlers:ok"\nschema = "payloads/mail.json"\n'), env={})
    assert settings.queues["emails"].schema_path == tmp_path / "payloads" / "mail.json"
    assert settings.queues["emails"].schema is not None
    assert settings.queues["emails"].schema["required"] == ("to",)


def test_from_dict_builds_the_same_settings(write: Write, tmp_path: Path) -> None:
    path = write(VALID)
    from_file = load(path, env={})
    from_memory = config.from_dict(tomllib.loads(path.read_text()), tmp_path, env={})
    assert from_memory.queues == from_file.queues
    assert from_memory.kafka == from_file.kafka
    assert from_memory.source is None


def test_from_dict_rejects_what_toml_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^config: must be a table"):
        config.from_dict(["not", "a", "table"], tmp_path, env={})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="^config: not a TOML value: unsupported value object$"):
        config.from_dict({"kafka": {"debug": object()}}, tmp_path, env={})


# ---------------------------------------------------------------- environment overrides


def test_env_overrides_a_nested_key(write: Write) -> None:
    settings = load(write(VALID), env={"PROTOJOBS_KAFKA__BROKERS": "broker-1:9092,broker-2:9092"})
    assert settings.kafka.brokers == "broker-1:9092,broker-2:9092"
    assert settings.kafka.group_id == "my-app-jobs-consumer"  # siblings survive


def test_env_values_are_typed_and_queue_names_keep_their_case(write: Write) -> None:
    settings = load(write(VALID), env={
        "PROTOJOBS_QUEUES__EMAILS__CONCURRENCY": "16",
        "PROTOJOBS_QUEUES__EMAILS__VALIDATE_ON_CONSUME": "false",
        "PROTOJOBS_DELAYS__TIERS": '["2s", "10s"]',
        "PROTOJOBS_RETRY__DEFAULT__JITTER": "0.5",
    })
    assert list(settings.queues) == ["emails", "images", "reports"]
    assert settings.queues["emails"].concurrency == 16
    assert settings.queues["emails"].validate_on_consume is False
    assert settings.tiers_ms == (2000, 10000)  # an array replaces, never appends
    assert settings.retry["default"].jitter == 0.5
    assert settings.raw["queues"]["emails"]["concurrency"] == 16


def test_env_matches_mixed_case_names_case_insensitively(write: Write) -> None:
    settings = load(write('[queues.EmailQueue]\nhandler = "demo_handlers:ok"\n'),
                    env={"PROTOJOBS_QUEUES__EMAILQUEUE__PARTITIONS": "6"})
    assert list(settings.queues) == ["EmailQueue"]
    assert settings.queues["EmailQueue"].partitions == 6


def test_env_sets_librdkafka_properties_with_underscores_for_dots(write: Write) -> None:
    settings = load(write(VALID), env={"PROTOJOBS_KAFKA__PRODUCER__SASL_USERNAME": "ops",
                                       "PROTOJOBS_KAFKA__CONSUMER__SESSION_TIMEOUT_MS": "45000"})
    assert settings.kafka.producer["sasl.username"] == "ops"
    assert settings.kafka.producer["sasl.password"] == "hunter2-secret"
    assert settings.kafka.consumer == {"session.timeout.ms": 45000}


def test_env_override_making_the_config_invalid_names_path_and_variable(write: Write) -> None:
    line = one_error(write(VALID), {"PROTOJOBS_QUEUES__EMAILS__CONCURRENCY": "lots"})
    assert line == ("queues.emails.concurrency: must be an integer, not a string ('lots') "
                    "(set by PROTOJOBS_QUEUES__EMAILS__CONCURRENCY)")


def test_env_override_with_an_unknown_key_suggests_the_near_miss(write: Write) -> None:
    line = one_error(write(VALID), {"PROTOJOBS_KAFKA__BROKRES": "x:1"})
    assert line == "kafka.brokres: unknown key 'brokres' (did you mean 'brokers'?) (set by PROTOJOBS_KAFKA__BROKRES)"


def test_env_cross_check_failure_names_the_variable(write: Write) -> None:
    line = one_error(write(VALID), {"PROTOJOBS_QUEUES__IMAGES__RETRY": "defualt"})
    assert line.startswith("queues.images.retry: no retry policy named 'defualt' (did you mean 'default'?)")
    assert line.endswith("(set by PROTOJOBS_QUEUES__IMAGES__RETRY)")


def test_env_rejects_dynaconf_lazy_tokens_and_empty_segments(write: Write) -> None:
    lines = errors(write(VALID), {"PROTOJOBS_KAFKA__DEBUG": "@format {env[HOME]}", "PROTOJOBS_KAFKA____X": "1"})
    assert lines[0].startswith("kafka.debug: cannot use the value of PROTOJOBS_KAFKA__DEBUG")
    assert lines[1] == "PROTOJOBS_KAFKA____X: empty key between '__' separators"


def test_unrelated_variables_are_ignored(write: Write) -> None:
    env = {"PROTOJOBS_KAFKA_LIB": "/x", "PROTOJOBS_CONFIG": str(write(VALID)), "DYNACONF_KAFKA__BROKERS": "evil:1",
           "INCLUDES_FOR_DYNACONF": "/etc/passwd", "KAFKA__BROKERS": "evil:2", "HOME": "/root"}
    settings = load(None, env=env)
    assert settings.kafka.brokers == "127.0.0.1:9092"
    assert set(settings.raw) == {"kafka", "delays", "retry", "defaults", "queues"}


def test_an_explicit_env_mapping_isolates_from_os_environ(write: Write, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    (tmp_path / "other.toml").write_text("[schedules]\nx = 1\n")
    monkeypatch.setenv("PROTOJOBS_KAFKA__BROKERS", "evil:1")
    monkeypatch.setenv("PROTOJOBS_ENV", "production")
    for var in ("INCLUDES_FOR_DYNACONF", "PRELOAD_FOR_DYNACONF", "SETTINGS_FILE_FOR_DYNACONF"):
        monkeypatch.setenv(var, str(tmp_path / "other.toml"))
    monkeypatch.setenv("MERGE_ENABLED_FOR_DYNACONF", "true")
    path = write(VALID)
    assert load(path, env={}).kafka.brokers == "127.0.0.1:9092"
    assert load(path, env={"PROTOJOBS_KAFKA__BROKERS": "mine:1"}).kafka.brokers == "mine:1"


def test_env_defaults_to_os_environ(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(VALID)
    monkeypatch.setenv("PROTOJOBS_CONFIG", str(path))
    monkeypatch.setenv("PROTOJOBS_KAFKA__GROUP_ID", "from-os-environ")
    assert load().kafka.group_id == "from-os-environ"


def test_per_environment_file_merges_over_jobs_toml(write: Write) -> None:
    path = write(VALID)
    write("""
        [kafka]
        brokers = "prod-1:9092"
        [delays]
        tiers = ["1s", "1m"]
        [queues.emails]
        concurrency = 32
        [queues.audit]
        handler = "demo_handlers:ok"
    """, name="jobs.production.toml")
    settings = load(path, env={"PROTOJOBS_ENV": "production", "PROTOJOBS_QUEUES__EMAILS__PARTITIONS": "12"})
    assert settings.kafka.brokers == "prod-1:9092"
    assert settings.kafka.group_id == "my-app-jobs-consumer"
    assert settings.tiers_ms == (1000, 60000)
    assert (settings.queues["emails"].concurrency, settings.queues["emails"].key) == (32, "to")
    assert settings.queues["emails"].partitions == 12
    assert list(settings.queues) == ["emails", "images", "reports", "audit"]
    assert load(path, env={}).kafka.brokers == "127.0.0.1:9092"  # unused without PROTOJOBS_ENV


def test_environment_variables_beat_the_per_environment_file(write: Write) -> None:
    path = write(VALID)
    write('[kafka]\nbrokers = "prod:1"\n', name="jobs.production.toml")
    env = {"PROTOJOBS_ENV": "production", "PROTOJOBS_KAFKA__BROKERS": "override:1"}
    assert load(path, env=env).kafka.brokers == "override:1"


def test_per_environment_file_must_exist_when_selected(write: Write) -> None:
    path = write(VALID)
    line = one_error(path, {"PROTOJOBS_ENV": "staging"})
    assert line == f"{path.with_name('jobs.staging.toml')}: file not found (selected by PROTOJOBS_ENV=staging)"
    assert one_error(path, {"PROTOJOBS_ENV": "../x"}) == "PROTOJOBS_ENV: '../x' is not an environment name"


def test_per_environment_file_is_validated_after_merging(write: Write) -> None:
    path = write(VALID)
    write("[queues.emails]\nordering = \"sideways\"\n", name="jobs.production.toml")
    line = one_error(path, {"PROTOJOBS_ENV": "production"})
    assert line.startswith("queues.emails.ordering: 'sideways' is not one of ['none', 'key', 'partition']")


# ---------------------------------------------------------------- the file itself


def test_missing_file_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert one_error(None) == "jobs.toml: file not found (give --config or set PROTOJOBS_CONFIG)"  # type: ignore[arg-type]


def test_toml_syntax_error_gives_line_and_column(write: Write) -> None:
    path = write('[kafka]\nbrokers = "a:1"\ngroup_id = \n')
    line = one_error(path)
    assert line.startswith(f"{path}: invalid TOML: ")
    assert re.search(r"line 3, column 12", line), line


def test_unreadable_files(write: Write, tmp_path: Path) -> None:
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'[kafka]\nbrokers = "\xff"\n')
    assert one_error(binary) == f"{binary}: not UTF-8 text (byte 19)"
    assert one_error(tmp_path).startswith(f"{tmp_path}: cannot read: ")


# ---------------------------------------------------------------- schema errors


@pytest.mark.parametrize(("toml", "expected"), [
    ('[kafka]\nbatch_size = "big"', "kafka.batch_size: must be an integer, not a string ('big')"),
    ("[kafka]\nbatch_size = 0", "kafka.batch_size: 0 is less than the minimum of 1"),
    ("[kafka]\nenable_auto_commit = 1",
     "kafka.enable_auto_commit: must be a boolean (true or false), not an integer (1)"),
    ('[kafka]\ncompression = "brotli"',
     "kafka.compression: 'brotli' is not one of ['none', 'gzip', 'snappy', 'lz4', 'zstd']"),
    ('[kafka]\nauto_offset_reset = "newest"', "kafka.auto_offset_reset: 'newest' is not one of ['earliest', 'latest']"),
    ("[kafka]\nbrokers = 9092",
     'kafka.brokers: 9092 is not a broker list: write "host:port,host:port" or an array of "host:port" strings'),
    ('[kafka]\nbrokers = ["a:1", ""]', "kafka.brokers[1]: '' should be non-empty"),
    ('[kafka]\ntopic_prefix = "my app"',
     "kafka.topic_prefix: 'my app' is not a legal topic prefix: use letters, digits, '.', '_' and '-'"),
    ('[kafka]\ndead_letter_topic = "d l q"',
     "kafka.dead_letter_topic: 'd l q' is not a legal Kafka topic name: use letters, digits, '.', '_' and '-'"),
    ("[kafka.producer]\nacks = [1]",
     "kafka.producer.acks: must be a string, an integer or a boolean (true or false), not an array"),
    ('[delays]\ntiers = "1s"', "delays.tiers: must be an array, not a string ('1s')"),
    ("[delays]\ntiers = []", "delays.tiers: [] should be non-empty"),
    ('[delays]\ntiers = ["1s", "5 sec"]',
     "delays.tiers[1]: '5 sec' is not a duration: write a number and a unit, e.g. 250ms, 5s, 1m, 2h, 7d"),
    ("[retry.default]\nmax_attempts = 0", "retry.default.max_attempts: 0 is less than the minimum of 1"),
    ('[retry.default]\nbackoff = "linear"',
     "retry.default.backoff: 'linear' is not a backoff: write \"exponential\", \"fixed\" or an array of durations"),
    ('[retry.default]\nbackoff = ["1s", "soon"]',
     "retry.default.backoff[1]: 'soon' is not a duration: write a number and a unit, e.g. 250ms, 5s, 1m, 2h, 7d"),
    ("[retry.default]\njitter = 1.5", "retry.default.jitter: 1.5 is greater than the maximum of 1"),
    ('[retry."bad name"]\nmax_attempts = 2',
     "retry.\"bad name\": 'bad name' is not a valid name: use letters, digits, '.', '_' and '-', "
     "starting with a letter or digit"),
    ('[defaults]\nordering = "random"', "defaults.ordering: 'random' is not one of ['none', 'key', 'partition']"),
    ('[queues.q]\nhandler = "demo_handlers.ok"',
     "queues.q.handler: 'demo_handlers.ok' is not an import path: write module:attribute, e.g. app.jobs:send_email"),
    ('[queues.q]\njobs = []', "queues.q.jobs: [] should be non-empty"),
    ('[queues.q]\nhandler = "a:b"\npartitions = 2.5', "queues.q.partitions: must be an integer, not a number (2.5)"),
    ('[queues.q]\nhandler = "a:b"\ntimeout = 30', "queues.q.timeout: must be a string, not an integer (30)"),
    ('[queues.q]\nhandler = "a:b"\njobs = ["a:B"]', "queues.q: set handler or jobs, not both"),
    ('[queues."-q"]\nhandler = "a:b"',
     "queues.-q: '-q' is not a valid name: use letters, digits, '.', '_' and '-', "
     "starting with a letter or digit"),
    ('queues = 3', "queues: must be a table, not an integer (3)"),
    ("[kafka]\ngroup_id = 2024-01-01", "kafka.group_id: must be a string, not a date (datetime.date(2024, 1, 1))"),
])
def test_schema_errors_name_the_key(write: Write, toml: str, expected: str) -> None:
    assert one_error(write(toml), import_handlers=False) == expected


@pytest.mark.parametrize(("toml", "expected"), [
    ("[kafka]\nbrokres = 1", "kafka.brokres: unknown key 'brokres' (did you mean 'brokers'?)"),
    ("[delays]\ntier = []", "delays.tier: unknown key 'tier' (did you mean 'tiers'?)"),
    ("[retry.default]\nmax_attempt = 3",
     "retry.default.max_attempt: unknown key 'max_attempt' (did you mean 'max_attempts'?)"),
    ("[defaults]\nconcurency = 3", "defaults.concurency: unknown key 'concurency' (did you mean 'concurrency'?)"),
    ('[queues.q]\nhandler = "a:b"\nretries = 3', "queues.q.retries: unknown key 'retries' (did you mean 'retry'?)"),
    ("[schedules.nightly]\nqueue = 'q'\ncron = '0 0 * * *'\njobb = 'x'",
     "schedules.nightly.jobb: unknown key 'jobb' (did you mean 'job'?)"),
    ("[schedule.nightly]\ncron = '0 0 * * *'",
     "schedule: unknown key 'schedule' (did you mean 'schedules'?)"),
    ("[kafka]\nzzz = 1",
     "kafka.zzz: unknown key 'zzz' (allowed: brokers, group_id, topic_prefix, auto_offset_reset, "
     "enable_auto_commit, compression, batch_size, timeout_ms, debug, dead_letter_topic, producer, consumer)"),
])
def test_unknown_keys_are_named_with_a_suggestion(write: Write, toml: str, expected: str) -> None:
    assert one_error(write(toml), import_handlers=False) == expected


def test_pass_through_tables_accept_any_property(write: Write) -> None:
    settings = load(write('[kafka.consumer]\n"fetch.min.bytes" = 1\n"check.crcs" = true\n'
                          '"client.rack" = "r1"\n'), env={})
    assert settings.kafka.consumer == {"fetch.min.bytes": 1, "check.crcs": True, "client.rack": "r1"}


def test_every_issue_is_reported_not_only_the_first(write: Write) -> None:
    lines = errors(write('[kafka]\nbatch_size = 0\nbrokres = 1\n[queues.q]\nhandler = "a:b"\nconcurrency = "x"\n'))
    assert [line.split(":")[0] for line in lines] == ["kafka.batch_size", "kafka.brokres", "queues.q.concurrency"]


def test_config_error_is_a_value_error_with_issues(write: Write) -> None:
    with pytest.raises(ValueError) as caught:
        load(write("[kafka]\nbatch_size = 0\n"), env={})
    assert isinstance(caught.value, ConfigError)
    assert caught.value.issues == [config.ConfigIssue("kafka.batch_size", "0 is less than the minimum of 1")]


# ---------------------------------------------------------------- cross-checks


def test_unknown_retry_policy_suggests_the_near_miss(write: Write) -> None:
    line = one_error(write('[queues.q]\nhandler = "demo_handlers:ok"\nretry = "defualt"\n'))
    assert line == "queues.q.retry: no retry policy named 'defualt' (did you mean 'default'?)"


def test_unknown_retry_policy_from_defaults_is_reported_once_at_defaults(write: Write) -> None:
    lines = errors(write('[defaults]\nretry = "slow"\n[queues.a]\nhandler = "demo_handlers:ok"\n'
                         '[queues.b]\nhandler = "demo_handlers:ok"\n'))
    assert lines == ["defaults.retry: no retry policy named 'slow' (allowed: default)"]


def test_a_declared_queue_needs_a_handler_or_jobs(write: Write) -> None:
    line = one_error(write("[queues.emails]\nconcurrency = 2\n"))
    assert line.startswith("queues.emails.handler: required key is missing: set handler")


@pytest.mark.parametrize(("tiers", "expected"), [
    ('["5s", "1s"]',
     "delays.tiers[1]: '1s' is not longer than the tier before it ('5s'): "
     "tiers must be unique and ascending"),
    ('["1s", "1000ms"]',
     "delays.tiers[1]: '1000ms' is not longer than the tier before it ('1s'): "
     "tiers must be unique and ascending"),
    ('["0s", "1s"]', "delays.tiers[0]: a delay tier must be longer than 0"),
])
def test_tiers_must_ascend(write: Write, tiers: str, expected: str) -> None:
    assert one_error(write(f"[delays]\ntiers = {tiers}\n")) == expected


def test_retention_must_cover_the_largest_tier(write: Write) -> None:
    line = one_error(write('[delays]\ntiers = ["1s", "2d"]\n[queues.q]\nhandler = "demo_handlers:ok"\n'
                           'retention = "1d"\n'))
    assert line.startswith("queues.q.retention: 1d is shorter than the largest delay tier (2d)")


def test_a_retry_delay_far_below_the_smallest_tier_is_an_error(write: Write) -> None:
    text = '[delays]\ntiers = ["1m", "1h"]\n[queues.q]\nhandler = "demo_handlers:ok"\n'
    line = one_error(write(text))
    assert line.startswith("retry.default.base: a 1s retry delay is far shorter than the smallest delay tier (1m")
    assert line.endswith("(the built-in default policy)")
    load(write(text + '[retry.default]\nbase = "10s"\n'), env={})  # 10x is still fine
    load(write(text + "[retry.default]\nmax_attempts = 1\n"), env={})  # never retries
    line = one_error(write(text + '[retry.default]\nbackoff = ["1s", "1m"]\n'))
    assert line.startswith("retry.default.backoff: a 1s retry delay")


def test_an_unused_policy_is_not_checked_against_the_tiers(write: Write) -> None:
    load(write('[delays]\ntiers = ["1m"]\n[retry.default]\nbase = "10s"\n[retry.quick]\nbase = "1s"\n'
               '[queues.q]\nhandler = "demo_handlers:ok"\n'), env={})


def test_base_longer_than_max(write: Write) -> None:
    line = one_error(write('[retry.default]\nbase = "1h"\nmax = "1m"\n'))
    assert line == "retry.default.base: 1h is longer than max (1m)"


@pytest.mark.parametrize(("keys", "expected"), [
    ('ordering = "key"', 'queues.q.key: required when ordering = "key"'),
    ("blocking_retries = true",
     'queues.q.blocking_retries: only allowed when ordering is "key" or "partition" (here "none")'),
    ('timeout = "0s"', "queues.q.timeout: must be longer than 0"),
])
def test_queue_rules(write: Write, keys: str, expected: str) -> None:
    assert one_error(write(f'[queues.q]\nhandler = "demo_handlers:ok"\n{keys}\n')) == expected


def test_blocking_retries_with_ordering_is_fine(write: Write) -> None:
    settings = load(write('[queues.q]\nhandler = "demo_handlers:ok"\nordering = "partition"\n'
                          'blocking_retries = true\n'), env={})
    assert settings.queues["q"].blocking_retries is True


def test_reserved_queue_names_are_rejected(write: Write) -> None:
    line = one_error(write('[queues.dead-letter]\nhandler = "demo_handlers:ok"\n'))
    assert line.startswith("queues.dead-letter: queue name 'dead-letter' is reserved")


def test_payload_schema_file_must_exist(write: Write, tmp_path: Path) -> None:
    line = one_error(write('[queues.q]\nhandler = "demo_handlers:ok"\nschema = "schemas/nope.json"\n'))
    assert line == ("queues.q.schema: schemas/nope.json: file not found "
                    f"(looked at {tmp_path / 'schemas' / 'nope.json'})")


def test_payload_schema_must_be_json(write: Write, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"type": "object",\n  oops}')
    line = one_error(write('[queues.q]\nhandler = "demo_handlers:ok"\nschema = "bad.json"\n'))
    assert line == ("queues.q.schema: bad.json: not JSON: "
                    "Expecting property name enclosed in double quotes (line 2, column 3)")


def test_payload_schema_must_be_a_valid_json_schema(write: Write, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"properties": {"to": {"type": "text"}}}')
    line = one_error(write('[defaults]\nschema = "bad.json"\n[queues.a]\nhandler = "demo_handlers:ok"\n'
                           '[queues.b]\nhandler = "demo_handlers:ok"\n'))
    assert line.startswith("defaults.schema: bad.json: not a valid JSON Schema: ")
    assert "properties.to.type" in line


def test_handler_import_errors(write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_at_import.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    lines = errors(write("""
        [queues.a]
        handler = "no_such_module_xyz:run"
        [queues.b]
        handler = "demo_handlers:missing"
        [queues.c]
        handler = "demo_handlers:NOT_CALLABLE"
        [queues.d]
        handler = "broken_at_import:run"
        [queues.e]
        jobs = ["demo_handlers:Resize", "demo_handlers:ok", "demo_handlers:NotAJob"]
    """))
    assert lines == [
        "queues.a.handler: cannot import 'no_such_module_xyz': "
        "ModuleNotFoundError: No module named 'no_such_module_xyz'",
        "queues.b.handler: cannot import 'demo_handlers:missing': module 'demo_handlers' has no attribute 'missing'",
        "queues.c.handler: demo_handlers:NOT_CALLABLE is not callable",
        "queues.d.handler: cannot import 'broken_at_import': RuntimeError: boom at import",
        "queues.e.jobs[1]: demo_handlers:ok is not a Job class (a class with a handle method)",
        "queues.e.jobs[2]: demo_handlers:NotAJob is not a Job class (a class with a handle method)",
    ]


def test_handlers_are_not_imported_when_asked_not_to(write: Write) -> None:
    settings = load(write('[queues.a]\nhandler = "no_such_module_xyz:run"\n'), env={}, import_handlers=False)
    assert settings.queues["a"].handler == "no_such_module_xyz:run"


def test_a_job_class_handler_counts_as_callable(write: Write) -> None:
    settings = load(write('[queues.emails]\nhandler = "demo_handlers:SendEmail"\n'), env={})
    assert settings.queues["emails"].handler == "demo_handlers:SendEmail"


def test_job_class_queue_conflict(write: Write) -> None:
    line = one_error(write('[queues.mail]\nhandler = "demo_handlers:SendEmail"\n'))
    assert line == ("queues.mail.handler: conflict: SendEmail.queue = 'emails' but jobs.toml declares it on queue "
                    "'mail' (jobs.toml wins; remove one)")
    line = one_error(write('[queues.mail]\njobs = ["demo_handlers:Resize", "demo_handlers:SendEmail"]\n'))
    assert line.startswith("queues.mail.jobs[1]: conflict: SendEmail.queue = 'emails'")


def test_job_class_max_retries_conflicts_only_with_an_explicit_max_attempts(write: Write) -> None:
    base = '[queues.emails]\nhandler = "demo_handlers:SendDigest"\n'
    load(write(base), env={})  # the file leaves max_attempts out: the class's 2 is the default
    load(write(base + "[retry.default]\nmax_attempts = 2\n"), env={})  # same value
    line = one_error(write(base + "[retry.default]\nmax_attempts = 5\n"))
    assert line == ("queues.emails.handler: conflict: SendDigest.max_retries = 2 but retry.default.max_attempts = 5 "
                    "(jobs.toml wins; remove one)")


def test_retry_policies_say_whether_max_attempts_was_set(write: Write) -> None:
    path = write('[retry.fast]\nmax_attempts = 2\n[retry.slow]\nbase = "5s"\n[queues.q]\nhandler = "os.path:join"\n')
    declared = {name: p.max_attempts_declared for name, p in load(path, env={}).retry.items()}
    assert declared == {"default": False, "fast": True, "slow": False}
    env = {"PROTOJOBS_RETRY__SLOW__MAX_ATTEMPTS": "4"}
    assert load(path, env=env).retry["slow"].max_attempts_declared


def test_attributes_of_protojobs_base_classes_never_conflict(write: Write) -> None:
    load(write('[retry.default]\nmax_attempts = 7\n[queues.images]\nhandler = "demo_handlers:Resize"\n'), env={})


# ---------------------------------------------------------------- secrets and printing


def test_redacted_hides_secrets_everywhere_but_keeps_names(write: Write) -> None:
    settings = load(write(VALID + '\n[queues.tokens]\nhandler = "demo_handlers:ok"\n'), env={
        "PROTOJOBS_KAFKA__CONSUMER__SASL_JAAS_CONFIG": "x required password=\"p\";",
        "PROTOJOBS_KAFKA__CONSUMER__SSL_KEY_PASSWORD": "k",
        "PROTOJOBS_KAFKA__CONSUMER__SASL_OAUTHBEARER_CLIENT_SECRET": "s",
        "PROTOJOBS_KAFKA__CONSUMER__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "u",
    })
    shown = config.redacted(settings)
    assert shown["kafka"]["producer"] == {"security.protocol": "SASL_PLAINTEXT", "sasl.username": "app",
                                          "sasl.password": "***"}
    assert set(shown["kafka"]["consumer"].values()) == {"***"}
    assert shown["queues"]["tokens"]["handler"] == "demo_handlers:ok"
    assert settings.kafka.producer["sasl.password"] == "hunter2-secret"  # only printing hides it
    assert config.redacted({"a": {"api_token": 1, "list": [{"password": "p"}]}}) == {
        "a": {"api_token": "***", "list": [{"password": "***"}]}}


def test_secrets_never_appear_in_error_messages(write: Write) -> None:
    path = write(VALID)
    lines = errors(path, {"PROTOJOBS_KAFKA__PRODUCER__SASL_PASSWORD": '["s3cr3t-value"]',
                          "PROTOJOBS_QUEUES__EMAILS__KEY": "hunter2-secret",
                          "PROTOJOBS_QUEUES__EMAILS__CONCURRENCY": "hunter2-secret"})
    assert lines == [
        "kafka.producer.\"sasl.password\": must be a string, an integer or a boolean (true or false), not an array "
        "(set by PROTOJOBS_KAFKA__PRODUCER__SASL_PASSWORD)",
        "queues.emails.concurrency: must be an integer, not a string ('***') "
        "(set by PROTOJOBS_QUEUES__EMAILS__CONCURRENCY)",
    ]
    env_only = {"PROTOJOBS_KAFKA__CONSUMER__SSL_KEY_PASSWORD": "env-only-secret",
                "PROTOJOBS_QUEUES__IMAGES__PARTITIONS": "env-only-secret"}
    assert one_error(path, env_only) == ("queues.images.partitions: must be an integer, not a string ('***') "
                                         "(set by PROTOJOBS_QUEUES__IMAGES__PARTITIONS)")
    assert one_error(write('[kafka.producer]\n"sasl.password" = 1.5\n')) == (
        "kafka.producer.\"sasl.password\": must be a string, an integer or a boolean (true or false), "
        "not a number (***)")


def test_show_prints_the_effective_config_as_toml(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(VALID)
    assert cli_config.show_command(str(path), env={"PROTOJOBS_QUEUES__EMAILS__CONCURRENCY": "3"}) == 0
    out = capsys.readouterr().out
    assert "hunter2-secret" not in out
    shown = tomllib.loads(out)
    assert shown["kafka"]["producer"]["sasl.password"] == "***"
    assert shown["queues"]["emails"]["concurrency"] == 3
    assert shown["queues"]["images"]["timeout"] == "10s"
    assert shown["delays"]["tiers"] == ["1s", "5s", "30s", "5m", "1h"]
    assert shown["retry"]["fast"]["backoff"] == ["1s", "2s"]
    assert "defaults" not in shown  # already applied to every queue


def test_show_as_json_and_the_shown_config_loads_back(write: Write, capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    path = write(VALID)
    assert cli_config.show_command(str(path), env={}, fmt="json") == 0
    shown = json.loads(capsys.readouterr().out)
    shown["kafka"]["producer"]["sasl.password"] = "hunter2-secret"
    again = config.from_dict(shown, tmp_path, env={})
    original = load(path, env={})
    assert (again.kafka, again.tiers_ms, again.retry, again.queues) == (
        original.kafka, original.tiers_ms, original.retry, original.queues)


def test_show_reports_errors_on_stderr(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_config.show_command(str(write("[kafka]\nbatch_size = 0\n")), env={}) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "kafka.batch_size: 0 is less than the minimum of 1\n")


# ---------------------------------------------------------------- validate command


def test_validate_valid_config(write: Write, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                               tmp_path: Path) -> None:
    write(VALID)
    monkeypatch.chdir(tmp_path)
    assert cli_config.validate_command(None, env={}) == 0
    captured = capsys.readouterr()
    assert captured.out == "jobs.toml: valid (3 queues, 5 delay tiers, 2 retry policies)\n"
    assert captured.err == ""
    write("")
    assert cli_config.validate_command("jobs.toml", env={}) == 0
    assert capsys.readouterr().out == "jobs.toml: valid (1 queue, 5 delay tiers, 1 retry policy)\n"


def test_validate_invalid_config_lists_every_error(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write('[kafka]\nbatch_size = 0\n[queues.q]\nhandler = "demo_handlers:ok"\nconcurency = 2\n')
    assert cli_config.validate_command(str(path), env={}) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "kafka.batch_size: 0 is less than the minimum of 1",
        "queues.q.concurency: unknown key 'concurency' (did you mean 'concurrency'?)",
    ]


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_config.validate_command(None, env={}) == 1
    assert capsys.readouterr().err == "jobs.toml: file not found (give --config or set PROTOJOBS_CONFIG)\n"
    assert cli_config.validate_command(None, env={"PROTOJOBS_CONFIG": "app/jobs.toml"}) == 1
    assert capsys.readouterr().err.startswith("app/jobs.toml: file not found")


def test_validate_cluster_unreachable(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write('[kafka]\nbrokers = "127.0.0.1:9"\n[queues.q]\nhandler = "demo_handlers:ok"\n')
    assert cli_config.validate_command(str(path), cluster=True, env={}, cluster_timeout=1.0) == 1
    err = capsys.readouterr().err
    assert err.startswith("kafka.brokers: cannot reach 127.0.0.1:9 within 1s: "), err
    assert len(err.splitlines()) == 1


@pytest.mark.cluster
def test_validate_cluster_checks_replication_factor(write: Write, capsys: pytest.CaptureFixture[str],
                                                    kafka_cluster: Cluster) -> None:
    head = f'[kafka]\nbrokers = "{kafka_cluster.bootstrap}"\n'
    ok = write(head + '[queues.q]\nhandler = "demo_handlers:ok"\nreplication_factor = 3\n')
    assert cli_config.validate_command(str(ok), cluster=True, env={}) == 0
    bad = write(head + '[defaults]\nhandler = "demo_handlers:ok"\n[queues.low]\nreplication_factor = 1\n'
                       '[queues.high]\nreplication_factor = 4\n')
    capsys.readouterr()
    assert cli_config.validate_command(str(bad), cluster=True, env={}) == 1
    assert capsys.readouterr().err.splitlines() == [
        "queues.low.replication_factor: 1 is below the cluster's min.insync.replicas (2): acks=all produces would fail",
        "queues.high.replication_factor: 4 is more than the cluster's 3 broker(s)",
    ]


# ---------------------------------------------------------------- payloads and schema files


def test_payload_validator_names_the_failing_field(write: Write) -> None:
    settings = load(write(VALID), env={})
    check = payload_validator(settings.queues["emails"])
    assert payload_validator(settings.queues["emails"]) is check  # compiled once per queue
    check({"to": "ada@example.org", "subject": "hi"})
    with pytest.raises(PayloadError, match=r"^data\.to: 'x' is not a 'email'$"):
        check({"to": "x"})
    with pytest.raises(PayloadError) as caught:
        check({"subject": 3})
    assert caught.value.errors == ["data.to: required field is missing", "data.subject: 3 is not of type 'string'"]
    assert str(caught.value) == "data.to: required field is missing; data.subject: 3 is not of type 'string'"
    images = payload_validator(settings.queues["images"])
    with pytest.raises(PayloadError, match=r"^data\.width: 0 is less than the minimum of 1$"):
        images({"url": "http://x/a.png", "width": 0})
    reports = payload_validator(settings.queues["reports"])
    reports({"report_id": "r1", "day": "2024-02-29"})
    with pytest.raises(PayloadError, match=r"^data\.day: '2024-02-30' is not a 'date'$"):
        reports({"report_id": "r1", "day": "2024-02-30"})


def test_a_queue_without_schema_accepts_any_payload(write: Write) -> None:
    check = payload_validator(load(write(""), env={}).queues["default"])
    check({"anything": [1, 2]})
    check("not even a dict")


def test_the_config_schema_documents_every_key() -> None:
    schema = config.config_schema()
    Draft202012Validator.check_schema(schema)
    missing: list[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                if "description" not in sub:
                    missing.append(f"{where}.{key}")
            for key, sub in node.items():
                walk(sub, f"{where}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}[{i}]")

    walk(schema, "")
    assert missing == []
    assert schema["$defs"]["duration"]["pattern"] == DURATION_REGEX
    closed = [d for d in ("kafka", "delays", "retryPolicy", "queueKeys")
              if schema["$defs"][d]["additionalProperties"] is not False]
    assert schema["additionalProperties"] is False and closed == []


def test_defaults_come_from_the_schema() -> None:
    assert config.schema_defaults("kafka")["group_id"] == "proto-jobs-consumer"
    assert config.schema_defaults("queueKeys") == {
        "retry": "default", "partitions": 3, "replication_factor": 1, "concurrency": 4, "ordering": "none",
        "delivery": "at_least_once", "timeout": "30s", "retention": "7d", "validate_on_consume": True,
        "blocking_retries": False}


@pytest.mark.parametrize("name", ["send_email.json", "resize_image.json", "report.json"])
def test_demo_payload_schemas_are_valid(name: str) -> None:
    schema, problem = payloads.load_payload_schema(SCHEMAS / name, name)
    assert problem is None and schema is not None
    assert schema["required"] in (["to"], ["url"], ["report_id"])


def test_to_toml_quotes_a_key_ending_in_a_newline() -> None:
    """A bare-key check with `$` accepted "0\\n" (found by hypothesis): it must be quoted."""
    import tomllib

    from protojobs.config import to_toml

    tree = {"a": {"0\n": False}}
    assert tomllib.loads(to_toml(tree)) == tree
