"""Time every dashboard page at the sizes of its target: 20 queues, 100k waiting jobs (plus
jobs waiting in delay tiers) and 10k dead letters, on a running broker.

    .venv/bin/protojobs broker start            # or any broker: --brokers HOST:PORT
    .venv/bin/python bench/dashboard_pages.py [--brokers 127.0.0.1:9092] [--port 8099] [--repeat 15]

Fills a fresh topic prefix (nothing else is touched), serves the dashboard in this process
(uvicorn on a thread, as `protojobs dashboard` does), requests each page once to warm up, then
`--repeat` times, and prints the median, 90th percentile and maximum time of each (ms, wall
clock at the client, loopback HTTP included). Target: under 200 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protojobs import config  # noqa: E402
from protojobs.engine.dispatch import Dispatcher  # noqa: E402
from protojobs.kafka import admin  # noqa: E402
from protojobs.kafka.clients import ErrorWatch, producer_config  # noqa: E402
from protojobs.model import dead_letter, envelope, names  # noqa: E402

QUEUES, WAITING, DELAYED, DEAD = 20, 100_000, 2_000, 10_000


def settings_for(brokers: str) -> config.Settings:
    prefix = f"dashbench-{uuid.uuid4().hex[:6]}-"
    tree = {"kafka": {"brokers": brokers, "group_id": f"{prefix}group", "topic_prefix": prefix},
            "delays": {"tiers": ["1s", "1m", "1h"]},
            "defaults": {"partitions": 3},
            "queues": {f"q{i:02d}": {"handler": "protojobs.demo:send_email"} for i in range(QUEUES)},
            "schedules": {"nightly": {"queue": "q00", "cron": "0 3 * * *", "tz": "Europe/Paris"}}}
    return config.from_dict(tree, ROOT)


def fill(settings: config.Settings) -> None:
    admin.ensure_topics(settings)
    dispatcher = Dispatcher(settings, ensure_topics=False)
    started = time.perf_counter()
    try:
        per_queue = WAITING // QUEUES
        for name in settings.queues:
            result = dispatcher.dispatch_many(name, ({"n": n, "to": f"user{n}@example.com"} for n in range(per_queue)))
            assert not result.errors, result.errors
        result = dispatcher.dispatch_many("q01", ({"n": n} for n in range(DELAYED)), delay=3_000)
        assert not result.errors, result.errors
    finally:
        dispatcher.close(30)
    producer = Producer(producer_config(settings.kafka, ErrorWatch()))
    topic = settings.kafka.dead_letter_topic
    now = int(time.time() * 1000)
    for n in range(DEAD):
        queue = f"q{n % QUEUES:02d}"
        env = envelope.new_envelope(queue, "protojobs.demo:send_email", {"n": n, "to": f"user{n}@example.com"},
                                    now_ms=now - (DEAD - n) * 1000)
        error = ("ValueError", "KeyError", "TimeoutError")[n % 3]
        value = dead_letter.dead_letter_record(
            env, error_type=error, error_message=f"job {n} failed", traceback="Traceback (most recent call last):\n"
            f'  File "app.py", line {n % 300}, in handle\n{error}: job {n} failed', attempts=3,
            first_failed_at=now - (DEAD - n) * 1000, failed_at=now - (DEAD - n) * 1000 + 500,
            topic=names.queue_topic(settings.kafka.topic_prefix, queue), partition=n % 3, offset=n, host="bench",
            reason="max attempts")
        while True:
            try:
                producer.produce(topic, value, key=env.id.encode(), headers=envelope.headers(env))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0
    print(f"filled {QUEUES} queues with {WAITING} jobs, {DELAYED} delayed, {DEAD} dead letters "
          f"in {time.perf_counter() - started:.1f}s", flush=True)


def serve(settings: config.Settings, port: int) -> None:
    import uvicorn

    from protojobs import dashboard

    server = uvicorn.Server(uvicorn.Config(dashboard.app(settings), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("the dashboard did not start")
        time.sleep(0.05)


def timed(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
        assert response.status == 200, (url, response.status)
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    settings = settings_for(args.brokers)
    fill(settings)
    serve(settings, args.port)
    base = f"http://127.0.0.1:{args.port}"
    dl = settings.kafka.dead_letter_topic
    pages = {
        "overview": "/", "workers": "/workers", "queue q01": "/queues/q01",
        "record explorer": f"/records?topic={names.queue_topic(settings.kafka.topic_prefix, 'q00')}"
                           "&partition=0&offset=1000&count=10",
        "dead letters": "/dead-letters", "dead letters, filtered": "/dead-letters?queue=q03&error=KeyError",
        "dead letters, text (rare)": "/dead-letters?text=job+9999+failed",
        "dead letter": f"/dead-letters/{dl}/0/100", "schedules": "/schedules",
    }
    print(f"{'page':28} {'median':>8} {'p90':>8} {'max':>8}  (ms, {args.repeat} requests each)")
    worst = 0.0
    for name, path in pages.items():
        timed(base + path)  # warm-up: the first request of a page opens its clients
        times = sorted(timed(base + path) for _ in range(args.repeat))
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        worst = max(worst, statistics.median(times))
        print(f"{name:28} {statistics.median(times):8.1f} {p90:8.1f} {times[-1]:8.1f}", flush=True)
    print(f"slowest median: {worst:.1f} ms (target < 200 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
