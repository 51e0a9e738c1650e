"""Delivery reports nobody waits for synchronously: served on one background thread.

A synchronous `dispatch` serves its own delivery reports (it polls the producer until its
record is acknowledged). A future or an `await` has no caller polling, so `ReportPump` polls
the producer on one daemon thread per producer, only while such deliveries are outstanding
(`track` / `settle`), and sleeps otherwise. Delivery callbacks then run on that thread: code
resolving an asyncio future from one must hand it to its loop (`loop.call_soon_threadsafe`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import Producer

log = logging.getLogger(__name__)
POLL_S = 0.05


class ReportPump:
    """Polls `producer` while tracked deliveries are outstanding; `check()` runs after each poll
    (e.g. to fail every outstanding delivery when the client was refused)."""

    def __init__(self, producer: Producer, check: Callable[[], None] = lambda: None) -> None:
        self.producer = producer
        self.check = check
        self._outstanding = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def track(self) -> None:
        """One more delivery to serve (start the thread on first use)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the dispatcher is closed")
            self._outstanding += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="protojobs-delivery-reports", daemon=True)
                self._thread.start()
            self._cond.notify()

    def settle(self) -> None:
        """One tracked delivery was reported."""
        with self._cond:
            self._outstanding -= 1

    def _serve(self) -> None:
        while True:
            with self._cond:
                while self._outstanding <= 0 and not self._closed:
                    self._cond.wait()
                if self._closed and self._outstanding <= 0:
                    return
            try:
                self.producer.poll(POLL_S)
                self.check()
            except Exception:  # noqa: BLE001 - a report callback's bug must not stop the others
                log.exception("serving delivery reports failed")

    def close(self, timeout: float = 5) -> None:
        """Stop the thread once nothing is outstanding (or after `timeout`)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
