"""Observability against a real broker: /metrics counts, multiprocess sums, traces across Kafka,
health probes under a cut broker proxy, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from conftest import Running, settings_tree, wait_for, write_config
from prometheus_client.parser import text_string_to_metric_families
from test_engine import runs, spawn_worker

from protojobs import config
from protojobs.cli import main
from protojobs.engine.dispatch import Dispatcher
from protojobs.engine.router import Router, RouterThread
from protojobs.engine.worker import Worker, WorkerOptions
from protojobs.kafka import admin
from protojobs.model import envelope
from protojobs.model import names as topics
from protojobs.observe import logs, metrics
from protojobs.testing import Cluster

TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (OSError, urllib.error.URLError) as err:
        return 0, str(err)


def wait_status(url: str, code: int, timeout: float) -> None:
    """Wait until `url` answers `code`; the assertion says the last answer."""
    last: list[tuple[int, str]] = []
    try:
        wait_for(lambda: last.append(get(url)) or last[-1][0] == code, timeout=timeout, what=f"{url} -> {code}")
    except AssertionError as err:
        raise AssertionError(f"{err}; last answer: {last[-1] if last else None}") from None


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value} of one /metrics scrape (prometheus-client's parser)."""
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return out


def outcomes(samples: dict[str, Any]) -> dict[tuple[str, str], int]:
    """(queue, outcome) -> count, summed over job names."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    for labels, value in samples.get("protojobs_jobs_total", {}).items():
        d = dict(labels)
        out[(d["queue"], d["outcome"])] += int(value)
    return {k: v for k, v in out.items() if v}


def by_queue(samples: dict[str, Any], name: str) -> dict[str, float]:
    return {dict(labels)["queue"]: value for labels, value in samples.get(name, {}).items()}


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(40) == 0
    finally:
        proc.kill()


QUEUES = {"good": {"handler": "engine_jobs:record"}, "flaky": {"handler": "engine_jobs:flaky"},
          "bad": {"handler": "engine_jobs:poison"}}


@pytest.mark.broker
def test_scrape_counts_every_outcome_and_lag_drains(kafka: Cluster, fresh_prefix: str, tmp_path: Path) -> None:
    tree = settings_tree(kafka.bootstrap, fresh_prefix, QUEUES)
    path = write_config(tmp_path / "jobs.toml", tree)
    settings = config.from_dict(tree, TESTS.parent)
    dispatcher = Dispatcher(settings)
    assert dispatcher.dispatch_many("good", [{"n": i} for i in range(20)]).ok
    assert dispatcher.dispatch_many("flaky", [{"n": i, "fail": 1} for i in range(10)]).ok
    assert dispatcher.dispatch_many("bad", [{"n": i} for i in range(5)]).ok
    record, port = tmp_path / "runs.jsonl", free_port()
    proc = spawn_worker(path, record, "--metrics-port", str(port))
    try:
        wait_for(lambda: len(runs(record)) >= 20 + 20 + 15, timeout=60, what="every attempt ran")
        expected = {("good", "started"): 20, ("good", "succeeded"): 20,
                    ("flaky", "started"): 20, ("flaky", "failed"): 10, ("flaky", "retried"): 10,
                    ("flaky", "succeeded"): 10,
                    ("bad", "started"): 15, ("bad", "failed"): 15, ("bad", "retried"): 10,
                    ("bad", "dead_lettered"): 5}
        wait_for(lambda: outcomes(scrape(port)) == expected, timeout=45, what=f"counts {expected}")
        time.sleep(1.5)  # one more flush: nothing else comes in
        samples = scrape(port)
        assert outcomes(samples) == expected
        assert by_queue(samples, "protojobs_handler_duration_seconds_count") == {"good": 20, "flaky": 20, "bad": 15}
        assert by_queue(samples, "protojobs_dispatch_to_start_seconds_count") == {"good": 20, "flaky": 10, "bad": 5}
        assert by_queue(samples, "protojobs_delay_lateness_seconds_count") == {"flaky": 10, "bad": 10}
        assert by_queue(samples, "protojobs_in_flight") == {"good": 0, "flaky": 0, "bad": 0}

        def drained() -> bool:
            s = scrape(port)
            lag = s.get("protojobs_consumer_lag", {})
            return (len(lag) == 9 and all(v == 0 for v in lag.values())
                    and s["protojobs_dead_letter_depth"][()] == 5 and s["protojobs_group_members"][()] == 1
                    and all(v == 0 for v in s["protojobs_delay_tier_waiting"].values()))
        wait_for(drained, timeout=40, what="lag 0 on all 9 partitions, 5 dead letters, 1 member")
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        assert main.main(["health", "--url", f"http://127.0.0.1:{port}", "--ready"]) == 0
    finally:
        stop(proc)


@pytest.mark.broker
def test_processes_2_scrape_sums_both(kafka: Cluster, fresh_prefix: str, tmp_path: Path) -> None:
    tree = settings_tree(kafka.bootstrap, fresh_prefix, {"work": {"handler": "engine_jobs:record", "partitions": 4}})
    path = write_config(tmp_path / "jobs.toml", tree)
    settings = config.from_dict(tree, TESTS.parent)
    record, port = tmp_path / "runs.jsonl", free_port()
    proc = spawn_worker(path, record, "--processes", "2", "--metrics-port", str(port))
    try:
        wait_status(f"http://127.0.0.1:{port}/readyz", 200, timeout=60)
        assert Dispatcher(settings).dispatch_many("work", [{"n": i, "sleep": 0.02} for i in range(120)]).ok
        wait_for(lambda: {r["n"] for r in runs(record)} == set(range(120)), timeout=60, what="all jobs")
        pids = {r["pid"] for r in runs(record)}
        assert len(pids) == 2  # both processes ran jobs ...
        wait_for(lambda: outcomes(scrape(port)).get(("work", "succeeded")) == len(runs(record)), timeout=15,
                 what="the scrape to count every run")
        samples = scrape(port)  # ... and the one scrape counts the jobs of both
        assert outcomes(samples) == {("work", "started"): len(runs(record)), ("work", "succeeded"): len(runs(record))}
        assert by_queue(samples, "protojobs_handler_duration_seconds_count") == {"work": len(runs(record))}
        status, text = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and "2 worker process(es)" in text
    finally:
        stop(proc)


@pytest.mark.broker
def test_one_trace_from_dispatch_through_retry_to_success(make_settings, kafka: Cluster) -> None:
    otel = pytest.importorskip("opentelemetry.sdk.trace",
                               reason="the `otel` extra (opentelemetry-sdk) is not installed")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    from protojobs.observe import tracing
    exporter = InMemorySpanExporter()
    provider = otel.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = make_settings({"flaky": {"handler": "engine_jobs:flaky", "partitions": 1}})
    dispatcher = Dispatcher(settings, hooks=[tracing.Tracing(provider)])
    with provider.get_tracer("web").start_as_current_span("POST /signup") as request:
        job_id = dispatcher.dispatch("flaky", {"n": 1, "fail": 1})
    trace_id = request.get_span_context().trace_id
    admin.ensure_topics(settings)
    routing = RouterThread(Router(settings)).start()
    worker = Running(Worker(settings, WorkerOptions(), hooks=[tracing.Tracing(provider)]))
    try:
        wait_for(lambda: worker.worker.counters.done == 1, timeout=30, what="the retried job to succeed")
    finally:
        worker.stop()
        routing.stop()
    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {trace_id}  # one trace, from the web request on
    (publish,) = [s for s in spans if s.kind == SpanKind.PRODUCER]
    attempts = sorted((s for s in spans if s.name == "flaky process"), key=lambda s: s.start_time or 0)
    (retry,) = [s for s in spans if s.name == "flaky retry"]
    assert [s.attributes["protojobs.attempt"] for s in attempts] == [1, 2]
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.UNSET]
    assert all(s.parent is not None and s.parent.span_id == publish.context.span_id for s in attempts + [retry])
    assert publish.parent is not None and publish.parent.span_id == request.get_span_context().span_id
    assert attempts[0].attributes["messaging.message.id"] == job_id
    # the traceparent travelled in the record headers (first attempt and the retry copy)
    topic = topics.queue_topic(settings.kafka.topic_prefix, "flaky")
    wanted = f"00-{trace_id:032x}-{publish.context.span_id:016x}-"  # then the trace flags
    headers = [dict(h) for h in read_headers(kafka.bootstrap, topic, 2)]
    assert len(headers) == 2 and all(h["traceparent"].decode().startswith(wanted) for h in headers), headers


def read_headers(bootstrap: str, topic: str, expected: int) -> list[list[tuple[str, bytes]]]:
    from confluent_kafka import Consumer

    from protojobs.testing import profile

    consumer = Consumer(profile.consumer(bootstrap, f"reader-{time.monotonic_ns()}"))
    consumer.subscribe([topic])
    out: list[list[tuple[str, bytes]]] = []
    deadline = time.monotonic() + 20
    while len(out) < expected and time.monotonic() < deadline:
        out += [list(m.headers() or []) for m in consumer.consume(100, 0.5) if m.error() is None]
    consumer.close()
    return out


@pytest.mark.broker
def test_readyz_follows_the_broker_proxy_healthz_stays_ok(kafka: Cluster, toxiproxy, fresh_prefix: str,
                                                          tmp_path: Path) -> None:
    tree = settings_tree(kafka.proxied_bootstrap, fresh_prefix, {"work": {"handler": "engine_jobs:record"}})
    path = write_config(tmp_path / "jobs.toml", tree)
    record, port = tmp_path / "runs.jsonl", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn_worker(path, record, "--metrics-port", str(port))
    try:
        wait_status(url + "/readyz", 200, timeout=60)
        toxiproxy.client_proxy(kafka).disable()
        cut = time.monotonic()
        wait_status(url + "/readyz", 503, timeout=6)  # within the session timeout
        status, reason = get(url + "/readyz")
        assert status == 503 and "broker unreachable" in reason, reason
        assert main.main(["health", "--url", url, "--ready"]) == 1
        while time.monotonic() - cut < 8:  # the worker keeps polling: alive, not stuck
            assert get(url + "/healthz")[0] == 200
            time.sleep(0.5)
        toxiproxy.client_proxy(kafka).enable()
        wait_status(url + "/readyz", 200, timeout=40)  # ready again after healing
        assert get(url + "/healthz")[0] == 200
        assert main.main(["health", "--url", url]) == 0
    finally:
        toxiproxy.client_proxy(kafka).enable()
        stop(proc)


# --- no broker --------------------------------------------------------------------------------


def test_health_command_reports_an_unreachable_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["health", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2"]) == 1
    assert "did not answer" in capsys.readouterr().err


def test_json_logs_carry_the_job_fields() -> None:
    stream = io.StringIO()
    handler = logs.configure("json", stream=stream)
    try:
        logging.getLogger("protojobs.worker").warning("job failed: %s", "boom", extra={
            "queue": "emails", "topic": "t-emails", "partition": 2, "offset": 41, "job_id": "01J", "attempt": 1})
        logging.getLogger("protojobs.router").warning("plain")
    finally:
        logging.getLogger().removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["level"] == "WARNING" and first["logger"] == "protojobs.worker"
            and first["message"] == "job failed: boom")
    assert {k: first[k] for k in logs.JOB_FIELDS} == {"queue": "emails", "topic": "t-emails", "partition": 2,
                                                       "offset": 41, "job_id": "01J", "attempt": 1}
    assert first["ts"].endswith("Z") and "queue" not in second


def test_job_label_cardinality_is_capped() -> None:
    hook = metrics.JobMetrics()
    now = int(time.time() * 1000)
    for i in range(metrics.MAX_JOB_LABELS + 20):
        env = envelope.new_envelope("capped", f"job{i}", {}, now_ms=now)
        hook.before_process(env, None)
        hook.after_process(env, None, 0.01)
    hook.flush()
    names = {s.labels["job"] for f in metrics.JOBS.collect() for s in f.samples
             if s.labels.get("queue") == "capped" and s.name == "protojobs_jobs_total"}
    assert len(names) == metrics.MAX_JOB_LABELS + 1 and "other" in names

