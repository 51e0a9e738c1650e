"""Dramatiq peer (Redis broker): the same no-op job. `dramatiq peer_dramatiq` runs the worker;
the bench imports `noop` to enqueue. Dramatiq acks a message after the actor returns
(commit-after-success, at-least-once). The actor notes first/last call and writes
`report-<pid>.json` to $BENCH_REPORT_DIR every 1,000 calls (worker processes are forked and
stopped by signal, so no exit hook would run)."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:22190/0")))
_lock = threading.Lock()
_state = {"first": 0, "last": 0, "count": 0}


@dramatiq.actor(max_retries=0)
def noop(data: Any) -> None:
    now = time.time_ns()
    with _lock:
        if not _state["first"]:
            _state["first"] = now
        _state["last"] = now
        _state["count"] += 1
        if _state["count"] % 1000 == 0:
            where = os.environ.get("BENCH_REPORT_DIR")
            if where:
                with open(os.path.join(where, f"report-{os.getpid()}.json"), "w") as fh:
                    json.dump({**_state, "lat": [], "rss_first": 0, "rss_exit": 0, "cpu_first": 0, "cpu_exit": 0}, fh)
