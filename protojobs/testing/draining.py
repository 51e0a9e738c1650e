"""A worker for integration tests: run it against the real broker until its queues are drained.

`DrainingWorker(app)` starts a `Worker` (with the App's decorated handlers) and the delay
router in daemon threads. `drain(timeout)` returns the worker's counters once every job is
finished: the queue topics and the delay tiers are fully committed by the worker and the
router, twice in a row with nothing finishing in between (a retry copy is acknowledged before
its source offset is committed, so a job in flight always shows as uncommitted somewhere).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from protojobs.config import Settings
from protojobs.engine.router import Router, RouterThread
from protojobs.engine.worker import Counters, Worker, WorkerOptions
from protojobs.kafka import admin
from protojobs.model import names

POLL_S = 0.2


class DrainingWorker:
    """A worker and the delay router in threads; `drain()` waits until no job is left."""

    def __init__(self, app: Any, queues: list[str] | None = None, **options: Any) -> None:
        settings: Settings = app if isinstance(app, Settings) else app.settings
        handlers = None if isinstance(app, Settings) else app.handlers()
        self.settings = settings
        self.worker = Worker(settings, WorkerOptions(queues=queues, **options), handlers=handlers)
        self.error: BaseException | None = None
        self.router = RouterThread(Router(settings)).start() if settings.tiers_ms else None
        self.thread = threading.Thread(target=self._run, name="protojobs-test-worker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported by drain()
            self.error = exc

    @property
    def counters(self) -> Counters:
        return self.worker.counters

    def pending(self) -> int:
        """Jobs not finished and committed: in the worker's queues and in the delay tiers."""
        client = admin.client(self.settings)
        prefix, group = self.settings.kafka.topic_prefix, self.settings.kafka.group_id
        total = sum(sum(admin.topic_depth(client, names.worker_group(group), names.queue_topic(prefix, q.name))
                        .values()) for q in self.worker.queues.values())
        for tier in self.settings.tiers_ms:
            total += sum(admin.topic_depth(client, names.router_group(group), names.delay_topic(prefix, tier))
                         .values())
        return total

    def drain(self, timeout: float = 60.0) -> Counters:
        """Wait until every job dispatched so far is finished; TimeoutError names what is left."""
        deadline = time.monotonic() + timeout
        quiet = 0
        left = -1
        while True:
            if self.error is not None:
                raise RuntimeError(f"the worker stopped: {self.error!r}") from self.error
            finished = self.worker.counters.finished
            left = self.pending()
            quiet = quiet + 1 if left == 0 and finished == self.worker.counters.finished else 0
            if quiet >= 2:
                return self.worker.counters
            if time.monotonic() > deadline:
                raise TimeoutError(f"{left} job(s) still pending after {timeout:g}s "
                                   f"(finished so far: {self.worker.counters})")
            time.sleep(POLL_S)

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(30)
        if self.router is not None:
            self.router.stop()
