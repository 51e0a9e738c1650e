"""Eager mode for unit tests: `App(..., eager=True)` (re-exported here), or `eagerly(app)` for a
block. The App's jobs then run inline, without a broker (`protojobs.api.eager` says what is the
same as on a worker and what is not)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from protojobs.api.app import App
from protojobs.api.eager import EagerResult

__all__ = ["App", "EagerResult", "eagerly"]


@contextmanager
def eagerly(app: App) -> Iterator[list[EagerResult]]:
    """Switch `app` to eager mode for the block; yield the list of this block's EagerResults
    (also `app.eager_results`). The previous mode is restored afterwards."""
    before = app.eager
    app.eager_results.clear()
    app.eager = True
    try:
        yield app.eager_results
    finally:
        app.eager = before
