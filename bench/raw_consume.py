"""The raw confluent-kafka baseline consumer (run as a subprocess by scenarios 2 and 3).

Consumes in batches (`consume(num_messages=10000, 0)`, protojobs' batch_size; when nothing
is there, `consume(1, 0.1)`, which returns at the first record, so batching adds no latency), decodes each
value's JSON, stores offsets and commits asynchronously every second, as protojobs' worker
commits. Stops after `--count` records and writes a report like bench_jobs' handler does:
first/last record time, count, RSS, CPU, and (with --latency) each record's produce-to-consume
latency from the payload's `t` stamp.

    python raw_consume.py CONF_JSON TOPIC COUNT OUT_JSON [--latency]
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from confluent_kafka import Consumer, TopicPartition


def main(argv: list[str]) -> int:
    conf, topic, count, out = json.loads(argv[0]), argv[1], int(argv[2]), argv[3]
    latency = "--latency" in argv
    consumer = Consumer(conf)
    consumer.subscribe([topic])
    loads = json.loads
    seen, first, last, lat = 0, 0, 0, []
    highest: dict[int, int] = {}
    next_commit = time.monotonic() + 1.0
    rss_first, cpu_first = 0, 0.0
    while seen < count:
        msgs = consumer.consume(10_000, 0.0)  # what is there, without waiting
        if not msgs:
            msgs = consumer.consume(1, 0.1)  # returns at the first record: no batching delay
        for msg in msgs:
            if msg.error() is not None:
                continue
            env = loads(msg.value())
            now = time.time_ns()
            if not first:
                first, rss_first, cpu_first = now, _rss(), _cpu()
            if latency:
                lat.append(now - env["data"]["t"])
            highest[msg.partition()] = msg.offset()  # type: ignore[index]
            seen += 1
            last = now
        if time.monotonic() >= next_commit and highest:
            consumer.commit(offsets=[TopicPartition(topic, p, o + 1) for p, o in highest.items()], asynchronous=True)
            next_commit = time.monotonic() + 1.0
    consumer.commit(offsets=[TopicPartition(topic, p, o + 1) for p, o in highest.items()], asynchronous=False)
    consumer.close()
    with open(out, "w") as fh:
        json.dump({"pid": os.getpid(), "first": first, "last": last, "count": seen, "lat": lat,
                   "rss_first": rss_first, "rss_exit": _rss(), "cpu_first": cpu_first, "cpu_exit": _cpu()}, fh)
    return 0


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
