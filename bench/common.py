"""Shared helpers of the bench scenarios: settings, payloads, topics, subprocesses, statistics.

Every scenario gets a fresh topic prefix on the one bench broker, so runs never see each
other's records. Wall-clock times that cross processes use time.time_ns() (one machine, one
clock); durations inside one process use time.perf_counter().
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from protojobs import config
from protojobs.config import to_toml
from protojobs.kafka.clients import ErrorWatch, consumer_config, producer_config

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PARTITIONS = 4  # 2 worker processes get 2 partitions each
PYTHON = sys.executable


@dataclass
class Env:
    """What every scenario gets: the broker, the run mode and a place for scratch files."""

    bootstrap: str
    quick: bool
    work: Path
    repeats: int = 2
    notes: list[str] = field(default_factory=list)

    def scratch(self, name: str) -> Path:
        path = self.work / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def fresh_prefix(name: str) -> str:
    return f"bench-{name}-{uuid.uuid4().hex[:8]}-"


def settings_tree(bootstrap: str, prefix: str, handler: str = "bench_jobs:noop", concurrency: int = 4,
                  **queue: Any) -> dict[str, Any]:
    """One queue `jobs` with the bench payload schema; lz4 like the example jobs.toml."""
    return {
        "kafka": {"brokers": bootstrap, "group_id": f"{prefix}group", "topic_prefix": prefix,
                  "compression": "lz4"},
        "delays": {"tiers": ["1s", "5s", "30s", "5m"]},
        "defaults": {"partitions": PARTITIONS, "concurrency": concurrency},
        "queues": {"jobs": {"handler": handler, "schema": "job.json", **queue}},
    }


def make_settings(tree: dict[str, Any]) -> config.Settings:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return config.from_dict(tree, BENCH, env={})


def write_config(directory: Path, tree: dict[str, Any]) -> Path:
    """A jobs.toml for `protojobs run` in a subprocess; the schema and handler live in bench/."""
    tree = json.loads(json.dumps(tree))
    tree["queues"]["jobs"]["schema"] = str(BENCH / "job.json")
    path = directory / "jobs.toml"
    path.write_text(to_toml(tree))
    return path


# --- payloads -------------------------------------------------------------------------------

_WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]


def payload(i: int, rng: random.Random | None = None) -> dict[str, Any]:
    """A schema-valid order event of about 200 bytes of compact JSON; `t` is stamped at send."""
    r = rng or random
    return {
        "t": 0,
        "order": f"ord-{i:010d}",
        "customer": f"customer {r.choice(_WORDS)} {r.randrange(10**6):06d}",
        "email": f"user{r.randrange(10**6)}@example.com",
        "amount": round(r.uniform(1, 500), 2),
        "currency": r.choice(["EUR", "USD", "GBP"]),
        "items": [f"sku-{r.randrange(10**5):05d}" for _ in range(3)],
        "note": "deliver to the back door, ring twice",
    }


def payloads(n: int) -> list[dict[str, Any]]:
    rng = random.Random(42)
    return [payload(i, rng) for i in range(n)]


# --- kafka helpers --------------------------------------------------------------------------


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    client = admin(bootstrap)  # kept referenced until the futures resolve
    futures = client.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30)
    for future in futures.values():
        future.result(30)


def raw_producer(settings: config.Settings) -> Producer:
    """A plain confluent-kafka producer with exactly protojobs' producer settings."""
    return Producer(producer_config(settings.kafka, ErrorWatch()))


def warm_up(bootstrap: str, seconds: float = 20.0) -> float:
    """Untimed traffic through a freshly started broker before any scenario, for at least
    `seconds`: rounds of 100,000 records produced in bulk and consumed, and 500 produce-and-wait
    round trips. A cold JVM (JIT compiling its hot paths) made the first scenario measure the
    broker: 100 dispatching threads got 14.9k acks/s and dispatch_many 92k jobs/s first thing
    after start, 23.5k and 138k on a warm broker, same code. Returns the seconds it took."""
    started = time.monotonic()
    topic = f"bench-warm-up-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 1, "compression.type": "lz4"})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    value = json.dumps(payload(0)).encode()
    while time.monotonic() - started < seconds:
        for _ in range(100_000):
            while True:
                try:
                    producer.produce(topic, value)
                    break
                except BufferError:  # librdkafka's queue is full: let it drain
                    producer.poll(0.05)
        producer.flush(60)
        for _ in range(500):
            producer.produce(topic, value)
            producer.flush(10)
        seen, deadline = 0, time.monotonic() + 60
        while seen < 100_500 and time.monotonic() < deadline:
            seen += sum(1 for m in consumer.consume(10_000, 0.5) if m.error() is None)
    consumer.close()
    return time.monotonic() - started


def raw_consumer_conf(settings: config.Settings, group: str) -> dict[str, Any]:
    conf = consumer_config(settings.kafka, ErrorWatch(), group=group)
    conf.pop("error_cb", None)
    conf.pop("logger", None)
    return conf


def committed_total(bootstrap: str, group: str, topic: str, partitions: int = PARTITIONS) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(tp.offset for tp in found if tp.offset >= 0)
    finally:
        consumer.close()


# --- subprocesses ---------------------------------------------------------------------------


def spawn(args: Sequence[str], env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(list(args), env={**os.environ, "PYTHONPATH": str(BENCH), **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=BENCH)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM the child's process group, SIGKILL what is left after `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(10)


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 0.1, what: str = "") -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def read_reports(directory: Path) -> list[dict[str, Any]]:
    """The JSON files the handler module (bench_jobs) writes at exit, one per process."""
    return [json.loads(p.read_text()) for p in sorted(directory.glob("report-*.json"))]




def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted-or-not `values` (q in 0..100); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, int(round(q / 100 * len(ordered) + 0.5)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(values_ns: Sequence[int]) -> dict[str, float]:
    ms = [v / 1e6 for v in values_ns]
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms) if ms else float("nan")}


def best(runs: list[dict[str, Any]], key: str, higher: bool = True) -> dict[str, Any]:
    """The better of repeated runs (the machine is shared: noise only ever slows a run down)."""
    ok = [r for r in runs if isinstance(r.get(key), int | float)]
    if not ok:
        return runs[-1] if runs else {}
    chosen = max(ok, key=lambda r: r[key]) if higher else min(ok, key=lambda r: r[key])
    return {**chosen, "runs": [r.get(key) for r in runs]}
