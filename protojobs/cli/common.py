"""What the command modules share: loading jobs.toml for a command, the time options."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from protojobs import config
from protojobs.api.app import load_app
from protojobs.cli import base
from protojobs.engine.dispatch import now_ms
from protojobs.model.durations import parse_ms


def load(path: str | Path | None, *, import_handlers: bool = True) -> config.Settings | None:
    """The settings (with `--app`: the App's, decorated jobs' queues included), or None after
    printing every issue on stderr (the command exits 1)."""
    target = base.app_target()
    try:
        if target is not None:
            return load_app(target).settings
        return config.load(path, import_handlers=import_handlers)
    except config.ConfigError as err:
        print(err if target is None else f"protojobs: --app {target}: {err}", file=sys.stderr)
        return None
    except (ImportError, AttributeError, TypeError, ValueError) as err:  # --app names no App
        print(f"protojobs: --app {target}: {err}", file=sys.stderr)
        return None


def parse_time_ms(text: str) -> int:
    """`--at`: ISO 8601 (with a zone, or UTC when none) or epoch seconds -> epoch ms."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--at {text!r}: give an ISO 8601 time (2027-01-01T09:00:00Z) or epoch seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_since(text: str, now: int | None = None) -> int:
    """`--since`: a duration (`1h`: within the last hour), ISO 8601 or epoch seconds -> epoch ms."""
    try:
        return (now_ms() if now is None else now) - parse_ms(text)
    except ValueError:
        pass
    try:
        return parse_time_ms(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: give a duration (30m, 1h, 7d: within the last ...), an ISO 8601 "
                         "time (2027-01-01T09:00:00Z) or epoch seconds") from None
