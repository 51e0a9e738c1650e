"""Worker presence: each `protojobs run` worker process publishes what it is doing to the
compacted `{prefix}workers` topic, so a dashboard sees every worker without access to its host.

- A record every `PRESENCE_S` seconds, keyed `host/pid/slot` (`model.names.worker_key`): host,
  pid, slot, queues with their concurrency, jobs in flight, jobs/s since the last record, RSS,
  start time, and what `/healthz` checks (wedged queues, dead router or scheduler threads).
- A tombstone when the worker stops cleanly; a process that died leaves its last record, which
  a reader shows as lost once it is old (`ops.browse.stale_after`).
- Produced through `kafka.outbox.produce` on its own producer and thread (never the loop's);
  a failed publish is logged and retried at the next beat: presence never fails a job.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Producer

from protojobs.config import Settings
from protojobs.kafka.clients import ErrorWatch, producer_config
from protojobs.kafka.outbox import produce
from protojobs.model import names
from protojobs.observe import health

log = logging.getLogger(__name__)
PRESENCE_S = 3.0


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Presence:
    """The publisher of one worker process (`start(worker, threads)`, `stop(clean)`)."""

    def __init__(self, settings: Settings, slot: int = 0, interval_s: float = PRESENCE_S) -> None:
        self.settings, self.slot, self.interval_s = settings, slot, interval_s
        self.host = socket.gethostname()
        self.key = names.worker_key(self.host, os.getpid(), slot).encode()
        self.topic = names.workers_topic(settings.kafka.topic_prefix)
        self.started = time.time()
        self.worker: Any = None
        self.threads: list[Any] = []
        self.producer: Producer | None = None
        self._stop = threading.Event()
        self._last: tuple[float, int] | None = None
        self.thread = threading.Thread(target=self._run, name="protojobs-presence", daemon=True)

    def start(self, worker: Any, threads: Iterable[Any] = ()) -> Presence:
        self.worker = worker
        self.threads = [t for t in threads if t is not None]
        self.producer = Producer(producer_config(self.settings.kafka, ErrorWatch()))
        self.thread.start()
        return self

    def record(self) -> dict[str, Any]:
        """This process now (only plain attributes of the worker: never a call into its consumer)."""
        worker, now = self.worker, time.time()
        finished = worker.counters.finished
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = (finished - self._last[1]) / (now - self._last[0])
        self._last = (now, finished)
        beat = health.heartbeat(worker, self.threads)
        return {"host": self.host, "pid": os.getpid(), "slot": self.slot, "ts": now, "started": self.started,
                "interval": self.interval_s, "queues": {q.name: q.concurrency for q in worker.queues.values()},
                "in_flight": sum(len(lane.running) for lane in worker.lanes.values()),
                "jobs_per_s": round(rate, 2), "done": worker.counters.done, "dead": worker.counters.dead,
                "rss": rss_bytes(), "assigned": beat["assigned"], "wedged": beat["wedged"],
                "dead_threads": beat["dead_threads"], "stopping": beat["stopping"]}

    def publish(self, value: bytes | None) -> None:
        assert self.producer is not None
        produce(self.producer, self.topic, value, self.key)
        self.producer.poll(0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish(json.dumps(self.record()).encode())
            except Exception:  # noqa: BLE001 - presence never stops a worker
                log.warning("worker presence not published", exc_info=True)
            self._stop.wait(self.interval_s)

    def stop(self, clean: bool = True) -> None:
        """Stop publishing; `clean`: write the tombstone (the worker left, it is not lost)."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        if self.producer is None:
            return
        try:
            if clean:
                self.publish(None)
            self.producer.flush(5)
        except Exception:  # noqa: BLE001
            log.warning("worker presence tombstone not published", exc_info=True)
