"""Handlers and duck-typed Job classes that tests/test_config.py names in jobs.toml files.

Imported by protojobs.crosscheck as `demo_handlers:<name>` (the tests put tests/ on sys.path).
"""

from __future__ import annotations

from typing import Any

NOT_CALLABLE = 42


def ok(payload: dict[str, Any], context: Any = None) -> None:
    """A plain function handler."""


async def async_ok(payload: dict[str, Any]) -> None:
    """An async handler."""


class _ProtojobsBase:
    """Stands in for protojobs' own Job base: its attributes are defaults, never conflicts."""

    queue = "default"
    max_retries = 3

    def handle(self, data: dict[str, Any]) -> None:
        raise NotImplementedError


_ProtojobsBase.__module__ = "protojobs.api.job"


class SendEmail(_ProtojobsBase):
    """Declares the queue it belongs to and its attempts."""

    queue = "emails"
    max_retries = 5

    def handle(self, data: dict[str, Any]) -> None:
        pass


class SendDigest(_ProtojobsBase):
    """Declares fewer attempts than the default retry policy's 5."""

    queue = "emails"
    max_retries = 2

    def handle(self, data: dict[str, Any]) -> None:
        pass


class Resize(_ProtojobsBase):
    """Declares nothing itself: inherits protojobs' defaults."""

    def handle(self, data: dict[str, Any]) -> None:
        pass


class NotAJob:
    """A class without `handle`."""
