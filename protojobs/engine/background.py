"""A long-running loop (the delay router, the scheduler) in a daemon thread beside the worker."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Loop(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


class Background:
    """Runs `loop.run()` in a daemon thread; an exception that ends it is logged and kept in
    `error`, and `on_exit` is called (e.g. to stop the worker, so the whole process restarts
    instead of going on without its router). `failure()` says why it is dead, for /healthz."""

    def __init__(self, loop: Loop, name: str, on_exit: Callable[[], None] | None = None) -> None:
        self.loop = loop
        self.name = name
        self.on_exit = on_exit
        self.error: BaseException | None = None
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name=f"protojobs-{name}", daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run()
        except BaseException as exc:  # noqa: BLE001 - reported through `error`
            self.error = exc
            log.exception("the %s stopped", self.name)
            if self.on_exit is not None:
                self.on_exit()

    def start(self) -> Background:
        self.thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        self.stopped = True
        self.loop.stop()
        self.thread.join(timeout)

    def failure(self) -> str | None:
        """None while it runs (or once asked to stop); else why it ended."""
        if self.error is not None:
            return f"{type(self.error).__name__}: {self.error}"
        if self.thread.ident is not None and not self.thread.is_alive() and not self.stopped:
            return "it ended without being asked to stop"
        return None
