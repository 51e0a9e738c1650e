"""Periodic schedules against a real broker, with real `protojobs run` processes: each tick is
dispatched exactly once across processes, a SIGKILLed leader is replaced within the session
timeout without a tick fired twice, and dynamic schedules survive a restart of every worker.

What was dispatched is read back from the queue topic (read_committed): a job's id is
`sched-<name>-<tick_ms>`, so a tick fired twice would show as two records with one id.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from conftest import settings_tree, wait_for, write_config
from test_engine import runs, spawn_worker

from protojobs import config
from protojobs.api.facade import Jobs
from protojobs.cli import schedules as schedules_cli
from protojobs.model import envelope
from protojobs.model import names as topics
from protojobs.ops import schedules as schedules_ops
from protojobs.testing import Cluster, profile

pytestmark = pytest.mark.broker
TESTS = Path(__file__).resolve().parent
SESSION_S = profile.CONSUMER["session.timeout.ms"] / 1000


def _setup(kafka: Cluster, prefix: str, tmp_path: Path, **schedules: dict[str, Any]) -> tuple[config.Settings, Path]:
    tree = settings_tree(kafka.bootstrap, prefix, {"work": {"handler": "engine_jobs:record", "partitions": 1}},
                         schedules=schedules)
    path = write_config(tmp_path / "jobs.toml", tree)
    return config.from_dict(tree, TESTS.parent), path


def dispatched(settings: config.Settings, queue: str = "work", quiet: float = 1.5) -> list[envelope.Envelope]:
    """Every job on the queue topic (committed records only), read until `quiet` s bring nothing."""
    consumer = Consumer(profile.consumer(settings.kafka.brokers, f"reader-{time.monotonic_ns()}",
                                         **{"isolation.level": "read_committed"}))
    topic = topics.queue_topic(settings.kafka.topic_prefix, queue)
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out: list[envelope.Envelope] = []
    last = time.monotonic()
    deadline = last + 30
    while time.monotonic() - last < quiet and time.monotonic() < deadline:
        got = [m for m in consumer.consume(200, 0.3) if m.error() is None]
        if got:
            last = time.monotonic()
            out += [envelope.decode(m.value()) for m in got]
    consumer.close()
    return out


def ticks(jobs: list[envelope.Envelope], name: str) -> list[int]:
    prefix = f"sched-{name}-"
    return sorted(int(j.id[len(prefix):]) for j in jobs if j.id.startswith(prefix))


def no_duplicates(jobs: list[envelope.Envelope]) -> None:
    twice = [i for i, n in Counter(j.id for j in jobs).items() if n > 1]
    assert not twice, f"ticks dispatched more than once: {twice}"


def leader_slot(settings: config.Settings) -> int | None:
    who = schedules_ops.leader(settings)
    return int(who.split()[0].rsplit("-", 1)[1]) if who else None


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_two_workers_fire_each_tick_once_and_survive_a_killed_leader(
        kafka: Cluster, fresh_prefix: str, tmp_path: Path) -> None:
    settings, path = _setup(kafka, fresh_prefix, tmp_path, tick={"queue": "work", "every": "1s", "data": {"n": 1}})
    record = tmp_path / "runs.jsonl"
    procs = {slot: spawn_worker(path, record, "--slot", str(slot)) for slot in (0, 1)}
    try:
        # phase 1: both processes up for ~8 s; one leads, every tick fired once
        wait_for(lambda: len(runs(record)) >= 2, timeout=40, what="the first ticks")
        time.sleep(8)
        slot = leader_slot(settings)
        assert slot in procs
        before = len(runs(record))
        wait_for(lambda: len(runs(record)) > before, timeout=5, what="a fresh tick")  # kill between two ticks
        killed_at = time.time() * 1000
        procs[slot].send_signal(signal.SIGKILL)
        procs[slot].wait(10)
        # phase 2: the other process takes over within the session timeout (plus loading)
        wait_for(lambda: leader_slot(settings) == 1 - slot, timeout=SESSION_S + 10, what="a new leader")
        wait_for(lambda: any(j.dispatched_at > killed_at for j in dispatched(settings, quiet=0.5)),
                 timeout=SESSION_S + 10, what="a tick from the new leader")
        time.sleep(4)
    finally:
        stop(*procs.values())
    jobs = dispatched(settings)
    no_duplicates(jobs)
    fired = ticks(jobs, "tick")
    old = [j for j in jobs if j.dispatched_at <= killed_at]
    new = sorted((j for j in jobs if j.dispatched_at > killed_at), key=lambda j: j.available_at)
    assert len(old) >= 8 and len(new) >= 3
    last_old, first_new = max(j.available_at for j in old), new[0]
    gaps = [b - a for a, b in zip(fired, fired[1:], strict=False)]
    assert gaps.count(1000) == len(gaps) - 1, gaps  # every tick once, except across the failover
    # the takeover came within the session timeout (plus reading the topic and one tick)
    assert first_new.dispatched_at - killed_at < (SESSION_S + 4) * 1000, first_new.dispatched_at - killed_at
    # catch_up = "once": the ticks missed during the takeover made exactly one job, the latest
    missed = (first_new.available_at - last_old) // 1000
    assert missed >= 2 and 0 <= first_new.dispatched_at - first_new.available_at < 1000
    assert all(j.id == f"sched-tick-{j.available_at}" for j in jobs)


def test_dynamic_schedules_survive_a_restart_of_every_worker(
        kafka: Cluster, fresh_prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings, path = _setup(kafka, fresh_prefix, tmp_path)
    record = tmp_path / "runs.jsonl"
    jobs_api = Jobs(settings)
    procs = [spawn_worker(path, record, "--slot", "0"), spawn_worker(path, record, "--slot", "1")]
    try:
        every = jobs_api.schedule_every("record", 1, {"n": 7}, queue="work")
        gone = jobs_api.schedule_every("record", 1, {"n": 8}, queue="work")
        daily = jobs_api.schedule_daily("record", "09:00", {"n": 9}, queue="work", tz="Europe/Paris")
        wait_for(lambda: len(ticks(dispatched(settings, quiet=0.3), every)) >= 2, timeout=40, what="dynamic ticks")
        assert jobs_api.unschedule(gone) is True and jobs_api.unschedule("dyn-nope") is False
        assert schedules_cli.list_command(str(path), as_json=True) == 0
        listed = json.loads(capsys.readouterr().out)
        names = {row["name"]: row for row in listed["schedules"]}
        assert every in names and daily in names and listed["leader"].startswith("scheduler-")
        assert names[daily]["rule"] == "cron '0 9 * * *' Europe/Paris" and names[daily]["next_fire"]
        at_ms = int(time.time() * 1000) + 8000  # due while every worker is down
        once = jobs_api.schedule_at("record", at_ms / 1000, {"n": 10}, queue="work")
        time.sleep(1)
    finally:
        stop(*procs)
    stopped_at = time.time() * 1000
    before = ticks(dispatched(settings), gone)
    time.sleep(max(3.0, (at_ms - stopped_at) / 1000 + 1))  # every worker down: ticks missed, the one-shot due
    restarted_at = time.time() * 1000
    assert ticks(dispatched(settings, quiet=0.3), once) == []
    procs = [spawn_worker(path, record, "--slot", "0"), spawn_worker(path, record, "--slot", "1")]
    try:
        wait_for(lambda: len([t for t in ticks(dispatched(settings, quiet=0.3), every) if t > restarted_at]) >= 2,
                 timeout=40, what="the dynamic schedule after the restart")
        wait_for(lambda: ticks(dispatched(settings, quiet=0.3), once) == [at_ms], timeout=10, what="the one-shot")
    finally:
        stop(*procs)
    jobs = dispatched(settings)
    no_duplicates(jobs)
    fired = ticks(jobs, every)
    down = [t for t in fired if stopped_at < t <= restarted_at]
    assert len(down) <= 1  # catch_up = "once": the outage's ticks made at most one job
    after = [t for t in fired if t > stopped_at]
    assert all(b - a == 1000 for a, b in zip(after, after[1:], strict=False))  # then every tick once
    assert ticks(jobs, gone) == before  # unscheduled: nothing after
    assert ticks(jobs, once) == [at_ms]
    assert {j.data["n"] for j in jobs if j.id.startswith(f"sched-{every}-")} == {7}
    assert runs(record)  # the jobs ran


def test_pause_and_resume_from_the_command_line(kafka: Cluster, fresh_prefix: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    settings, path = _setup(kafka, fresh_prefix, tmp_path, beat={"queue": "work", "every": "1s", "catch_up": "all"})
    record = tmp_path / "runs.jsonl"
    proc = spawn_worker(path, record)
    try:
        wait_for(lambda: len(ticks(dispatched(settings, quiet=0.3), "beat")) >= 2, timeout=40, what="ticks")
        assert schedules_cli.control_command(str(path), "pause", "beat") == 0
        paused_at = time.time() * 1000
        time.sleep(4)
        resumed_at = time.time() * 1000  # the resume record's time is later than this
        assert schedules_cli.control_command(str(path), "resume", "beat") == 0
        wait_for(lambda: max(ticks(dispatched(settings, quiet=0.3), "beat")) > resumed_at + 1000, timeout=20,
                 what="ticks after resume")
        assert schedules_cli.control_command(str(path), "remove", "beat") == 1  # declared in jobs.toml
    finally:
        stop(proc)
    fired = ticks(dispatched(settings), "beat")
    assert not [t for t in fired if paused_at + 1500 < t <= resumed_at]  # catch_up = "all" skips a pause
    assert "beat: paused" in capsys.readouterr().out
