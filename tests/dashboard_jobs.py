"""Handlers of tests/test_dashboard.py's workers (`protojobs run` subprocesses).

Each run appends a JSON line to $PROTOJOBS_TEST_RECORD (O_APPEND: lines from several processes
do not interleave)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _record(data: dict[str, Any], ctx: Any, ok: bool) -> None:
    with open(os.environ["PROTOJOBS_TEST_RECORD"], "a") as fh:
        fh.write(json.dumps({"n": data.get("n"), "id": ctx.id, "attempt": ctx.attempt, "ok": ok}) + "\n")


def work(data: dict[str, Any], ctx: Any) -> None:
    _record(data, ctx, True)


def fails_until_fixed(data: dict[str, Any], ctx: Any) -> None:
    """Fails (ValueError: dead-lettered at once) until the file `data["fixed"]` exists."""
    fixed = Path(data["fixed"]).exists()
    _record(data, ctx, fixed)
    if not fixed:
        raise ValueError(f"job {data.get('n')} cannot run before {data['fixed']} exists")
