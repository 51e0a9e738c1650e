"""jobs.toml -> validated, frozen settings (protojobs.config.settings).

Layers, lowest precedence first:
1. jobs.toml: `load(path)`, else $PROTOJOBS_CONFIG, else ./jobs.toml; parsed with tomllib first,
   so a syntax error reports its line and column.
2. `jobs.<PROTOJOBS_ENV>.toml` next to it (`app.toml` -> `app.production.toml`), only when
   PROTOJOBS_ENV is set, and then it must exist. A plain jobs.toml works unchanged: no `[default]`
   wrapper, no dynaconf `environments=True` (which ignores top-level tables outside `[default]`).
3. `PROTOJOBS_<SECTION>__<KEY>[__<KEY>...]` entries of the `env` mapping (default os.environ):
   an operator's variable beats both files (protojobs.config.env says how names and values
   are read: PROTOJOBS_QUEUES__EMAILS__CONCURRENCY sets `queues.emails.concurrency`,
   PROTOJOBS_KAFKA__PRODUCER__SASL_PASSWORD sets `sasl.password`).
Tables merge key by key; arrays and scalars replace. The merged tree is validated against
protojobs/config/protojobs.schema.json (the single source of truth of the shape and of the defaults),
built into frozen dataclasses and cross-checked (protojobs.config.checks). Every problem is
reported at once in one ConfigError; a config is either fully valid or not loaded. Nothing else
in protojobs reads the environment.

Why no `Dynaconf(...)` object: dynaconf 3.3.5 reads `*_FOR_DYNACONF` variables from os.environ
whatever its constructor is given (INCLUDES_, PRELOAD_, SETTINGS_FILE_, SECRETS_, ENVIRONMENTS_,
MERGE_ENABLED_, NESTED_SEPARATOR_FOR_DYNACONF all change what it loads), takes no env mapping,
and with merge_enabled=True concatenates arrays (an override file's tiers would be appended).
So the layers are merged with dynaconf's `object_merge` and env values typed with its
`parse_conf_data`, as its env loader does, reading only the `env` mapping given here.

The `default` queue: when the file declares no queue, one named `default` is built from
[defaults]; its handler / jobs are those of [defaults] if any, else none (handler None, jobs ()):
the facade (protojobs.api.jobs) then routes to the Job classes registered in code.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dynaconf.utils import object_merge
from jsonschema import Draft202012Validator

from protojobs.config import checks
from protojobs.config.env import ENV_PREFIX, apply_env
from protojobs.config.issues import ConfigError, ConfigIssue, finish, schema_issues
from protojobs.config.payloads import load_payload_schema
from protojobs.config.secrets import secret_values
from protojobs.config.settings import KafkaSettings, QueueSettings, RetryPolicy, Settings
from protojobs.config.toml import key_path, plain
from protojobs.model.durations import parse_ms
from protojobs.model.schedules import RuleError, Schedule
from protojobs.model.schedules import from_table as schedule_from_table

__all__ = ["config_path", "config_schema", "from_dict", "load", "schema_defaults"]

CONFIG_SCHEMA = "protojobs.schema.json"  # package data of protojobs.config
MISSING_FILE = "file not found (give --config or set PROTOJOBS_CONFIG)"


# ---------------------------------------------------------------- loading


def config_path(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The file `load` reads: `path`, else $PROTOJOBS_CONFIG, else ./jobs.toml."""
    env = os.environ if env is None else env
    return Path(path if path is not None else env.get("PROTOJOBS_CONFIG") or "jobs.toml")


def load(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    import_handlers: bool = True,
    code_queues: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Read, merge, validate and build; raises ConfigError listing every problem found.
    `code_queues`: queue tables declared in code (`App.job`), the lowest layer under the file's
    own table of each queue; their handlers come from code, so they need no `handler` key."""
    env = os.environ if env is None else env
    source = config_path(path, env)
    data = _read_toml(source)
    env_name = env.get(f"{ENV_PREFIX}ENV", "")
    if env_name:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", env_name):
            raise ConfigError([ConfigIssue("PROTOJOBS_ENV", f"{env_name!r} is not an environment name")])
        overlay = source.with_name(f"{source.stem}.{env_name}{source.suffix}")
        overrides = _read_toml(overlay, f"selected by PROTOJOBS_ENV={env_name}")
        data = object_merge(data, overrides, list_merge="shallow")
    base = source.absolute().parent
    if import_handlers and str(base) not in sys.path:
        sys.path.insert(0, str(base))  # handlers are importable relative to jobs.toml, like an app dir
    return _settings(data, base, source.absolute(), env, import_handlers, code_queues)


def from_dict(
    data: Mapping[str, Any],
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    import_handlers: bool = True,
    code_queues: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Like `load` for a tree already in memory (env overrides apply; PROTOJOBS_ENV does not)."""
    if not isinstance(data, Mapping):
        raise ConfigError([ConfigIssue("config", f"must be a table (a mapping), not {type(data).__name__}")])
    try:
        tree = plain(data)
    except TypeError as exc:
        raise ConfigError([ConfigIssue("config", f"not a TOML value: {exc}")]) from None
    return _settings(tree, Path(base_dir), None, os.environ if env is None else env, import_handlers, code_queues)


def _read_toml(path: Path, why: str = "") -> dict[str, Any]:
    def fail(message: str) -> ConfigError:
        return ConfigError([ConfigIssue(str(path), message)])

    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise fail(f"file not found ({why})" if why else MISSING_FILE) from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"invalid TOML: {exc}") from None


def _settings(data: dict[str, Any], base_dir: Path, source: Path | None, env: Mapping[str, str],
              import_handlers: bool, code_queues: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
    if code_queues:
        queues = dict(data.get("queues") or {})
        for name, table in code_queues.items():  # the file wins key by key
            queues[name] = {**plain(dict(table)), **queues.get(name, {})}
        data = {**data, "queues": queues}
    secrets = secret_values(data)
    data, origins, issues = apply_env(copy.deepcopy(data), env)
    secrets |= secret_values(data)
    issues += schema_issues(data, _validator())
    if issues:
        raise ConfigError(finish(issues, origins, secrets))
    settings, issues = _build(data, base_dir, source)
    issues += checks.check(settings, data, import_handlers=import_handlers, from_code=frozenset(code_queues or ()))
    if issues:
        raise ConfigError(finish(issues, origins, secrets))
    return settings


# ---------------------------------------------------------------- building


@functools.cache
def config_schema() -> dict[str, Any]:
    """The JSON Schema of jobs.toml (package data: protojobs/config/protojobs.schema.json)."""
    try:
        text = resources.files("protojobs.config").joinpath(CONFIG_SCHEMA).read_text(encoding="utf-8")
        return dict(json.loads(text))
    except (OSError, ValueError) as exc:
        issue = ConfigIssue(CONFIG_SCHEMA, f"cannot read the config schema: {exc}")
        raise ConfigError([issue]) from None


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(config_schema())


def schema_defaults(definition: str) -> dict[str, Any]:
    """The `default` of every property of one `$defs` entry of the config schema."""
    props = config_schema()["$defs"][definition]["properties"]
    return {key: copy.deepcopy(p["default"]) for key, p in props.items() if "default" in p}


def _build(data: dict[str, Any], base_dir: Path, source: Path | None) -> tuple[Settings, list[ConfigIssue]]:
    kafka = _kafka({**schema_defaults("kafka"), **data.get("kafka", {})})
    tiers = data.get("delays", {}).get("tiers", schema_defaults("delays")["tiers"])
    declared = data.get("retry", {})
    retry = {name: _policy(name, declared.get(name, {}))
             for name in ["default", *(n for n in declared if n != "default")]}
    queues: dict[str, QueueSettings] = {}
    issues: list[ConfigIssue] = []
    for name, table in (data.get("queues") or {"default": {}}).items():
        queues[name], found = _queue(name, _inherit(table, data.get("defaults", {})), kafka, base_dir, data)
        issues += found
    scheds, found = _schedules(data.get("schedules") or {})
    settings = Settings(kafka=kafka, tiers_ms=tuple(parse_ms(t) for t in tiers), retry=retry,
                        queues=queues, schedules=scheds, source=source, raw=_freeze(data))
    return settings, issues + found


def _kafka(k: dict[str, Any]) -> KafkaSettings:
    brokers = k["brokers"] if isinstance(k["brokers"], str) else ",".join(k["brokers"])
    dead_letter = k["dead_letter_topic"] or f"{k['topic_prefix']}dead-letter"
    return KafkaSettings(brokers=brokers, group_id=k["group_id"], topic_prefix=k["topic_prefix"],
                         auto_offset_reset=k["auto_offset_reset"], enable_auto_commit=k["enable_auto_commit"],
                         compression=k["compression"], batch_size=k["batch_size"], timeout_ms=k["timeout_ms"],
                         debug=k["debug"], dead_letter_topic=dead_letter,
                         producer=dict(k.get("producer", {})), consumer=dict(k.get("consumer", {})))


def _policy(name: str, table: dict[str, Any]) -> RetryPolicy:
    """[retry.<name>] over the schema's defaults."""
    p = {**schema_defaults("retryPolicy"), **table}
    explicit = isinstance(p["backoff"], list)
    return RetryPolicy(
        name=name, max_attempts=p["max_attempts"], max_attempts_declared="max_attempts" in table,
        backoff="list" if explicit else p["backoff"],
        delays_ms=tuple(parse_ms(d) for d in p["backoff"]) if explicit else (),
        base_ms=parse_ms(p["base"]), max_ms=parse_ms(p["max"]), multiplier=float(p["multiplier"]),
        jitter=float(p["jitter"]), dead_letter_on=tuple(p["dead_letter_on"]), retry_on=tuple(p["retry_on"]))


def _inherit(table: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Schema defaults < [defaults] < the queue; handler and jobs are replaced as one key."""
    inherited = {**schema_defaults("queueKeys"), **defaults}
    if "handler" in table or "jobs" in table:
        inherited.pop("handler", None)
        inherited.pop("jobs", None)
    return {**inherited, **table}


def _queue(name: str, q: dict[str, Any], kafka: KafkaSettings, base_dir: Path,
           data: dict[str, Any]) -> tuple[QueueSettings, list[ConfigIssue]]:
    schema_path = base_dir / q["schema"] if "schema" in q else None
    schema, problem = load_payload_schema(schema_path, q.get("schema", ""))
    issues = [ConfigIssue(checks.origin(data, name, "schema"), problem)] if problem else []
    queue = QueueSettings(
        name=name, handler=q.get("handler"), jobs=tuple(q.get("jobs", ())), schema_path=schema_path,
        schema=_freeze(schema) if schema is not None else None, retry=q["retry"],
        partitions=q["partitions"], replication_factor=q["replication_factor"],
        concurrency=q["concurrency"], ordering=q["ordering"], key=q.get("key"), delivery=q["delivery"],
        timeout_ms=parse_ms(q["timeout"]), retention_ms=parse_ms(q["retention"]),
        validate_on_consume=q["validate_on_consume"],
        dead_letter_topic=q.get("dead_letter") or kafka.dead_letter_topic,
        blocking_retries=q["blocking_retries"])
    return queue, issues


def _schedules(tables: dict[str, Any]) -> tuple[dict[str, Schedule], list[ConfigIssue]]:
    """The `[schedules.<name>]` tables as Schedules; an unusable rule is an issue at its key."""
    built: dict[str, Schedule] = {}
    issues: list[ConfigIssue] = []
    for name, table in tables.items():
        try:
            built[name] = schedule_from_table(name, table)
        except RuleError as exc:
            issues.append(ConfigIssue(key_path(["schedules", name, exc.key]), str(exc)))
    return built, issues


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value
