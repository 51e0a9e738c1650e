"""Celery peer (kombu's confluentkafka transport) on the same Kafka broker: the same no-op job.

The worker: `celery -A peer_celery worker -P threads -c 8 -Q <topic>`; the bench enqueues with
`noop.apply_async(queue=<topic>)`. Celery's default (`acks_late=False`) acknowledges a task when
the worker receives it, before it runs (ack-first). The task notes first/last call and writes
`report-<pid>.json` to $BENCH_REPORT_DIR every 1,000 calls.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from peer_tally import note_call

app = Celery("peer_celery", broker=f"confluentkafka://{os.environ.get('BENCH_BOOTSTRAP', '127.0.0.1:22100')}")
app.conf.update(broker_transport_options={"wait_time_seconds": 1}, worker_hijack_root_logger=False,
                task_ignore_result=True)


@app.task(name="noop")
def noop(data: Any) -> None:
    note_call()
