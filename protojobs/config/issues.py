"""Config problems: each a ConfigIssue located by its key path in TOML's dotted-key spelling
(`queues.emails.retry`, `delays.tiers[2]`, `kafka.producer."sasl.password"`), all of them
raised together in one ConfigError.

Schema errors (`schema_issues`) name the key itself: an unknown key at its own path with the
nearest allowed name, a missing key at the path it should have. `finish` makes the final list:
deduplicated, each naming the environment variable behind it, no secret value in any message.
"""

from __future__ import annotations

import datetime
import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import best_match

from protojobs.config.secrets import is_secret_key, scrub
from protojobs.config.toml import key_path

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


class ConfigError(ValueError):
    """Every problem found in a configuration; str() is one `path: message` line per issue."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean ...?)' for the nearest choice, else ' (allowed: ...)', else ''."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed: {', '.join(choices)})" if choices else ""


def finish(issues: Iterable[ConfigIssue], origins: Mapping[str, str], secrets: set[str]) -> list[ConfigIssue]:
    """Dedupe; name the env variable behind a path (`origins`: path -> variable); scrub secrets."""
    out: list[ConfigIssue] = []
    for issue in issues:
        message = scrub(issue.message, secrets)
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
                yield ConfigIssue(key_path([*path, key]), f"unknown key {key!r}{suggest(key, allowed)}")
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
