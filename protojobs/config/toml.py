"""TOML spelling: key paths (`queues."v1.mail".jobs[0]`), basic strings and whole documents.

`key_path` is how every ConfigIssue names the key it concerns; `to_toml` writes plain values
(the effective config, a test's tree) as a document that tomllib reads back equal.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # fullmatch: "$" would also match before a final "\n"


def key_path(parts: Iterable[str | int]) -> str:
    """["queues", "v1.mail", "jobs", 0] -> 'queues."v1.mail".jobs[0]'."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else quote(part)
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


def plain(value: Any) -> Any:
    """A deep copy of plain TOML values (tables, arrays, scalars, dates); TypeError otherwise."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool | datetime.date | datetime.time):
        return value
    raise TypeError(f"unsupported value {type(value).__name__}")
