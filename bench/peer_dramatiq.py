"""Dramatiq peer (Redis broker): the same no-op job. `dramatiq peer_dramatiq` runs the worker;
the bench imports `noop` to enqueue. Dramatiq acks a message after the actor returns
(commit-after-success, at-least-once). The actor notes first/last call and writes
`report-<pid>.json` to $BENCH_REPORT_DIR every 1,000 calls (worker processes are forked and
stopped by signal, so no exit hook would run)."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from peer_tally import note_call

dramatiq.set_broker(RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:22190/0")))


@dramatiq.actor(max_retries=0)
def noop(data: Any) -> None:
    note_call()
