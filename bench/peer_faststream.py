"""FastStream peer (faststream[confluent]): the same no-op job, consumed from a Kafka topic.

`faststream run peer_faststream:app` runs it. The subscriber uses FastStream's defaults for a
consumer group: librdkafka auto commit, i.e. offsets are committed on a timer whether or not
the handler finished (ack-first: a crash can lose in-flight messages). With
BENCH_FS_MODE=batch it runs at its best with the same guarantee as protojobs: a batch
subscriber (`batch=True`, up to 1,000 records per call) with `ack_policy=AckPolicy.ACK`, which
commits after the handler returned (commit after processing). The handler notes first/last
call and writes `report-<pid>.json` to $BENCH_REPORT_DIR every 1,000 calls.
"""

from __future__ import annotations

import os
from typing import Any

from faststream import AckPolicy, FastStream
from faststream.confluent import KafkaBroker
from peer_tally import note_call

broker = KafkaBroker(os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:22100"))
app = FastStream(broker)


TOPIC = os.environ.get("BENCH_TOPIC", "bench-faststream")
GROUP = os.environ.get("BENCH_GROUP", "fs")

if os.environ.get("BENCH_FS_MODE") == "batch":
    @broker.subscriber(TOPIC, group_id=GROUP, auto_offset_reset="earliest", batch=True, max_records=1000,
                       ack_policy=AckPolicy.ACK)
    async def noop_batch(bodies: list[dict[str, Any]]) -> None:
        for _ in bodies:
            note_call()
else:
    @broker.subscriber(TOPIC, group_id=GROUP, auto_offset_reset="earliest")
    async def noop(body: dict[str, Any]) -> None:
        note_call()


if __name__ == "__main__":  # `python peer_faststream.py` (the CLI needs the faststream[cli] extra)
    import asyncio

    asyncio.run(app.run())
