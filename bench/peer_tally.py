"""What every peer's no-op job does: note first/last call and, every 1,000 calls and every
0.5 s after a call (a daemon thread: the last calls of a worker process are reported too, so
several processes add up to exactly N), write `report-<pid>.json` to $BENCH_REPORT_DIR (peer
workers are stopped by signal, so no exit hook would run). The bench times a peer from these
reports."""

from __future__ import annotations

import json
import os
import threading
import time

_lock = threading.Lock()
_state = {"first": 0, "last": 0, "count": 0}


_written = [0]  # the count last written
_flusher: list[threading.Thread] = []


def _write_locked() -> None:
    where = os.environ.get("BENCH_REPORT_DIR")
    if where:
        tmp = os.path.join(where, f".report-{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump({**_state, "lat": [], "rss_first": 0, "rss_exit": 0, "cpu_first": 0, "cpu_exit": 0}, fh)
        os.replace(tmp, os.path.join(where, f"report-{os.getpid()}.json"))  # never a torn report
        _written[0] = _state["count"]


def _flush_forever() -> None:
    while True:
        time.sleep(0.5)
        with _lock:
            if _state["count"] != _written[0]:
                _write_locked()


def note_call() -> None:
    now = time.time_ns()
    with _lock:
        if not _state["first"]:
            _state["first"] = now
        _state["last"] = now
        _state["count"] += 1
        if _state["count"] % 1000 == 0:
            _write_locked()
        if not _flusher or _flusher[0].ident is None or not _flusher[0].is_alive():  # also in a forked child
            _flusher[:] = [threading.Thread(target=_flush_forever, daemon=True)]
            _flusher[0].start()
