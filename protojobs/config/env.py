"""Environment overrides: `PROTOJOBS_<SECTION>__<KEY>[__<KEY>...]` variables merged into the tree.

Values are typed as dynaconf types env values (TOML: `8` -> 8, `true` -> True, `["1s", "5s"]` ->
an array, anything else stays a string). Names keep the case of the file: an override matches
an existing key case-insensitively, `_` standing for `.` or `-`; a key the file lacks is
lowercased (with `_` -> `.` inside kafka.producer / kafka.consumer). Only names with `__` after
the prefix are overrides: PROTOJOBS_ENV, PROTOJOBS_CONFIG and other PROTOJOBS_* are not keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynaconf.utils import object_merge
from dynaconf.utils.parse_conf import boolean_fix, parse_conf_data

from protojobs.config.issues import ConfigIssue
from protojobs.config.toml import key_path, plain

ENV_PREFIX = "PROTOJOBS_"


def apply_env(
    data: dict[str, Any], env: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str], list[ConfigIssue]]:
    """Merge PROTOJOBS_<SECTION>__<KEY> variables; return the tree, path -> variable, issues."""
    origins: dict[str, str] = {}
    issues: list[ConfigIssue] = []
    for var in sorted(env):
        if not var.upper().startswith(ENV_PREFIX) or "__" not in var[len(ENV_PREFIX):]:
            continue
        keys = _env_keys(data, var[len(ENV_PREFIX):])
        if keys is None:
            issues.append(ConfigIssue(var, "empty key between '__' separators"))
            continue
        try:
            value = plain(parse_conf_data(boolean_fix(env[var]), tomlfy=True, box_settings={}))
        except Exception as exc:  # dynaconf raises anything from its @token parsers
            issues.append(ConfigIssue(key_path(keys), (
                f"cannot use the value of {var} ({type(exc).__name__}): "
                "plain TOML values and @int, @float, @bool, @str, @json only")))
            continue
        for key in reversed(keys):
            value = {key: value}
        data = object_merge(data, value, list_merge="shallow")
        origins[key_path(keys)] = var
    return data, origins, issues


def _norm(name: str) -> str:
    return name.lower().replace(".", "_").replace("-", "_")


def _env_keys(data: Any, rest: str) -> list[str] | None:
    """Resolve `KAFKA__PRODUCER__SASL_PASSWORD` to the tree's keys; None if a key is empty.

    An existing key matches case-insensitively, with `_` standing for `.` or `-`, the longest
    first (so a queue named `a__b` or `x_` is reachable); a new key is the lowercased name part.
    """
    keys: list[str] = []
    node = data
    while True:
        here = _norm(rest)
        names = list(node) if isinstance(node, dict) else []
        known = [k for k in names if here == _norm(k) or here.startswith(_norm(k) + "__")]
        if known:
            key = max(known, key=lambda k: (len(k), k.lower() == rest[: len(k)].lower()))
        else:
            key = rest.split("__", 1)[0].lower()
            if keys[:1] == ["kafka"] and len(keys) == 2 and keys[1] in ("producer", "consumer"):
                key = rest.lower().replace("_", ".")
        if not key:
            return None
        keys.append(key)
        if len(key) >= len(rest):
            return keys
        rest = rest[len(key) + 2:]
        node = node.get(key) if isinstance(node, dict) else None
