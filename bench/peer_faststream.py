"""FastStream peer (faststream[confluent]): the same no-op job, consumed from a Kafka topic.

`faststream run peer_faststream:app` runs it. The subscriber uses FastStream's defaults for a
consumer group: librdkafka auto commit, i.e. offsets are committed on a timer whether or not
the handler finished (ack-first: a crash can lose in-flight messages). The handler notes
first/last call and writes `report-<pid>.json` to $BENCH_REPORT_DIR every 1,000 calls.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from faststream import FastStream
from faststream.confluent import KafkaBroker

broker = KafkaBroker(os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:22100"))
app = FastStream(broker)
_state = {"first": 0, "last": 0, "count": 0}


@broker.subscriber(os.environ.get("BENCH_TOPIC", "bench-faststream"), group_id=os.environ.get("BENCH_GROUP", "fs"),
                   auto_offset_reset="earliest")
async def noop(body: dict[str, Any]) -> None:
    now = time.time_ns()
    if not _state["first"]:
        _state["first"] = now
    _state["last"] = now
    _state["count"] += 1
    if _state["count"] % 1000 == 0:
        where = os.environ.get("BENCH_REPORT_DIR")
        if where:
            with open(os.path.join(where, f"report-{os.getpid()}.json"), "w") as fh:
                json.dump({**_state, "lat": [], "rss_first": 0, "rss_exit": 0, "cpu_first": 0, "cpu_exit": 0}, fh)


if __name__ == "__main__":  # `python peer_faststream.py` (the CLI needs the faststream[cli] extra)
    import asyncio

    asyncio.run(app.run())
