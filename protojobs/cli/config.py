"""`protojobs validate` and `protojobs config show`."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

from protojobs.config import ConfigError, load, redacted, to_toml
from protojobs.ops.validate import validate


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s" if not word.endswith("y") else f"{n} {word[:-1]}ies"


def validate_command(config: str | None, cluster: bool = False, env: Mapping[str, str] | None = None,
                     *, cluster_timeout: float = 5.0, import_handlers: bool = True) -> int:
    """`protojobs validate`: 0 and a one-line summary, or 1 and every `path: message` on stderr."""
    try:
        summary = validate(config, cluster, env, cluster_timeout=cluster_timeout, import_handlers=import_handlers)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    print(f"{summary.path}: valid ({_plural(summary.queues, 'queue')}, "
          f"{_plural(summary.tiers, 'delay tier')}, {_plural(summary.policies, 'retry policy')})")
    return 0


def show_command(config: str | None, env: Mapping[str, str] | None = None, *, fmt: str = "toml") -> int:
    """`protojobs config show`: the effective config (overrides applied, secrets redacted) on stdout."""
    try:
        settings = load(config, env, import_handlers=False)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    tree = redacted(settings)
    print(json.dumps(tree, indent=2) if fmt == "json" else to_toml(tree), end="\n" if fmt == "json" else "")
    return 0
