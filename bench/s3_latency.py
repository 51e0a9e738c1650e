"""Scenario 3: latency at fixed offered rates (100, 1,000, 10,000 jobs/s).

protojobs: jobs are built and sent (`Dispatcher.build` + `send`, delivery reports served with
poll(0), so the sender never waits for an ack) at a steady rate; a `protojobs run` subprocess
runs the `stamp` handler, which records handler-start time minus the payload's `t` (stamped
just before the send). Raw: the same record values through a plain producer with the same
settings, consumed by raw_consume.py, which records consume time minus `t`.
Both consumers join their group and take 10 warm-up records before the clock starts.
"""

from __future__ import annotations

import time
from typing import Any

from common import (
    Env,
    best,
    committed_total,
    create_topic,
    fresh_prefix,
    make_settings,
    payloads,
    raw_consumer_conf,
    raw_producer,
    read_reports,
    settings_tree,
    spawn,
    stop,
    summary_ms,
    wait_until,
    write_config,
)
from s2_drain import PROTOJOBS

from protojobs.engine.dispatch import Dispatcher, Outcome
from protojobs.model import envelope

WARMUP = 10


def paced(rate: int, count: int, send: Any, poll: Any) -> None:
    """Call send(i) `count` times at `rate` per second (catching up if behind)."""
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        while True:
            ahead = due - time.perf_counter()
            if ahead <= 0:
                break
            poll(0)
            if ahead > 0.0005:
                time.sleep(min(ahead, 0.001))
        send(i)
        if i % 64 == 0:
            poll(0)


def protojobs_side(env: Env, rate: int, count: int) -> dict[str, Any]:
    prefix = fresh_prefix("latency")
    tree = settings_tree(env.bootstrap, prefix, handler="bench_jobs:stamp")
    settings = make_settings(tree)
    dispatcher = Dispatcher(settings)
    work = env.scratch("latency")
    dispatcher.dispatch_many("jobs", [dict(p, t=0) for p in payloads(WARMUP)])  # creates the topics
    proc = spawn([PROTOJOBS, "run", "--config", str(write_config(work, tree)), "--no-router"],
                 env={"BENCH_REPORT_DIR": str(work)}, log=work / "worker.log")
    topic = f"{prefix}jobs"
    group = tree["kafka"]["group_id"]
    try:
        if not wait_until(lambda: committed_total(env.bootstrap, group, topic) >= WARMUP, 60, 0.25):
            return {"error": "worker did not start"}
        items = payloads(min(count, 10_000))
        outcomes: list[Outcome] = []

        def send(i: int) -> None:
            job = dispatcher.build("jobs", dict(items[i % len(items)], t=time.time_ns()))
            outcome = Outcome(job.id)
            outcomes.append(outcome)
            dispatcher.send(job, outcome)

        paced(rate, count, send, dispatcher.producer.poll)
        dispatcher.wait(outcomes)
        wait_until(lambda: committed_total(env.bootstrap, group, topic) >= WARMUP + count, 60, 0.25)
    finally:
        stop(proc)
        dispatcher.close()
    lat = [x for r in read_reports(work) for x in r["lat"] if x < 60 * 10**9]
    if not lat:
        return {"error": f"no latencies: {(work / 'worker.log').read_text()[-300:]}"}
    return summary_ms(lat)


def raw_side(env: Env, rate: int, count: int) -> dict[str, Any]:
    prefix = fresh_prefix("raw-latency")
    settings = make_settings(settings_tree(env.bootstrap, prefix))
    topic = f"{prefix}raw"
    create_topic(env.bootstrap, topic)
    producer = raw_producer(settings)
    dispatcher = Dispatcher(settings, producer=producer, ensure_topics=False)
    work = env.scratch("raw-latency")
    out = work / "report-raw.json"
    import json

    from common import PYTHON

    for p in payloads(WARMUP):
        producer.produce(topic, envelope.encode(dispatcher.build("jobs", dict(p, t=0))))
    producer.flush(30)
    conf = raw_consumer_conf(settings, f"{prefix}group")
    proc = spawn([PYTHON, "raw_consume.py", json.dumps(conf), topic, str(WARMUP + count), str(out), "--latency"],
                 log=work / "raw.log")
    try:
        if not wait_until(lambda: committed_total(env.bootstrap, f"{prefix}group", topic) >= WARMUP, 60, 0.25):
            return {"error": "raw consumer did not start"}
        items = payloads(min(count, 10_000))

        def send(i: int) -> None:
            value = envelope.encode(dispatcher.build("jobs", dict(items[i % len(items)], t=time.time_ns())))
            producer.produce(topic, value)

        paced(rate, count, send, producer.poll)
        producer.flush(30)
        proc.wait(60)
    finally:
        stop(proc)
    lat = [x for r in read_reports(work) for x in r["lat"] if x < 60 * 10**9]
    return summary_ms(lat)


def run(env: Env) -> dict[str, Any]:
    seconds = 2 if env.quick else 5
    repeats = 1 if env.quick else env.repeats  # quick mode: one run per side and rate (time)
    out: dict[str, Any] = {}
    for rate in (100, 1_000, 10_000):
        count = max(200, rate * seconds)
        pj = [protojobs_side(env, rate, count) for _ in range(repeats)]
        raw = [raw_side(env, rate, count) for _ in range(repeats)]
        p, r = best(pj, "p99_ms", higher=False), best(raw, "p99_ms", higher=False)
        ratio = p["p99_ms"] / r["p99_ms"] if p.get("p99_ms") and r.get("p99_ms") else None
        out[str(rate)] = {"jobs": count, "protojobs": p, "raw": r, "p99_ratio": ratio}
    return out
