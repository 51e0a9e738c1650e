"""The last 15 minutes of the overview's counters, sampled by a background thread, so the
charts (in/out rate, failure rate, lag) need no metrics store."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
WINDOW_S = 15 * 60


class History:
    """Samples `take()` (an `ops.browse.overview`) every `every` seconds, keeping WINDOW_S."""

    def __init__(self, take: Callable[[], dict[str, Any]], every: float = 5.0) -> None:
        self.take, self.every = take, every
        self.samples: deque[tuple[float, dict[str, Any]]] = deque(maxlen=int(WINDOW_S / every) + 1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="protojobs-dashboard-history", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def add(self, now: float, snap: dict[str, Any]) -> None:
        with self._lock:
            if not self.samples or now - self.samples[-1][0] >= self.every / 2:
                self.samples.append((now, snap))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.add(time.time(), self.take())
            except Exception:  # noqa: BLE001 - a broker hiccup leaves a gap in the charts
                log.warning("dashboard sample failed", exc_info=True)
            self._stop.wait(self.every)

    def series(self) -> dict[str, dict[str, list[float]]]:
        """queue -> {"in", "out", "lag"}; dead-letter topic -> {"fail"} (rates per second)."""
        with self._lock:
            samples = list(self.samples)
        out: dict[str, dict[str, list[float]]] = {}
        for (t0, a), (t1, b) in zip(samples, samples[1:], strict=False):
            dt = max(t1 - t0, 1e-3)
            for q, now in b["queues"].items():
                before = a["queues"].get(q, now)
                row = out.setdefault(q, {"in": [], "out": [], "lag": []})
                row["in"].append(max(0.0, (now["produced"] - before["produced"]) / dt))
                row["out"].append(max(0.0, (now["committed"] - before["committed"]) / dt))
                row["lag"].append(float(now["lag"]))
            for topic, now in b["dead_letter"].items():
                before = a["dead_letter"].get(topic, now)
                rate = max(0.0, (now["produced"] - before["produced"]) / dt)
                out.setdefault(topic, {"fail": []})["fail"].append(rate)
        return out


def growing(values: list[float], points: int = 6) -> bool:
    """True when the last `points` values rise at every step (lag growing for ~30 s)."""
    tail = values[-points:]
    return len(tail) == points and all(b > a for a, b in zip(tail, tail[1:], strict=False))
