"""protojobs: a declarative, fault-tolerant job engine on Apache Kafka."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Job", "Jobs", "PermanentError", "RetryLater"]

if TYPE_CHECKING:
    from protojobs.api.jobs import Job, Jobs
    from protojobs.model.retry import PermanentError, RetryLater

_LAZY = {"Job": "protojobs.api.jobs", "Jobs": "protojobs.api.jobs",
         "PermanentError": "protojobs.model.retry", "RetryLater": "protojobs.model.retry"}


def __getattr__(name: str) -> Any:
    """`protojobs.Jobs` & co. import on first use: `import protojobs` stays light (no Kafka client)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'protojobs' has no attribute {name!r}")
