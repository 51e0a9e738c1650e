"""protojobs: a declarative, fault-tolerant job engine on Apache Kafka."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["App", "Dispatcher", "Hooks", "Job", "Jobs", "PermanentError", "RetryLater"]

if TYPE_CHECKING:
    from protojobs.api.app import App
    from protojobs.api.facade import Jobs
    from protojobs.api.job import Job
    from protojobs.engine.dispatch import Dispatcher
    from protojobs.engine.hooks import Hooks
    from protojobs.model.retry import PermanentError, RetryLater

_LAZY = {"App": "protojobs.api.app", "Job": "protojobs.api.job", "Jobs": "protojobs.api.facade",
         "Hooks": "protojobs.engine.hooks",
         "Dispatcher": "protojobs.engine.dispatch",
         "PermanentError": "protojobs.model.retry", "RetryLater": "protojobs.model.retry"}


def __getattr__(name: str) -> Any:
    """`protojobs.Jobs` & co. import on first use: `import protojobs` stays light (no Kafka client)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'protojobs' has no attribute {name!r}")
