"""The foundation: real Kafka (1 and 3 nodes) and toxiproxy, started by the project itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from protojobs.local.cluster import pid_alive
from protojobs.testing import Cluster, profile
from protojobs.testing.plugin import Faults

pytestmark = pytest.mark.broker


def create_topic(bootstrap: str, name: str, partitions: int = 1, rf: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, rf)])[name].result(timeout=30)


def produce(bootstrap: str, topic: str, values: list[bytes], **extra: object) -> list[str | None]:
    """Produce every value; return each delivery's error text (None = acknowledged)."""
    producer = Producer(profile.producer(bootstrap, **{"acks": "all", "enable.idempotence": True, **extra}))
    results: list[str | None] = [None] * len(values)

    def report(index: int):  # noqa: ANN202
        def callback(err, _msg):  # noqa: ANN001, ANN202
            results[index] = None if err is None else err.str()
        return callback

    for i, value in enumerate(values):
        results[i] = "pending"
        producer.produce(topic, value, on_delivery=report(i))
    producer.flush(60)
    return results


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[bytes]:
    consumer = Consumer(profile.consumer(bootstrap, f"g-{topic}"))
    consumer.subscribe([topic])
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None:
                    seen.append(msg.value())
    finally:
        consumer.close()
    return seen


def test_single_node_round_trip(kafka: Cluster, fresh_topic) -> None:
    topic = fresh_topic()
    create_topic(kafka.bootstrap, topic, partitions=3)
    values = [f"job-{i}".encode() for i in range(200)]
    assert produce(kafka.bootstrap, topic, values) == [None] * 200
    assert sorted(consume_all(kafka.bootstrap, topic, 200)) == sorted(values)


def test_three_nodes_acks_all(kafka_cluster: Cluster, fresh_topic) -> None:
    topic = fresh_topic()
    create_topic(kafka_cluster.bootstrap, topic, partitions=3, rf=3)
    meta = AdminClient({"bootstrap.servers": kafka_cluster.bootstrap}).list_topics(topic, timeout=10)
    assert len(meta.brokers) == 3
    assert all(len(p.replicas) == 3 for p in meta.topics[topic].partitions.values())
    values = [f"v{i}".encode() for i in range(300)]
    assert produce(kafka_cluster.bootstrap, topic, values) == [None] * 300
    assert sorted(consume_all(kafka_cluster.bootstrap, topic, 300)) == sorted(values)


def test_latency_toxic_is_visible(kafka: Cluster, toxiproxy: Faults, fresh_topic) -> None:
    topic = fresh_topic()
    create_topic(kafka.bootstrap, topic)
    proxied = kafka.proxied_bootstrap
    assert produce(proxied, topic, [b"warm-up"]) == [None]

    def one_round_trip() -> float:
        producer = Producer(profile.producer(proxied, acks="all"))
        producer.produce(topic, b"x")
        producer.flush(10)  # connects, fetches metadata, produces: several request round trips
        start = time.monotonic()
        producer.produce(topic, b"y")
        producer.flush(10)
        return time.monotonic() - start

    before = one_round_trip()
    toxiproxy.client_proxy(kafka).add_toxic("latency", latency=300, jitter=0)
    after = one_round_trip()
    assert after >= 0.3 > before, (before, after)


def test_disabled_proxy_fails_then_recovers(kafka: Cluster, toxiproxy: Faults, fresh_topic) -> None:
    topic = fresh_topic()
    create_topic(kafka.bootstrap, topic)
    proxy = toxiproxy.client_proxy(kafka)
    proxy.disable()
    failed = produce(kafka.proxied_bootstrap, topic, [b"lost?"], **{"message.timeout.ms": 3000})
    assert failed[0] is not None and "timed out" in failed[0].lower()
    assert produce(kafka.bootstrap, topic, [b"direct"]) == [None]  # DIRECT never touches the proxy
    proxy.enable()
    assert produce(kafka.proxied_bootstrap, topic, [b"back"]) == [None]
    assert sorted(consume_all(kafka.bootstrap, topic, 2)) == [b"back", b"direct"]


def test_killed_node_loses_nothing_acknowledged(kafka_cluster: Cluster, fresh_topic) -> None:
    topic = fresh_topic()
    create_topic(kafka_cluster.bootstrap, topic, partitions=3, rf=3)
    first = [f"a{i}".encode() for i in range(100)]
    assert produce(kafka_cluster.bootstrap, topic, first) == [None] * 100
    kafka_cluster.kill_node(2)
    try:
        second = [f"b{i}".encode() for i in range(100)]
        results = produce(kafka_cluster.bootstrap, topic, second)
        acked = [v for v, err in zip(second, results, strict=True) if err is None]
        assert len(acked) == 100, results  # min.insync.replicas=2 of 3: still writable
        got = consume_all(kafka_cluster.bootstrap, topic, 200)
        assert set(first + acked) <= set(got)
    finally:
        kafka_cluster.restart_node(2)
        kafka_cluster.wait_ready(90)


def test_broker_command_round_trip(tmp_path: Path) -> None:
    state = tmp_path / "state"
    base = int(os.environ.get("PROTOJOBS_TEST_PORT_BASE", "29100")) + 500
    cli = [sys.executable, "-m", "protojobs.cli", "broker"]
    opts = ["--state", str(state)]
    started = subprocess.run([*cli, "start", "--toxiproxy", "--port", str(base), *opts], capture_output=True,
                             text=True, timeout=120)
    assert started.returncode == 0, started.stderr + started.stdout
    try:
        status = subprocess.run([*cli, "status", *opts], capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and "node 1" in status.stdout, status.stdout
        pids = [int(p.read_text()) for p in state.rglob("*.pid")]
        assert len(pids) == 2  # one broker, one toxiproxy
        assert produce(f"127.0.0.1:{base + 5}", "__missing_is_fine", []) == []
    finally:
        stopped = subprocess.run([*cli, "stop", *opts], capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0
    assert not [p for p in pids if pid_alive(p)]
    leftovers = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
    status = subprocess.run([*cli, "status", *opts], capture_output=True, text=True, timeout=30)
    assert status.returncode == 1 and "not running" in status.stdout


def test_start_failure_names_the_cause(tmp_path: Path, kafka: Cluster) -> None:
    clash = Cluster(tmp_path / "clash", nodes=1, base_port=kafka.base_port)
    with pytest.raises(Exception, match="in use"):
        clash.start(timeout=10)
