"""Secrets in a config tree: a value under a key containing password, secret, sasl.jaas.config,
ssl.key or token is never printed. `redact` shows such values as "***"; `scrub` removes them
from a message (an issue may quote a value that came from a secret key).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SECRET_MARKERS = ("password", "secret", "sasl.jaas.config", "ssl.key", "token")


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


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each secret value replaced by "***"."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
