"""Secrets in a config tree: a value under a key containing password, passphrase, secret, token,
ssl.key, private.key, sasl.jaas.config or sasl.oauthbearer.config is never printed. `redact`
shows such values as "***"; `scrub` removes them from a message (an issue may quote a value that
came from a secret key); `Settings` and `KafkaSettings` redact them in their repr.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

SECRET_MARKERS = ("password", "passphrase", "secret", "token", "ssl.key", "private.key", "sasl.jaas.config",
                  "sasl.oauthbearer.config")
SHORT = 4  # a secret shorter than this is scrubbed only where it stands alone (not inside a word)


def is_secret_key(key: str) -> bool:
    """A key whose value is never printed (SECRET_MARKERS: password, secret, token, ...)."""
    lowered = key.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def secret_values(tree: Any, secret: bool = False) -> set[str]:
    """Every non-empty value at or under a secret key (true / false are not secrets)."""
    if isinstance(tree, Mapping):
        return set().union(*(secret_values(v, secret or is_secret_key(str(k))) for k, v in tree.items()))
    if isinstance(tree, list | tuple):
        return set().union(*(secret_values(v, secret) for v in tree))
    return {str(tree)} if secret and not isinstance(tree, bool) and str(tree) else set()


def redact(tree: Any) -> Any:
    """A plain copy of `tree` with every value under a secret key replaced by "***"."""
    if isinstance(tree, Mapping):
        return {k: "***" if is_secret_key(str(k)) and not isinstance(v, Mapping) else redact(v)
                for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [redact(v) for v in tree]
    return tree


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each secret value replaced by "***". A secret shorter than
    SHORT characters is replaced where it is not part of a longer word ("pw1" in "'pw1'" or
    "x-pw1", not in "pw12"), so that a short one does not garble every message it happens to
    be a piece of."""
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: one may contain another
        if len(secret) >= SHORT:
            text = text.replace(secret, "***")
        elif secret:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text
