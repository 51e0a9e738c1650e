"""Celery peer (kombu's confluentkafka transport) on the same Kafka broker: the same no-op job.

The worker: `celery -A peer_celery worker -P threads -c 8 -Q <topic>`; the bench enqueues with
`noop.apply_async(queue=<topic>)`. Celery's default (`acks_late=False`) acknowledges a task when
the worker receives it, before it runs (ack-first). The task notes first/last call and writes
`report-<pid>.json` to $BENCH_REPORT_DIR every 1,000 calls.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from celery import Celery

app = Celery("peer_celery", broker=f"confluentkafka://{os.environ.get('BENCH_BOOTSTRAP', '127.0.0.1:22100')}")
app.conf.update(broker_transport_options={"wait_time_seconds": 1}, worker_hijack_root_logger=False,
                task_ignore_result=True)
_lock = threading.Lock()
_state = {"first": 0, "last": 0, "count": 0}


@app.task(name="noop")
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
