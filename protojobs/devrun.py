"""A minimal consume-and-print loop over the queues of jobs.toml (replaced by the worker engine)."""

from __future__ import annotations

import signal
import tomllib
from typing import Any

from confluent_kafka import Consumer


def run(config: str, queues: list[str] | None = None, max_jobs: int = 0) -> int:
    with open(config, "rb") as fh:
        raw: dict[str, Any] = tomllib.load(fh)
    kafka = raw.get("kafka", {})
    prefix = kafka.get("topic_prefix", "proto-jobs-")
    names = queues or sorted(raw.get("queues", {})) or ["default"]
    consumer = Consumer({"bootstrap.servers": kafka.get("brokers", "localhost:9092"),
                         "group.id": kafka.get("group_id", "proto-jobs-consumer"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([prefix + q for q in names])
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    print(f"protojobs: consuming {', '.join(prefix + q for q in names)}", flush=True)
    done = 0
    try:
        while not stopping and (max_jobs == 0 or done < max_jobs):
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            print(f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {msg.value()!r}", flush=True)
            consumer.commit(message=msg, asynchronous=False)
            done += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
