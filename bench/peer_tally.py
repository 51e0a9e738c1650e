"""What every peer's no-op job does: note first/last call and, every 1,000 calls, write
`report-<pid>.json` to $BENCH_REPORT_DIR (peer workers are stopped by signal, so no exit hook
would run). The bench times a peer from these reports."""

from __future__ import annotations

import json
import os
import threading
import time

_lock = threading.Lock()
_state = {"first": 0, "last": 0, "count": 0}


def note_call() -> None:
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
