"""Scenario 1: dispatch throughput.

protojobs `Dispatcher.dispatch_many` (schema validation, envelope, headers, one delivery report
per job, waits for every ack) vs raw confluent-kafka `produce()` of the same record values with
the same producer settings (idempotent, acks=all, lz4, linger 5 ms), then `flush()`.
Each side gets its own topic of the same shape; the timers include waiting for every ack.
"""

from __future__ import annotations

import time
from typing import Any

from common import (
    Env,
    best,
    create_topic,
    fresh_prefix,
    make_settings,
    payloads,
    raw_producer,
    settings_tree,
)

from protojobs.engine.dispatch import Dispatcher
from protojobs.model import envelope


def protojobs_run(env: Env, items: list[dict[str, Any]]) -> dict[str, Any]:
    settings = make_settings(settings_tree(env.bootstrap, fresh_prefix("dispatch")))
    dispatcher = Dispatcher(settings)
    dispatcher.dispatch_many("jobs", items[:100])  # topics, connections, JIT warm-up
    started = time.perf_counter()
    result = dispatcher.dispatch_many("jobs", items)
    elapsed = time.perf_counter() - started
    dispatcher.close()
    assert result.ok, f"{len(result.errors)} jobs not dispatched: {next(iter(result.errors.values()))}"
    return {"jobs": len(items), "seconds": elapsed, "jobs_s": len(items) / elapsed}


def raw_run(env: Env, values: list[bytes]) -> dict[str, Any]:
    prefix = fresh_prefix("raw-dispatch")
    settings = make_settings(settings_tree(env.bootstrap, prefix))
    topic = f"{prefix}raw"
    create_topic(env.bootstrap, topic)
    producer = raw_producer(settings)
    for value in values[:100]:
        producer.produce(topic, value)
    producer.flush(30)
    produce, poll = producer.produce, producer.poll
    started = time.perf_counter()
    for i, value in enumerate(values):
        try:
            produce(topic, value)
        except BufferError:
            poll(0.05)
            produce(topic, value)
        if i % 10_000 == 0:
            poll(0)
    left = producer.flush(60)
    elapsed = time.perf_counter() - started
    assert left == 0, f"{left} records not delivered"
    return {"jobs": len(values), "seconds": elapsed, "jobs_s": len(values) / elapsed}


def run(env: Env) -> dict[str, Any]:
    n = 30_000 if env.quick else 100_000
    items = payloads(n)
    settings = make_settings(settings_tree(env.bootstrap, fresh_prefix("encode")))
    dispatcher = Dispatcher(settings, ensure_topics=False)
    values = [envelope.encode(dispatcher.build("jobs", item)) for item in items]
    record_bytes = sum(map(len, values)) / n
    pj, raw = [], []
    for _ in range(env.repeats):
        pj.append(protojobs_run(env, items))
        raw.append(raw_run(env, values))
    p, r = best(pj, "jobs_s"), best(raw, "jobs_s")
    for side in (p, r):
        side["mb_s"] = side["jobs_s"] * record_bytes / 1e6
    return {"jobs": n, "payload_bytes": round(sum(len(envelope.dumps(i)) for i in items[:1000]) / 1000),
            "record_bytes": round(record_bytes), "protojobs": p, "raw": r, "ratio": p["jobs_s"] / r["jobs_s"]}
