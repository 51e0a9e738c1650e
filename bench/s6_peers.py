"""Scenario 6: peer job systems draining the same no-op job (same ~200-byte payload).

- Dramatiq 2 with Redis (redis-server from Debian's packages, private port 22190):
  `dramatiq peer_dramatiq --processes 1 --threads 8`, and with its recommended counts (its CLI's
  defaults: a process per core, 8 threads each); acks after the actor returns.
- FastStream 0.7 (faststream[confluent]) on the same Kafka broker: `python peer_faststream.py`
  (`app.run()`), default subscriber settings (auto commit: ack-first), async handler; and at its
  best: a batch subscriber (1,000 records) committing after processing (`ack_policy=ACK`).
- Celery 5 with kombu's confluentkafka transport on the same Kafka broker:
  `celery -A peer_celery worker -P threads -c 8` (acks_late=False: ack-first). (A tuned run,
  acks_late with short polling intervals, drained nothing in 5 minutes here: not in the bench yet.)
Each peer's figure is N / (last call - first call), like protojobs' drain (scenario 2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from common import (
    PYTHON,
    Env,
    create_topic,
    fresh_prefix,
    payloads,
    read_reports,
    spawn,
    stop,
    wait_until,
)

REDIS_PORT = 22190


def dramatiq_run(env: Env, n: int, processes: int = 1) -> dict[str, Any]:
    if shutil.which("redis-server") is None:
        return {"error": "not run: redis-server is not installed (apt-get install -y redis-server)"}
    work = env.scratch("dramatiq")
    redis = subprocess.Popen(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--dir", str(work),
                              "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        os.environ["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
        import redis as redis_client

        client = redis_client.Redis(port=REDIS_PORT)
        if not wait_until(lambda: _ping(client), 10, 0.1):
            return {"error": "not run: redis-server did not start"}
        client.flushall()
        import peer_dramatiq

        items = payloads(min(n, 10_000))
        for i in range(n):
            peer_dramatiq.noop.send(items[i % len(items)])
        dramatiq_bin = str(Path(PYTHON).parent / "dramatiq")
        worker = spawn([dramatiq_bin, "peer_dramatiq", "--processes", str(processes), "--threads", "8"],
                       env={"BENCH_REPORT_DIR": str(work), "BENCH_REDIS_URL": os.environ["BENCH_REDIS_URL"]},
                       log=work / "worker.log")
        return _timed(work, n, worker, f"{processes} process(es), 8 threads")  # stops the worker
    finally:
        stop(redis)  # type: ignore[arg-type]


def faststream_run(env: Env, n: int, mode: str = "default") -> dict[str, Any]:
    """Pre-load n JSON payloads into a fresh topic, then time FastStream draining them
    (mode "batch": batch subscriber, commit after processing; see peer_faststream)."""
    from confluent_kafka import Producer

    work = env.scratch("faststream")
    topic = f"{fresh_prefix('faststream')}jobs"
    create_topic(env.bootstrap, topic)
    producer = Producer({"bootstrap.servers": env.bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    items = [json.dumps(p).encode() for p in payloads(min(n, 10_000))]
    for i in range(n):
        while True:
            try:
                producer.produce(topic, items[i % len(items)])
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0, "pre-load not delivered"
    worker = spawn([PYTHON, "peer_faststream.py"],
                   env={"BENCH_REPORT_DIR": str(work), "BENCH_BOOTSTRAP": env.bootstrap, "BENCH_TOPIC": topic,
                        "BENCH_GROUP": f"{topic}-group", "BENCH_FS_MODE": mode}, log=work / "worker.log")
    return _timed(work, n, worker, "1 process, defaults" if mode == "default" else
                  "1 process, batch subscriber (1,000), ack_policy=ACK")


def celery_run(env: Env, n: int) -> dict[str, Any]:
    """Enqueue n tasks through kombu's confluentkafka transport, then time a Celery worker."""
    os.environ["BENCH_BOOTSTRAP"] = env.bootstrap
    import peer_celery

    work = env.scratch("celery")
    topic = f"{fresh_prefix('celery')}jobs"
    items = payloads(min(n, 10_000))
    for i in range(n):
        peer_celery.noop.apply_async(args=[items[i % len(items)]], queue=topic)
    worker = spawn([PYTHON, "-m", "celery", "-A", "peer_celery", "worker", "-P", "threads", "-c", "8", "-Q", topic,
                    "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"],
                   env={"BENCH_REPORT_DIR": str(work), "BENCH_BOOTSTRAP": env.bootstrap}, log=work / "worker.log")
    return _timed(work, n, worker, "1 process, 8 threads")


def _timed(work: Path, n: int, worker: Any, settings: str) -> dict[str, Any]:
    """Wait until the peer's reports count n calls, stop it, and rate it: n / (last - first call)."""
    try:
        def count() -> int:
            return sum(r["count"] for r in _reports(work))

        done = wait_until(lambda: count() >= n, 600, 0.5)
        reports = _reports(work)
        if not done or not reports:
            return {"error": f"drained {count()} of {n} in 600 s (log: {work / 'worker.log'})"}
        seconds = (max(r["last"] for r in reports) - min(r["first"] for r in reports)) / 1e9
        return {"jobs": n, "seconds": seconds, "jobs_s": n / seconds, "settings": settings}
    finally:
        stop(worker)


def _best_of(env: Env, runner: Any, n: int) -> dict[str, Any]:
    runs = []
    for _ in range(1 if env.quick else env.repeats):
        try:
            runs.append(runner(env, n))
        except Exception as exc:  # noqa: BLE001 - reported in the table
            runs.append({"error": f"not run: {type(exc).__name__}: {exc}"})
    ok = [r for r in runs if "jobs_s" in r]
    result = max(ok, key=lambda r: r["jobs_s"]) if ok else runs[-1]
    result["runs"] = [r.get("jobs_s") for r in runs]
    return result


def _reports(work: Path) -> list[dict[str, Any]]:
    try:
        return read_reports(work)
    except ValueError:  # a report being written
        time.sleep(0.05)
        return read_reports(work)


def _ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def run(env: Env) -> dict[str, Any]:
    n = 10_000 if env.quick else 100_000
    return {
        "dramatiq+redis": {**_best_of(env, dramatiq_run, n), "guarantee": "ack after success"},
        "dramatiq+redis, its recommended counts (a process per core, 8 threads each)": {
            **_best_of(env, lambda e, k: dramatiq_run(e, k, os.cpu_count() or 1), n),
            "guarantee": "ack after success"},
        "faststream[confluent]": {**_best_of(env, faststream_run, n),
                                  "guarantee": "ack-first (auto commit) by default"},
        "faststream[confluent] at its best: batch subscriber": {
            **_best_of(env, lambda e, k: faststream_run(e, k, "batch"), n),
            "guarantee": "commit after processing (ack_policy=ACK), like protojobs"},
        # kombu's confluentkafka transport drains ~40 jobs/s here: fewer jobs keep the run bounded
        "celery+kombu confluentkafka": {**_best_of(env, celery_run, 2_000 if env.quick else 5_000),
                                        "guarantee": "ack-first by default (acks_late=False)"},
    }
