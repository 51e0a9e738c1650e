"""Scenario 2: end-to-end no-op drain of N pre-loaded jobs (200,000; quick: 50,000).

The jobs are pre-loaded once (records exactly as `dispatch` writes them: envelope value and
headers) into one 4-partition queue topic; each contender drains all of them in its own
consumer group, in its own process(es):
- protojobs `protojobs run --no-router` with 1 process, then `--processes 2`, handler `noop`,
  with validate_on_consume on (the default) and off;
- the raw confluent-kafka loop (raw_consume.py): batched consume, json decode, commit every 1 s.
Rate = N / (last handler call - first handler call), so process start and group join do not
count; the subprocess is stopped once the group's committed offsets reach N. With 2 processes
the queue is paused (`protojobs pause`'s control record) until both own partitions: started on
the pre-loaded topic, the first one drained all 200k jobs before the second had joined.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

from common import (
    PYTHON,
    Env,
    best,
    committed_total,
    fresh_prefix,
    make_settings,
    payloads,
    raw_consumer_conf,
    raw_producer,
    read_reports,
    settings_tree,
    spawn,
    stop,
    wait_until,
    write_config,
)

from protojobs.config import Settings
from protojobs.engine.dispatch import now_ms
from protojobs.kafka import admin
from protojobs.model import envelope
from protojobs.model import names as topics
from protojobs.observe.process import rss_of
from protojobs.ops.pause import set_paused

PROTOJOBS = str(Path(PYTHON).parent / "protojobs")


def preload(settings: Settings, n: int, queue: str = "jobs") -> str:
    """Write n jobs the way dispatch does (same value and headers), without waiting per job."""
    admin.ensure_topics(settings)
    topic = topics.queue_topic(settings.kafka.topic_prefix, queue)
    producer = raw_producer(settings)
    base = payloads(min(n, 10_000))
    for i in range(n):
        env = envelope.new_envelope(queue, "noop", dict(base[i % len(base)], t=time.time_ns()), now_ms=now_ms())
        value = envelope.encode(env)
        while True:
            try:
                producer.produce(topic, value, None, headers=cast(Any, envelope.headers(env)))
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0, "pre-load not delivered"
    return topic


def drain_protojobs(env: Env, tree: dict[str, Any], topic: str, n: int, processes: int = 1,
                    sample_rss: bool = False, timeout: float = 600) -> dict[str, Any]:
    work = env.scratch("drain")
    config = write_config(work, tree)
    group = tree["kafka"]["group_id"]
    settings = make_settings(tree)
    if processes > 1:  # all of them in the group first: one alone drains 200k jobs before the next joins
        set_paused(settings, "jobs", True, by="bench")
    proc = spawn([PROTOJOBS, "run", "--config", str(config), "--no-router", "--processes", str(processes)],
                 env={"BENCH_REPORT_DIR": str(work)}, log=work / "worker.log")
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    try:
        if processes > 1:
            client = admin.client(settings)
            joined = wait_until(lambda: sum(1 for m in admin.group_members(client, group) if m["assignment"])
                                >= processes, 60, 0.25)
            set_paused(settings, "jobs", False, by="bench")
            if not joined:
                raise RuntimeError(f"{processes} processes did not all get partitions in 60 s")
        def done() -> bool:
            if sample_rss:
                samples.append((time.monotonic() - started, rss_of(proc.pid)))
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited early: {(work / 'worker.log').read_text()[-2000:]}")
            return committed_total(env.bootstrap, group, topic) >= n

        finished = wait_until(done, timeout, every=0.5)
    finally:
        stop(proc)
    if not finished:
        return {"error": f"did not drain {n} jobs in {timeout:.0f}s"}
    return summarize(read_reports(work), n, samples)


def drain_raw(env: Env, settings: Settings, topic: str, n: int, group: str, latency: bool = False,
              timeout: float = 600) -> dict[str, Any]:
    work = env.scratch("raw")
    out = work / "report-raw.json"
    conf = raw_consumer_conf(settings, group)
    args = [PYTHON, "raw_consume.py", json.dumps(conf), topic, str(n), str(out)] + (["--latency"] if latency else [])
    proc = spawn(args, log=work / "raw.log")
    try:
        proc.wait(timeout)
    except Exception:  # noqa: BLE001 - a timeout: report it
        stop(proc)
        return {"error": f"raw consumer did not finish {n} in {timeout:.0f}s"}
    return summarize(read_reports(work), n, [])


def summarize(reports: list[dict[str, Any]], n: int, samples: list[tuple[float, int]]) -> dict[str, Any]:
    if not reports:
        return {"error": "no report from the consumer"}
    first = min(r["first"] for r in reports if r["first"])
    last = max(r["last"] for r in reports)
    seconds = (last - first) / 1e9
    cpu = sum(r["cpu_exit"] - r["cpu_first"] for r in reports)
    return {"jobs": n, "seconds": seconds, "jobs_s": n / seconds if seconds > 0 else float("nan"),
            "processes": len(reports), "cpu_s_per_100k": cpu / n * 100_000,
            "rss_first_mb": sum(r["rss_first"] for r in reports) / 2**20,
            "rss_exit_mb": sum(r["rss_exit"] for r in reports) / 2**20,
            "lat": [x for r in reports for x in r["lat"]],
            "rss_samples": [(round(t, 1), round(b / 2**20, 1)) for t, b in samples]}


def run(env: Env) -> dict[str, Any]:
    n = 50_000 if env.quick else 200_000  # many times any buffer (1,000 by default): what users see
    prefix = fresh_prefix("drain")
    tree = settings_tree(env.bootstrap, prefix)
    settings = make_settings(tree)
    topic = preload(settings, n)
    variants: dict[str, list[dict[str, Any]]] = {"raw": [], "protojobs_1p": [], "protojobs_1p_novalidate": [],
                                                 "protojobs_2p": [], "protojobs_1p_exactly_once": []}
    for attempt in range(env.repeats):
        variants["raw"].append(drain_raw(env, settings, topic, n, f"{prefix}raw-{attempt}"))
        for name, processes, validate, delivery in (
                ("protojobs_1p", 1, True, "at_least_once"), ("protojobs_1p_novalidate", 1, False, "at_least_once"),
                ("protojobs_2p", 2, True, "at_least_once"), ("protojobs_1p_exactly_once", 1, True, "exactly_once")):
            t = settings_tree(env.bootstrap, prefix)
            t["kafka"]["group_id"] = f"{prefix}{name}-{attempt}"
            t["queues"]["jobs"]["validate_on_consume"] = validate
            t["queues"]["jobs"]["delivery"] = delivery
            try:
                variants[name].append(drain_protojobs(env, t, topic, n, processes))
            except Exception as exc:  # noqa: BLE001 - reported in the table as not run
                variants[name].append({"error": f"not run: {str(exc)[-300:]}"})
    out: dict[str, Any] = {"jobs": n}
    for name, runs in variants.items():
        chosen = best(runs, "jobs_s")
        chosen.pop("lat", None)
        out[name] = chosen
    raw = out["raw"].get("jobs_s")
    for name in ("protojobs_1p", "protojobs_1p_novalidate", "protojobs_2p", "protojobs_1p_exactly_once"):
        rate = out[name].get("jobs_s")
        out[name]["ratio"] = rate / raw if rate and raw else None
    eo, alo = out["protojobs_1p_exactly_once"].get("jobs_s"), out["protojobs_1p"].get("jobs_s")
    out["exactly_once_vs_at_least_once"] = eo / alo if eo and alo else None
    return out
