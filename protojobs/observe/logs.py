"""Logging for `protojobs run --log-format text|json`: one handler on the root logger.

Each module logs through its own logger (`logging.getLogger(__name__)`: protojobs.worker,
protojobs.router, ...; librdkafka's lines come through `protojobs.kafka`). Job-related lines
carry the job context the worker passes in `extra=`: queue, topic, partition, offset, job_id,
attempt.

- `text`: `2025-01-01T12:00:00.123Z WARNING protojobs.worker: job failed: ... [queue=emails
  partition=2 offset=41 job_id=01J... attempt=1]`
- `json`: one object per line: `{"ts": "...Z", "level": "WARNING", "logger": "protojobs.worker",
  "message": "job failed: ...", "queue": "emails", "topic": "...", "partition": 2, "offset": 41,
  "job_id": "01J...", "attempt": 1}` (plus `exc` with the traceback when there is one).

Spawned worker processes read the format from `$PROTOJOBS_LOG_FORMAT` (`configure` sets it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

ENV_FORMAT = "PROTOJOBS_LOG_FORMAT"
ENV_LEVEL = "PROTOJOBS_LOG_LEVEL"
FORMATS = ("text", "json")
JOB_FIELDS = ("queue", "topic", "partition", "offset", "job_id", "attempt")


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        for name in JOB_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = [f"{n}={record.__dict__[n]}" for n in JOB_FIELDS if record.__dict__.get(n) is not None]
        if fields:
            line += f" [{' '.join(fields)}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(fmt: str = "text", level: str | int | None = None, stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records to `stream` (stderr) in `fmt`; replaces an earlier call's handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: choose one of {', '.join(FORMATS)}")
    os.environ[ENV_FORMAT] = fmt
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_protojobs", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._protojobs = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level or os.environ.get(ENV_LEVEL, "INFO"))
    return handler


def configure_from_env() -> None:
    """In a spawned worker process: the format its supervisor was given (if any)."""
    fmt = os.environ.get(ENV_FORMAT)
    if fmt in FORMATS:
        configure(fmt)
