"""A decorated job's signature as its payload: JSON Schema, and the conversions both ways.

The payload of `@app.job def f(a: int, order: Order)` is the JSON object of its keyword
arguments, `{"a": 1, "order": {...}}`. From the annotations come
- the JSON Schema (`schema_for`): str, int, float, bool, None, list[X], dict[str, X], tuple,
  Optional[X] / X | None, unions, Literal, datetime / date / UUID (as text), dataclasses,
  TypedDict, and msgspec Structs and pydantic models when those libraries are installed (they
  describe themselves); an unannotated parameter accepts any JSON value;
- `to_json` at dispatch (dataclasses, Structs and models become plain JSON values) and
  `from_json` on the worker (they are rebuilt from it), so the handler gets what it declared.

A parameter annotated `protojobs.api.app.JobContext` (the engine's `Context`) is not part of
the payload: the worker passes the job's context there.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import sys
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
    bool: {"type": "boolean"}, type(None): {"type": "null"}, Any: {},
    list: {"type": "array"}, dict: {"type": "object"}, tuple: {"type": "array"},
}  # fmt: skip


def hints(func: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of `func` (string annotations included); {} when unresolvable."""
    try:
        return get_type_hints(func, include_extras=False)
    except Exception:  # noqa: BLE001 - a forward reference that does not resolve: no types
        return {}


def payload_params(func: Callable[..., Any], skip: Callable[[Any], bool]) -> list[inspect.Parameter]:
    """The parameters that come from the payload (not *args, not the context)."""
    types_ = hints(func)
    return [p for p in inspect.signature(func).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and not skip(types_.get(p.name))]


def schema_for(func: Callable[..., Any], skip: Callable[[Any], bool]) -> dict[str, Any]:
    """The payload's JSON Schema (draft 2020-12) from `func`'s signature."""
    types_ = hints(func)
    params = payload_params(func, skip)
    extra = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(func).parameters.values())
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {p.name: type_schema(types_.get(p.name, Any)) for p in params},
        "required": [p.name for p in params if p.default is p.empty],
        "additionalProperties": extra,
    }


_TEXT: dict[Any, tuple[dict[str, Any], Callable[[str], Any]]] = {  # sent as ISO 8601 / canonical text
    datetime.datetime: ({"type": "string", "format": "date-time"}, datetime.datetime.fromisoformat),
    datetime.date: ({"type": "string", "format": "date"}, datetime.date.fromisoformat),
    uuid.UUID: ({"type": "string", "format": "uuid"}, uuid.UUID),
}


def type_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of one annotation."""
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    if tp in _TEXT:
        return dict(_TEXT[tp][0])
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return {"anyOf": [type_schema(a) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, set, frozenset) or origin is typing.Sequence or _is_abc(origin, "Sequence"):
        return {"type": "array", **({"items": type_schema(args[0])} if args else {})}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": type_schema(args[0])}
        return {"type": "array", "prefixItems": [type_schema(a) for a in args], "items": False}
    if origin is dict or _is_abc(origin, "Mapping"):
        return {"type": "object", **({"additionalProperties": type_schema(args[1])} if args else {})}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _object_schema(tp, {f.name: f.default is dataclasses.MISSING and
                                   f.default_factory is dataclasses.MISSING for f in dataclasses.fields(tp)})
    if is_typeddict(tp):
        return _object_schema(tp, {name: name in tp.__required_keys__ for name in get_type_hints(tp)})
    described = _library_schema(tp)
    if described is not None:
        return described
    raise TypeError(f"no JSON Schema for the annotation {tp!r}: use JSON types, dataclasses, TypedDict, "
                    "msgspec Structs or pydantic models, or name a schema in jobs.toml")


def _is_abc(origin: Any, name: str) -> bool:
    import collections.abc

    return origin is getattr(collections.abc, name)


def _object_schema(tp: type, required: Mapping[str, bool]) -> dict[str, Any]:
    fields = get_type_hints(tp)
    return {"type": "object", "properties": {name: type_schema(fields[name]) for name in required},
            "required": [name for name, needed in required.items() if needed], "additionalProperties": False}


def _library_schema(tp: Any) -> dict[str, Any] | None:
    """msgspec Structs and pydantic models describe themselves (only when installed and used)."""
    msgspec = sys.modules.get("msgspec")
    if msgspec is not None and isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _inline(dict(msgspec.json.schema(tp)))
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        model: Any = tp
        return _inline(dict(model.model_json_schema()))
    return None


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A library's schema with its `$defs` resolved in place (it becomes one property of ours)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return dict(walk(schema))


# --- values ------------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """A dispatched argument as a JSON value (dataclasses, Structs and models become objects;
    datetimes, dates and UUIDs their ISO 8601 / canonical text)."""
    if isinstance(value, datetime.date | uuid.UUID):
        return value.isoformat() if isinstance(value, datetime.date) else str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    msgspec = sys.modules.get("msgspec")
    if msgspec is not None and isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json(v) for v in value]
    return value


def from_json(tp: Any, value: Any) -> Any:
    """A payload value as the annotation `tp` wants it (the inverse of `to_json`)."""
    if tp in _TEXT and isinstance(value, str):
        return _TEXT[tp][1](value)
    if value is None or tp is Any or tp in _SCALARS:
        return tuple(value) if tp is tuple and isinstance(value, list) else value
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        rich = [a for a in args if a is not type(None) and (get_origin(a) or a) not in _SCALARS]
        return from_json(rich[0], value) if len(rich) == 1 else value
    if origin in (list, set, frozenset, tuple) and args and isinstance(value, list):
        items = [from_json(args[0] if origin is not tuple or args[-1] is Ellipsis else args[i], v)
                 for i, v in enumerate(value)]
        return origin(items)
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return {k: from_json(args[1], v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type) and isinstance(value, dict):
        fields = get_type_hints(tp)
        return tp(**{k: from_json(fields.get(k, Any), v) for k, v in value.items()})
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        model: Any = tp
        return model.model_validate(value)
    msgspec = sys.modules.get("msgspec")
    if msgspec is not None and isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return msgspec.convert(value, tp)
    return value
