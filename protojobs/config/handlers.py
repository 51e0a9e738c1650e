"""Handlers named in jobs.toml (`module:callable`, `module:Class`): imported by the engine when
a worker starts and by the config checks (`import_handlers=True`) when the config loads.

A Job class is duck-typed: a class with a callable `handle`. Attributes a Job class inherits
from protojobs' own base classes are defaults, not declarations (`declared_attr`).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any


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
