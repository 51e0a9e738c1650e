"""Find and report what is wrong with a jobs.toml tree, without ever printing a secret.

Every problem is a ConfigIssue located by its key path in TOML's dotted-key spelling
(`queues.emails.retry`, `delays.tiers[2]`, `kafka.producer."sasl.password"`).

Schema errors (`schema_issues`) name the key itself: an unknown key at its own path with the
nearest allowed name, a missing key at the path it should have. Cross-checks (`check`) run only
on a tree the schema accepted, on the built Settings:
- tiers: longer than 0, strictly ascending (so unique), each tier's topic name legal;
- retry policies: base <= max; a policy that a queue uses and that retries must not have a first
  delay more than 10x shorter than the smallest tier (it would wait for the whole tier). Longer
  delays are always expressible: the delay router chains tiers (DESIGN.md section 5);
- queues: the retry policy exists ("did you mean"), handler or jobs is set, key is set when
  ordering = "key", blocking_retries only with key / partition ordering, timeout and retention
  longer than 0, retention at least the largest tier, topic name legal and not reserved;
- payload schemas: the file exists, is JSON and is a valid draft 2020-12 schema;
- handlers (import_handlers=True): each handler / jobs entry imports and is callable (a Job class
  is duck-typed: a class with a `handle` method). A Job class whose own `queue` differs from the
  queue it is declared on, or whose `max_retries` (total attempts, as the seed counts them)
  differs from an explicit `max_attempts` of its policy, is a conflict; attributes inherited
  from protojobs' own base classes are defaults, not declarations, and never conflict.
A key a queue inherits from [defaults] is reported once, at `defaults.<key>`. `check_cluster`
(validate --cluster) compares replication factors with the live cluster.

Secrets: a value under a key containing password, secret, sasl.jaas.config, ssl.key or token is
shown as "***" by `redact`, and `finish` scrubs such values out of every issue message.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import importlib
import inspect
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import SchemaError, best_match

from protojobs.model import names
from protojobs.model.durations import format_ms

if TYPE_CHECKING:
    from protojobs.config import QueueSettings, Settings

log = logging.getLogger(__name__)
SECRET_MARKERS = ("password", "secret", "sasl.jaas.config", "ssl.key", "token")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "a boolean (true or false)", "array": "an array", "object": "a table",
               "null": "unset"}


@dataclass(frozen=True)
class ConfigIssue:
    """One problem, located by its key path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class PayloadError(ValueError):
    """A payload does not match its queue's schema; each error names its field (`data.to: ...`)."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


# ---------------------------------------------------------------- spelling and secrets


def key_path(parts: Iterable[str | int]) -> str:
    """["queues", "v1.mail", "jobs", 0] -> 'queues."v1.mail".jobs[0]'."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE_KEY.match(part) else quote(part)
            out += f".{name}" if out else name
    return out


def quote(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; DEL must be escaped too)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def to_toml(tree: Mapping[str, Any]) -> str:
    """Plain values as a TOML document that tomllib reads back equal (None values left out)."""
    lines: list[str] = []
    _emit(tree, [], lines)
    return "\n".join(lines).strip() + "\n"


def _emit(table: Mapping[str, Any], prefix: list[str], lines: list[str]) -> None:
    values = [(k, v) for k, v in table.items() if v is not None and not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    if prefix and (values or not tables):
        lines += ["", f"[{key_path(prefix)}]"]
    lines += [f"{key_path([k])} = {_toml_value(v)}" for k, v in values]
    for key, sub in tables:
        _emit(sub, [*prefix, key], lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else "inf" if v > 0 else "-inf"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return quote(v)
    if isinstance(v, Mapping):
        pairs = (f"{key_path([k])} = {_toml_value(x)}" for k, x in v.items() if x is not None)
        return "{" + ", ".join(pairs) + "}"
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def is_secret_key(key: str) -> bool:
    """A key whose value is never printed: password, secret, sasl.jaas.config, ssl.key*, token."""
    lowered = key.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def secret_values(tree: Any, secret: bool = False) -> set[str]:
    """Every value (of at least 4 characters) at or under a secret key."""
    if isinstance(tree, Mapping):
        return set().union(*(secret_values(v, secret or is_secret_key(str(k))) for k, v in tree.items()))
    if isinstance(tree, list | tuple):
        return set().union(*(secret_values(v, secret) for v in tree))
    return {str(tree)} if secret and len(str(tree)) >= 4 else set()


def redact(tree: Any) -> Any:
    """A plain copy of `tree` with every value under a secret key replaced by "***"."""
    if isinstance(tree, Mapping):
        return {k: "***" if is_secret_key(str(k)) and not isinstance(v, Mapping) else redact(v)
                for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [redact(v) for v in tree]
    return tree


def finish(issues: Iterable[ConfigIssue], origins: Mapping[str, str], secrets: set[str]) -> list[ConfigIssue]:
    """Dedupe; name the env variable behind a path (`origins`: path -> variable); scrub secrets."""
    out: list[ConfigIssue] = []
    for issue in issues:
        message = issue.message
        for secret in secrets:
            message = message.replace(secret, "***")
        names = [var for path, var in origins.items() if _related(path, issue.path)]
        if names:
            message += f" (set by {', '.join(names)})"
        if ConfigIssue(issue.path, message) not in out:
            out.append(ConfigIssue(issue.path, message))
    return out


def _related(a: str, b: str) -> bool:
    """One path is the other or contains it."""
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    return longer == shorter or (longer.startswith(shorter) and longer[len(shorter)] in ".[")


def _suggest(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed: {', '.join(choices)})" if choices else ""


# ---------------------------------------------------------------- schema errors


def schema_issues(data: Any, validator: Draft202012Validator) -> list[ConfigIssue]:
    """Every schema error as an issue at the key it concerns, in key-path order."""
    issues: list[ConfigIssue] = []
    for error in validator.iter_errors(data):
        issues.extend(_translate(error))
    return sorted(issues, key=lambda i: i.path)


def _translate(error: ValidationError) -> Iterator[ConfigIssue]:
    path: list[str | int] = list(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        for key in error.instance:
            if key not in allowed:
                yield ConfigIssue(key_path([*path, key]), f"unknown key {key!r}{_suggest(key, allowed)}")
        return
    if kind == "required":
        for key in error.validator_value:
            if key not in error.instance:
                yield ConfigIssue(key_path([*path, key]), "required key is missing")
        return
    if "propertyNames" in error.relative_schema_path:
        path.append(str(error.instance))
    template = error.schema.get("x-messages", {}).get(kind) if isinstance(error.schema, dict) else None
    if kind in ("anyOf", "oneOf") and error.context:
        deeper = [e for e in error.context if e.relative_path]
        if deeper or template is None:
            typed = [e for e in error.context if e.validator != "type"]  # branches of the right type
            yield from _translate(best_match(deeper or typed or error.context))
            return
    secret = any(isinstance(p, str) and is_secret_key(p) for p in path)
    value = "***" if secret else _short(error.instance)
    if template:
        yield ConfigIssue(key_path(path), template.format(value=value))
    elif kind == "type":
        yield ConfigIssue(key_path(path), _type_message(error.validator_value, error.instance, value))
    else:
        message = error.message.replace(repr(error.instance), value) if secret else error.message
        yield ConfigIssue(key_path(path), message)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_message(expected: str | list[str], instance: Any, value: str) -> str:
    words = [_TYPE_WORDS.get(t, t) for t in ([expected] if isinstance(expected, str) else expected)]
    wanted = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    got = next((word for kind, word in ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                                        (str, "a string"), (list, "an array"), (dict, "a table"),
                                        (datetime.date, "a date"), (datetime.time, "a time"))
                if isinstance(instance, kind)), "unset")
    return f"must be {wanted}, not {got}" + ("" if got in ("a table", "an array", "unset") else f" ({value})")


# ---------------------------------------------------------------- payload schemas


def load_payload_schema(path: Path | None, shown: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the schema, None) or (None, why not); `shown` is the path as jobs.toml writes it."""
    if path is None:
        return None, None
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{shown}: file not found (looked at {path})"
    except json.JSONDecodeError as exc:
        return None, f"{shown}: not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{shown}: cannot read ({exc})"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = key_path(exc.absolute_path) or "the top"
        return None, f"{shown}: not a valid JSON Schema: {exc.message} (at {where})"
    if not isinstance(schema, dict):
        return None, f"{shown}: a payload schema must be a JSON object"
    return schema, None


def _fast_validator(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    """jsonschema-rs's compiled `is_valid` for the schema, or None when it is not installed or
    cannot compile it. It only answers "valid?": the jsonschema (Python) validator stays the
    authority whenever it says no, so error messages, and the verdict on anything the two
    libraries judge differently, are jsonschema's."""
    try:
        import jsonschema_rs
    except ImportError:
        return None
    try:
        return jsonschema_rs.validator_for(schema, validate_formats=True).is_valid
    except Exception:  # noqa: BLE001 - a schema it cannot compile: use jsonschema alone
        return None


def compile_payload_schema(schema: Mapping[str, Any] | None) -> Callable[[Any], None]:
    """A payload check raising PayloadError naming every failing field; formats are checked."""
    if schema is None:
        return lambda payload: None
    plain = json.loads(json.dumps(schema, default=lambda v: dict(v) if isinstance(v, Mapping) else list(v)))
    validator = Draft202012Validator(plain, format_checker=Draft202012Validator.FORMAT_CHECKER)
    fast = _fast_validator(plain)

    def validate(payload: Any) -> None:
        if fast is not None and fast(payload):
            return  # the hot path: ~1 us instead of ~300 us; failures are explained below
        errors = []
        for error in sorted(validator.iter_errors(payload), key=lambda e: [str(p) for p in e.absolute_path]):
            path = ["data", *error.absolute_path]
            if error.validator == "required":
                missing = [k for k in error.validator_value if k not in error.instance]
                errors += [f"{key_path([*path, k])}: required field is missing" for k in missing]
            else:
                errors.append(f"{key_path(path)}: {error.message}")
        if errors:
            raise PayloadError(errors)

    return validate


# ---------------------------------------------------------------- cross-checks


def origin(data: Mapping[str, Any], queue: str, key: str) -> str:
    """Where a queue's key comes from: its own table, else [defaults], else its own path."""
    if key not in data.get("queues", {}).get(queue, {}) and key in data.get("defaults", {}):
        return key_path(["defaults", key])
    return key_path(["queues", queue, key])


def check(settings: Settings, data: Mapping[str, Any], *, import_handlers: bool) -> list[ConfigIssue]:
    """Every cross-check, on a tree the schema accepted and the Settings built from it."""
    issues = _check_tiers(settings, data) + _check_policies(settings, data)
    for queue in settings.queues.values():
        issues += _check_queue(queue, settings, data)
        if import_handlers:
            issues += _check_handlers(queue, settings, data)
    from protojobs.model import schedules  # [schedules.*]: queue, rule (cron, tz, every, at), data

    issues += schedules.check(settings, data)
    return issues


def _check_tiers(settings: Settings, data: Mapping[str, Any]) -> list[ConfigIssue]:
    written = data.get("delays", {}).get("tiers") or [format_ms(t) for t in settings.tiers_ms]
    prefix = settings.kafka.topic_prefix
    issues = []
    for i, ms in enumerate(settings.tiers_ms):
        path = f"delays.tiers[{i}]"
        if ms <= 0:
            issues.append(ConfigIssue(path, "a delay tier must be longer than 0"))
        elif i and ms <= settings.tiers_ms[i - 1]:
            issues.append(ConfigIssue(path, f"{written[i]!r} is not longer than the tier before it "
                                            f"({written[i - 1]!r}): tiers must be unique and ascending"))
        else:
            issues += _topic_issue(path, functools.partial(names.delay_topic, prefix, ms))
    if not data.get("kafka", {}).get("dead_letter_topic"):
        issues += _topic_issue("kafka.topic_prefix", lambda: names.dead_letter_topic(prefix))
    return issues


def _topic_issue(path: str, make: Callable[[], str]) -> list[ConfigIssue]:
    try:
        make()
    except ValueError as exc:
        return [ConfigIssue(path, str(exc))]
    return []


def _check_policies(settings: Settings, data: Mapping[str, Any]) -> list[ConfigIssue]:
    issues = []
    used = {q.retry for q in settings.queues.values() if not q.blocking_retries}
    smallest = min(settings.tiers_ms, default=0)
    for p in settings.retry.values():
        where = key_path(["retry", p.name])
        if p.backoff == "exponential" and p.base_ms > p.max_ms:
            issues.append(ConfigIssue(f"{where}.base", f"{format_ms(p.base_ms)} is longer than max "
                                                       f"({format_ms(p.max_ms)})"))
        first = min(p.delays_ms) if p.delays_ms else p.base_ms
        if p.name in used and p.max_attempts > 1 and smallest > 10 * first:
            builtin = "" if p.name in data.get("retry", {}) else " (the built-in default policy)"
            issues.append(ConfigIssue(f"{where}.{'backoff' if p.delays_ms else 'base'}", (
                f"a {format_ms(first)} retry delay is far shorter than the smallest delay tier "
                f"({format_ms(smallest)}, delays.tiers[0]), so retries would wait up to "
                f"{format_ms(smallest)}: add a shorter tier or lengthen the delay{builtin}")))
    return issues


def _check_queue(q: QueueSettings, settings: Settings, data: Mapping[str, Any]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    at = key_path(["queues", q.name])
    if q.retry not in settings.retry:
        issues.append(ConfigIssue(origin(data, q.name, "retry"),
                                  f"no retry policy named {q.retry!r}{_suggest(q.retry, settings.retry)}"))
    if q.handler is None and not q.jobs and data.get("queues"):
        issues.append(ConfigIssue(f"{at}.handler", (
            "required key is missing: set handler (module:callable) "
            "or jobs (an array of module:Class), here or in [defaults]")))
    if q.ordering == "key" and q.key is None:
        issues.append(ConfigIssue(origin(data, q.name, "key"), 'required when ordering = "key"'))
    if q.blocking_retries and q.ordering == "none":
        issues.append(ConfigIssue(origin(data, q.name, "blocking_retries"),
                                  'only allowed when ordering is "key" or "partition" (here "none")'))
    for key, ms in (("timeout", q.timeout_ms), ("retention", q.retention_ms)):
        if ms <= 0:
            issues.append(ConfigIssue(origin(data, q.name, key), "must be longer than 0"))
    largest = max(settings.tiers_ms, default=0)
    if 0 < q.retention_ms < largest:
        issues.append(ConfigIssue(origin(data, q.name, "retention"), (
            f"{format_ms(q.retention_ms)} is shorter than the largest delay tier ({format_ms(largest)}): "
            "a job may wait that long, so the topic must keep records at least as long")))
    issues += _topic_issue(at, lambda: names.queue_topic(settings.kafka.topic_prefix, q.name))
    return issues


# ---------------------------------------------------------------- handlers


def import_target(target: str) -> tuple[Any, str | None]:
    """Import `module:attr.sub`; (object, None) or (None, why it failed)."""
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:
        return None, f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return None, f"cannot import {target!r}: module {module_name!r} has no attribute {attr!r}"
    return obj, None


def is_job_class(obj: Any) -> bool:
    """Duck-typed Job class: a class with a callable `handle`."""
    return inspect.isclass(obj) and callable(getattr(obj, "handle", None))


def declared_attr(cls: type, name: str) -> Any:
    """`name` as the class or a user base declares it; None when only protojobs' bases do."""
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] not in ("protojobs", "builtins") and name in vars(klass):
            return vars(klass)[name]
    return None


def _check_handlers(q: QueueSettings, settings: Settings, data: Mapping[str, Any]) -> list[ConfigIssue]:
    if q.handler:
        entries = [(origin(data, q.name, "handler"), q.handler)]
    else:
        entries = [(f"{origin(data, q.name, 'jobs')}[{i}]", job) for i, job in enumerate(q.jobs)]
    issues = []
    for path, target in entries:
        obj, problem = import_target(target)
        if problem is None and q.jobs and not is_job_class(obj):
            problem = f"{target} is not a Job class (a class with a handle method)"
        elif problem is None and not callable(obj):
            problem = f"{target} is not callable"
        if problem:
            issues.append(ConfigIssue(path, problem))
        elif is_job_class(obj):
            conflict_path = key_path(["queues", q.name, "handler"]) if q.handler else path
            issues += [ConfigIssue(conflict_path, c) for c in _conflicts(obj, q, settings, data)]
    return issues


def _conflicts(cls: type, q: QueueSettings, settings: Settings, data: Mapping[str, Any]) -> list[str]:
    found = []
    queue = declared_attr(cls, "queue")
    if queue is not None and queue != q.name:
        found.append(f"conflict: {cls.__name__}.queue = {queue!r} but jobs.toml declares it on queue "
                     f"{q.name!r} (jobs.toml wins; remove one)")
    retries = declared_attr(cls, "max_retries")
    policy = settings.retry.get(q.retry)
    explicit = "max_attempts" in data.get("retry", {}).get(q.retry, {})
    if policy and explicit and retries is not None and retries != policy.max_attempts:
        found.append(f"conflict: {cls.__name__}.max_retries = {retries!r} but "
                     f"{key_path(['retry', q.retry, 'max_attempts'])} = {policy.max_attempts} "
                     "(jobs.toml wins; remove one)")
    return found
