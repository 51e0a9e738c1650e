"""The wall clock, as protojobs stamps jobs: UTC epoch milliseconds (the model never reads it)."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
