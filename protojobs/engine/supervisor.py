"""Worker processes of one `protojobs run --processes N`, supervised.

N children are started with the spawn method (librdkafka threads and fork do not mix); a child
that dies unexpectedly, or exits non-zero on its own (4: a queue wedged by hung handlers, see
`cli.run`), is reported and restarted in its slot; SIGTERM/SIGINT is passed on to every child
(a second one kills them) and `supervise` returns when they have all exited.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def supervise(target: Callable[..., Any], args: tuple[Any, ...], processes: int,
              on_restart: Callable[[int, int | None, int | None], None] = lambda slot, pid, code: None) -> int:
    """Run `target(*args, slot)` in `processes` spawned children until they all exit; 0 when
    they exited cleanly or were told to stop, else 1. `on_restart(slot, old_pid, exitcode)` is
    called before a child that died on its own is started again."""
    ctx = multiprocessing.get_context("spawn")
    signals: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        signals.append(signum)
        for child in children:
            if child.is_alive() and child.pid:
                child.terminate() if len(signals) == 1 else child.kill()

    def start(slot: int) -> Any:
        child = ctx.Process(target=target, args=(*args, slot), name=f"protojobs-worker-{slot}")
        child.start()
        return child

    children = [start(i) for i in range(processes)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while any(c.is_alive() for c in children):
        time.sleep(0.2)
        for slot, child in enumerate(children):
            if not child.is_alive() and not signals and child.exitcode not in (0, None):
                on_restart(slot, child.pid, child.exitcode)
                children[slot] = start(slot)
    return 0 if all(c.exitcode == 0 for c in children) or signals else 1
