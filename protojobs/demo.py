"""Handlers of the demo queues in the example jobs.toml (what `make run` runs)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def send_email(data: dict[str, Any]) -> str:
    """Pretend to send an email; print it so a newcomer sees the job run."""
    print(f"[emails] sending {data.get('subject', '(no subject)')!r} to {data['to']}", flush=True)
    return "sent"


async def resize_image(data: dict[str, Any]) -> None:
    """An async handler: runs on the worker's event loop."""
    print(f"[images] resizing {data['url']} to width {data.get('width', 800)}", flush=True)


def build_report(data: dict[str, Any]) -> None:
    """Fails for report ids starting with 'bad' (so the dead-letter queue has something to show)."""
    if str(data["report_id"]).startswith("bad"):
        raise ValueError(f"report {data['report_id']} cannot be built")
    print(f"[reports] built report {data['report_id']}", flush=True)
