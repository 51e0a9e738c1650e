"""Scenario 1: dispatch throughput.

protojobs `Dispatcher.dispatch_many` (schema validation, envelope, headers, delivery reports,
waits for every ack) vs raw confluent-kafka `produce()` of the same records (value and headers,
byte for byte) with the same producer settings (idempotent, acks=all, lz4, linger 1 ms), then
`flush()`.
Each side gets its own topic of the same shape; the timers include waiting for every ack.

The concurrent scenario (a web app's pattern): 100 threads share one Dispatcher and each calls
`dispatch()` (one job, waits for its ack) in a loop for a few seconds: acknowledged jobs/s and
the ack time of each call (p50 / p99 / max).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from common import (
    Env,
    best,
    create_topic,
    fresh_prefix,
    make_settings,
    payloads,
    percentile,
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


def raw_run(env: Env, records: list[tuple[bytes, list[tuple[str, bytes]]]]) -> dict[str, Any]:
    """The same records (value and headers, byte for byte) through a plain producer: no
    validation, no envelope, no per-record delivery report, one flush at the end."""
    prefix = fresh_prefix("raw-dispatch")
    settings = make_settings(settings_tree(env.bootstrap, prefix))
    topic = f"{prefix}raw"
    create_topic(env.bootstrap, topic)
    producer = raw_producer(settings)
    for value, headers in records[:100]:
        producer.produce(topic, value, headers=headers)
    producer.flush(30)
    produce, poll = producer.produce, producer.poll
    started = time.perf_counter()
    for i, (value, headers) in enumerate(records):
        try:
            produce(topic, value, headers=headers)
        except BufferError:
            poll(0.05)
            produce(topic, value, headers=headers)
        if i % 10_000 == 0:
            poll(0)
    left = producer.flush(60)
    elapsed = time.perf_counter() - started
    assert left == 0, f"{left} records not delivered"
    return {"jobs": len(records), "seconds": elapsed, "jobs_s": len(records) / elapsed}


def concurrent_run(env: Env, items: list[dict[str, Any]], threads: int = 100, seconds: float = 5.0) -> dict[str, Any]:
    """`threads` callers of `dispatch()` on one Dispatcher for `seconds`: acks/s, ack time per call."""
    settings = make_settings(settings_tree(env.bootstrap, fresh_prefix("concurrent")))
    dispatcher = Dispatcher(settings)
    dispatcher.dispatch_many("jobs", items[:100])  # topics, connections
    times: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def caller(mine: list[float], offset: int) -> None:
        start.wait()
        i = offset
        try:
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                dispatcher.dispatch("jobs", items[i % len(items)])
                mine.append(time.perf_counter() - t0)
                i += threads
        except BaseException as exc:  # noqa: BLE001 - reported
            errors.append(exc)

    workers = [threading.Thread(target=caller, args=(times[k], k), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    stop_at[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    start.wait()
    for w in workers:
        w.join(seconds + 60)
    elapsed = time.perf_counter() - started
    dispatcher.close()
    acks = sorted(t for mine in times for t in mine)
    if errors or not acks:
        return {"error": f"{len(errors)} callers failed: {errors[:1]!r}"}
    return {"threads": threads, "jobs": len(acks), "seconds": elapsed, "jobs_s": len(acks) / elapsed,
            "p50_ms": percentile(acks, 50) * 1e3, "p99_ms": percentile(acks, 99) * 1e3, "max_ms": acks[-1] * 1e3}


def run(env: Env) -> dict[str, Any]:
    n = 30_000 if env.quick else 100_000
    items = payloads(n)
    settings = make_settings(settings_tree(env.bootstrap, fresh_prefix("encode")))
    dispatcher = Dispatcher(settings, ensure_topics=False)
    envs = [dispatcher.build("jobs", item) for item in items]
    records = [(envelope.encode(env), envelope.headers(env)) for env in envs]
    record_bytes = sum(len(v) + sum(len(k) + len(b) for k, b in h) for v, h in records) / n
    pj, raw = [], []
    for _ in range(env.repeats):
        pj.append(protojobs_run(env, items))
        raw.append(raw_run(env, records))
    p, r = best(pj, "jobs_s"), best(raw, "jobs_s")
    for side in (p, r):
        side["mb_s"] = side["jobs_s"] * record_bytes / 1e6
    concurrent = best([concurrent_run(env, items, seconds=3.0 if env.quick else 8.0)
                       for _ in range(1 if env.quick else env.repeats)], "jobs_s")
    return {"jobs": n, "concurrent": concurrent,
            "payload_bytes": round(sum(len(envelope.dumps(i)) for i in items[:1000]) / 1000),
            "record_bytes": round(record_bytes), "protojobs": p, "raw": r, "ratio": p["jobs_s"] / r["jobs_s"]}
