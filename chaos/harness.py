"""One chaos example against a real cluster: fresh topics and group, real `protojobs run` worker
processes behind toxiproxy, a background dispatcher, faults applied as JSON ops, then heal,
settle, drain and check.

A schedule is a JSON file: {"cluster", "mode", "workers", "ops": [...]} where every op is
concrete (jobs with their payloads, toxics with their attributes, resolved broker nodes), so
`Example.replay` runs it again exactly, op by op and at the same offsets from the start.

Ops (`at` = seconds since the example started, recorded; a replay never runs an op sooner):
  dispatch    {"jobs": [{"n", "queue", "kind", "fail", "key", "delay_ms", "sleep"}]}  (background)
  toxic       {"target": "all" | node, "kind", "stream", "attrs", "hold", "persist"}
  disable     {"target": "all" | node, "hold"}          client proxies cut for `hold` seconds
  isolate     {"node", "hold"}                           its INTERNAL + CONTROLLER proxies down
  kill_broker {"node" | "busiest", "down"}               SIGKILL, `down` s, restart
  toxic       ... "role": "internal" | "controller"      the same toxics on the brokers' peer
                                                         or controller listeners (3 nodes only)
  worker      {"worker", "signal": kill|term|stop, "hold"}
  churn       {"cycles", "up"}                           extra workers join, stay `up` s, leave
  hostile     {"records": [{"shape", "role", "queue", "id"}]}  raw producer, DIRECT listeners
  clear_replay {"queue"}                                 clear the queue, then dlq replay its poison jobs
  load        {"rate", "seed"}                           a steady background workload until the end
  heal        {}                                         every toxic removed, every proxy up
  pause       {"seconds"}
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from chaos.checker import DeadRecord, Drain, Record, Result, check
from chaos.history import (
    ACKED,
    FAILED,
    INDEFINITE,
    Dispatch,
    FaultEvent,
    History,
    Hostile,
    QueueInfo,
    Recorder,
    WorkerExit,
    read_parked,
)
from protojobs import config
from protojobs.config import to_toml
from protojobs.engine.dispatch import DeliveryUncertain, Dispatcher, DispatchError, Outcome, now_ms
from protojobs.kafka import admin
from protojobs.model import dead_letter, envelope
from protojobs.model import names as topics
from protojobs.ops import dlq
from protojobs.ops.clear import clear
from protojobs.testing import Cluster, Toxiproxy, profile

log = logging.getLogger("chaos")
ROOT = Path(__file__).resolve().parents[1]
MAX_ATTEMPTS = 3
TIERS = ["200ms", "1s", "3s"]
SETTLE_TIMEOUT = float(os.environ.get("CHAOS_SETTLE_TIMEOUT", "90"))
# a random example runs at least this long before its teardown, so the background load puts
# thousands of jobs through its faults (a replay keeps its recorded teardown time instead)
MIN_SECONDS = float(os.environ.get("CHAOS_MIN_SECONDS", "20"))
STRICT_TIMEOUT_S = 1.0  # the strict queue's handler timeout; its blocking retries back off 2 s


@dataclass
class ChaosEnv:
    """Where examples run: a cluster (1 node, or 3 in the chaos profile), its toxiproxy, a work dir."""

    name: str  # "single" | "cluster"
    cluster: Cluster
    server: Toxiproxy
    work_dir: Path

    @property
    def nodes(self) -> int:
        return self.cluster.nodes

    def proxy_name(self, role: str, node: int) -> str:
        return f"{self.cluster.state_dir.name}-{role}-{node + 1}"

    def client_proxies(self, target: str | int, role: str = "client") -> list[str]:
        nodes = range(self.nodes) if target == "all" else [int(target)]
        return [self.proxy_name(role, i) for i in nodes]


def queue_tree(env: ChaosEnv, prefix: str, mode: str, bootstrap: str) -> dict[str, Any]:
    """The jobs.toml of one example: a plain queue (retries through tiers) and a key-ordered one
    with blocking retries; both run chaos.jobs:run."""
    rf = 3 if env.nodes >= 3 else 1
    return {
        "kafka": {"brokers": bootstrap, "group_id": f"{prefix}group", "topic_prefix": prefix, "compression": "lz4",
                  "producer": dict(profile.PRODUCER), "consumer": dict(profile.CONSUMER)},
        "delays": {"tiers": TIERS},
        "retry": {"default": {"max_attempts": MAX_ATTEMPTS, "backoff": "fixed", "base": "300ms", "jitter": 0},
                  "slow": {"max_attempts": MAX_ATTEMPTS, "backoff": "fixed", "base": "2s", "jitter": 0}},
        "defaults": {"partitions": 3, "replication_factor": rf, "concurrency": 4, "timeout": "20s", "delivery": mode},
        "queues": {"plain": {"handler": "chaos.jobs:run"},
                   "ordered": {"handler": "chaos.jobs:run", "ordering": "key", "key": "k", "blocking_retries": True},
                   # hangs past a 1 s timeout, failed() that blocks, blocking retries backing off 2 s
                   "strict": {"handler": "chaos.jobs:Strict", "ordering": "key", "key": "k", "blocking_retries": True,
                              "timeout": f"{STRICT_TIMEOUT_S:g}s", "retry": "slow", "partitions": 2}},
    }


def exactly_once_support() -> str | None:
    """None if the engine accepts `delivery = "exactly_once"` (protojobs.transactions runs it),
    else why not (the reason to skip)."""
    tree = {"kafka": {"brokers": "127.0.0.1:1", "group_id": "probe", "topic_prefix": "probe-"},
            "defaults": {"delivery": "exactly_once"}, "queues": {"q": {"handler": "chaos.jobs:run"}}}
    try:
        config.from_dict(tree, ROOT)
    except config.ConfigError as err:
        return f'the engine rejects delivery = "exactly_once": {err}'
    return None


@functools.cache
def run_has_slot() -> bool:
    """`protojobs run --slot N` exists (exactly-once: each process of a host needs its own slot)."""
    out = subprocess.run([sys.executable, "-m", "protojobs.cli", "run", "--help"], capture_output=True, text=True)
    return "--slot" in out.stdout


# --- reading topics over the DIRECT listeners ----------------------------------------------------


class TopicReader:
    """Reads whole topics from the beginning (assign, read_committed, no group commits)."""

    def __init__(self, bootstrap: str, names: Iterable[str]) -> None:
        self.consumer = Consumer(profile.consumer(bootstrap, f"chaos-reader-{uuid.uuid4().hex[:8]}",
                                                  **{"isolation.level": "read_committed",
                                                     "enable.partition.eof": False}))
        meta = self.consumer.list_topics(timeout=15)
        self.partitions = [TopicPartition(t, p, OFFSET_BEGINNING) for t in names
                           for p in sorted(meta.topics[t].partitions)]
        self.consumer.assign(self.partitions)
        self.records: list[tuple[str, int, int, int, bytes | None]] = []  # topic, partition, offset, ts, value
        self.position: dict[tuple[str, int], int] = {}

    def poll(self, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        got = 0
        while True:
            for m in self.consumer.consume(500, max(0.0, min(0.2, deadline - time.monotonic()))):
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("drain: %s", m.error().str())
                    continue
                topic, part, off = str(m.topic()), int(m.partition() or 0), int(m.offset() or 0)
                self.records.append((topic, part, off, m.timestamp()[1], m.value()))
                self.position[(topic, part)] = off + 1
                got += 1
            if time.monotonic() >= deadline:
                return got

    def read_to_end(self, timeout: float) -> tuple[bool, str]:
        """Read until every partition's position reaches the end offset measured now."""
        ends = {}
        for tp in self.partitions:
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10,
                                                             cached=False)
            ends[(tp.topic, tp.partition)] = high
        deadline = time.monotonic() + timeout
        while True:
            self.poll(0.3)
            behind = {}
            for key, high in ends.items():
                if high <= 0:
                    continue
                pos = self.consumer.position([TopicPartition(*key)])[0].offset
                if max(pos, self.position.get(key, 0)) < high:
                    behind[key] = (max(pos, self.position.get(key, 0)), high)
            if not behind:
                return True, ""
            if time.monotonic() > deadline:
                return False, f"partitions not read to their end (position, end): {behind}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.consumer.close()


def to_drain(records: list[tuple[str, int, int, int, bytes | None]], queue_topics: set[str],
             dead_topics: set[str]) -> Drain:
    drain = Drain()
    for topic, part, off, ts, value in records:
        if topic in dead_topics:
            try:
                dl = dead_letter.decode_dead_letter(value)
            except envelope.EnvelopeError as err:
                drain.dead.append(DeadRecord(topic, part, off, ts, None, problem=str(err)))
                continue
            env = dl.envelope
            drain.dead.append(DeadRecord(topic, part, off, ts, env.id if env else None, env.queue if env else None,
                                         env.key if env else None, dl.error_type, dl.attempts, dl.reason, dl.topic,
                                         dl.first_failed_at, dl.failed_at,
                                         None if env else f"raw record: {(dl.raw or '')[:80]}",
                                         dl.partition, dl.offset))
            continue
        try:
            e = envelope.decode(value)
            rec = Record(topic, part, off, e.id, e.attempt, ts)
        except envelope.EnvelopeError:
            rec = Record(topic, part, off, None, None, ts)
        (drain.queue_records if topic in queue_topics else drain.tier_records).append(rec)
    return drain


# --- worker processes ---------------------------------------------------------------------------


class WorkerProc:
    """One `python -m protojobs.cli run` process (its own session: a pidfile lets cleanup kill it)."""

    def __init__(self, slot: int, config_file: Path, record: Path, pid_dir: Path,
                 recorder: Recorder | None = None) -> None:
        self.slot, self.config_file, self.record, self.pid_dir = slot, config_file, record, pid_dir
        self.recorder = recorder
        self.proc: subprocess.Popen[bytes] | None = None
        self.incarnation = 0
        self.stopped = False  # SIGSTOPped
        self.expected_exit = False
        self.unexpected_exits: list[int] = []

    def start(self) -> None:
        env = dict(os.environ, PROTOJOBS_CHAOS_RECORD=str(self.record),
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        log_file = self.record.parent / f"worker-{self.slot}-{self.incarnation}.log"
        self.incarnation += 1
        with open(log_file, "wb") as out:
            cmd = [sys.executable, "-m", "protojobs.cli", "run", "--config", str(self.config_file)]
            if run_has_slot():
                cmd += ["--slot", str(self.slot)]
            self.proc = subprocess.Popen(cmd,
                                         env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        (self.pid_dir / f"worker-{self.proc.pid}.pid").write_text(str(self.proc.pid))
        self.expected_exit, self.stopped = False, False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reap(self) -> None:
        """Note an exit we did not cause (the worker crashed), and forget its pidfile."""
        if self.proc is not None and self.proc.poll() is not None:
            if not self.expected_exit:
                self.unexpected_exits.append(self.proc.returncode)
                if self.recorder is not None:
                    self.recorder.worker_exited(WorkerExit(self.slot, self.proc.returncode, time.time()))
            (self.pid_dir / f"worker-{self.proc.pid}.pid").unlink(missing_ok=True)
            self.proc = None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        self.expected_exit = True
        if self.stopped:
            self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        if not self.wait(timeout):
            self.signal(signal.SIGKILL)
            self.wait(10)
        self.reap()


# --- the example ----------------------------------------------------------------------------


@dataclass
class Outcome_:
    result: Result
    history: History
    schedule: Path
    unexpected_worker_exits: int = 0
    faults: dict[str, int] = field(default_factory=dict)


class Example:
    def __init__(self, env: ChaosEnv, mode: str, schedule_path: Path, workers: int = 2,
                 meta: dict[str, Any] | None = None) -> None:
        self.env, self.mode, self.schedule_path = env, mode, schedule_path
        self.prefix = f"chaos-{uuid.uuid4().hex[:8]}-"
        self.dir = env.work_dir / self.prefix.rstrip("-")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tree = queue_tree(env, self.prefix, mode, env.cluster.proxied_bootstrap)
        self.config_file = self.dir / "jobs.toml"
        self.config_file.write_text(to_toml(self.tree))
        self.settings = config.from_dict(self.tree, ROOT)
        self.direct = config.from_dict(queue_tree(env, self.prefix, mode, env.cluster.bootstrap), ROOT)
        self.queue_info = {name: QueueInfo(name, topics.queue_topic(self.prefix, name), q.ordering,
                                           q.blocking_retries, q.dead_letter_topic)
                           for name, q in self.settings.queues.items()}
        self.record = self.dir / "runs.jsonl"
        self.recorder = Recorder(mode, MAX_ATTEMPTS, self.queue_info, [self.record])
        self.recorder.parked_reader = lambda: read_parked(sorted(self.dir.glob("worker-*.log")))
        self.pid_dir = env.cluster.state_dir.parent / "chaos-workers"
        self.workers = [WorkerProc(i, self.config_file, self.record, self.pid_dir, self.recorder)
                        for i in range(workers)]
        self.churning: list[WorkerProc] = []
        self.load_stop = threading.Event()
        self.load_thread: threading.Thread | None = None
        self.load_error: BaseException | None = None
        self.schedule: dict[str, Any] = {"version": 1, "cluster": env.name, "mode": mode, "workers": workers,
                                         "ops": [], **(meta or {})}
        self.persistent: list[tuple[FaultEvent, str, str]] = []  # fault, proxy, toxic name
        self.batches: queue.Queue[list[dict[str, Any]] | None] = queue.Queue()
        self.dispatch_error: BaseException | None = None
        self.dispatcher: Dispatcher | None = None
        self.sender = threading.Thread(target=self._dispatch_loop, name="chaos-dispatch", daemon=True)
        self.t0 = 0.0
        self.n = 0
        self.min_seconds = 0.0  # the teardown waits until the example ran this long

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Example:
        self.env.server.reset()
        admin.ensure_topics(self.direct)  # over DIRECT: topic creation is set-up, not under test
        self.dispatcher = Dispatcher(self.settings, ensure_topics=False)
        self.sender.start()
        for w in self.workers:
            w.start()
        self.t0 = time.monotonic()
        self._save()
        return self

    def _save(self) -> None:
        self.schedule_path.parent.mkdir(parents=True, exist_ok=True)
        self.schedule_path.write_text(json.dumps(self.schedule, indent=1))

    def apply(self, op: dict[str, Any]) -> None:
        """Run one op now and append it (with its resolved values) to the schedule."""
        op = dict(op)
        op["at"] = round(time.monotonic() - self.t0, 3)
        self._supervise()
        handler = getattr(self, f"_op_{op['op']}")
        self.schedule["ops"].append(op)
        self._save()
        handler(op)
        self._save()

    def replay(self, ops: list[dict[str, Any]]) -> None:
        for op in ops:
            wait = float(op.get("at", 0)) - (time.monotonic() - self.t0)
            if wait > 0:
                time.sleep(wait)
            self.apply({k: v for k, v in op.items() if k != "at"})

    def _supervise(self) -> None:
        """A worker that exited without being told to is noted and started again (like a supervisor)."""
        for w in self.workers:
            if w.proc is not None and not w.alive():
                w.reap()
                if not w.expected_exit:
                    log.warning("worker %d exited on its own; restarting it", w.slot)
                    w.start()

    # --- ops ------------------------------------------------------------------------------

    def _op_dispatch(self, op: dict[str, Any]) -> None:
        """Queue a batch for the dispatch thread; its misbehaving handlers count as faults
        (`handler:hang`, `handler:block_failed`) so the report shows them."""
        for kind, n in (("hang", sum(j["kind"] == "hang" for j in op["jobs"])),
                        ("block_failed", sum(bool(j.get("block_failed")) for j in op["jobs"]))):
            if n:
                now = time.time()
                self.recorder.fault(FaultEvent(f"handler:{kind}", "strict", now, now, {"jobs": n}))
        self.batches.put(op["jobs"])

    def _op_pause(self, op: dict[str, Any]) -> None:
        time.sleep(float(op["seconds"]))

    def _fault(self, kind: str, target: str, **detail: Any) -> FaultEvent:
        return self.recorder.fault(FaultEvent(kind, target, time.time(), None, detail))

    def _op_toxic(self, op: dict[str, Any]) -> None:
        role = op.get("role", "client")
        names = self.env.client_proxies(op["target"], role)
        toxic = f"chaos_{op['kind']}_{op['stream']}"
        kind = f"toxic:{op['kind']}" if role == "client" else f"toxic@{role}:{op['kind']}"
        event = self._fault(kind, str(op["target"]), **op["attrs"])
        for name in names:
            proxy = self.env.server.proxy(name)
            with contextlib.suppress(Exception):
                proxy.remove_toxic(toxic)
            proxy.add_toxic(op["kind"], stream=op["stream"], name=toxic, **op["attrs"])
        time.sleep(float(op["hold"]))
        if op.get("persist"):
            self.persistent += [(event, name, toxic) for name in names]
            return
        for name in names:
            with contextlib.suppress(Exception):
                self.env.server.proxy(name).remove_toxic(toxic)
        event.end = time.time()

    def _op_disable(self, op: dict[str, Any]) -> None:
        self._cut(self.env.client_proxies(op["target"]), "disable", str(op["target"]), float(op["hold"]))

    def _op_isolate(self, op: dict[str, Any]) -> None:
        node = int(op["node"])
        names = [self.env.proxy_name("internal", node), self.env.proxy_name("controller", node)]
        self._cut(names, "isolate", str(node), float(op["hold"]))

    def _cut(self, names: list[str], kind: str, target: str, hold: float) -> None:
        event = self._fault(kind, target, hold=hold)
        for name in names:
            self.env.server.proxy(name).disable()
        try:
            time.sleep(hold)
        finally:
            for name in names:
                self.env.server.proxy(name).enable()
            event.end = time.time()

    def _op_kill_broker(self, op: dict[str, Any]) -> None:
        if op.get("node", "busiest") == "busiest":
            op["node"] = self._busiest_leader()
        node = int(op["node"])
        event = self._fault("kill_broker", str(node), down=op["down"])
        self.env.cluster.kill_node(node, signal.SIGKILL)
        time.sleep(float(op["down"]))
        self.env.cluster.restart_node(node)
        self.env.cluster.wait_ready(90)  # every node in the metadata and the coordinator answering
        event.end = time.time()

    def _busiest_leader(self) -> int:
        """The node leading the queue partition with the most records (metadata over DIRECT)."""
        client = admin.client(self.direct)
        best, node = -1, 0
        with contextlib.suppress(Exception):
            meta = admin.list_topics(client, timeout=10)
            for q in self.queue_info.values():
                for p, info in meta.topics[q.topic].partitions.items():
                    _low, high = admin.watermarks(client, q.topic).get(p, (0, 0))
                    if high > best and info.leader > 0:
                        best, node = high, info.leader - 1
        return node

    def _op_worker(self, op: dict[str, Any]) -> None:
        w = self.workers[int(op["worker"]) % len(self.workers)]
        sig, hold = op["signal"], float(op["hold"])
        event = self._fault(f"worker:{sig}", str(w.slot), hold=hold)
        if not w.alive():
            w.reap()
            w.start()
        if sig == "stop":
            w.signal(signal.SIGSTOP)
            w.stopped = True
            time.sleep(hold)
            w.signal(signal.SIGCONT)
            w.stopped = False
        else:
            w.expected_exit = True
            w.signal(signal.SIGKILL if sig == "kill" else signal.SIGTERM)
            if not w.wait(30):
                w.signal(signal.SIGKILL)
                w.wait(10)
            w.reap()
            time.sleep(hold)
            w.start()
        event.end = time.time()

    def _op_churn(self, op: dict[str, Any]) -> None:
        """Workers join the group and leave it every few seconds while jobs flow (SIGTERM: a
        graceful leave, so each cycle is two rebalances)."""
        event = self._fault("churn", "group", cycles=op["cycles"], up=op["up"])
        while len(self.churning) < 2:
            slot = len(self.workers) + len(self.churning)
            self.churning.append(WorkerProc(slot, self.config_file, self.record, self.pid_dir, self.recorder))
        for i in range(int(op["cycles"])):
            w = self.churning[i % len(self.churning)]
            w.start()
            time.sleep(float(op["up"]))
            w.stop(30)
        event.end = time.time()

    def _op_hostile(self, op: dict[str, Any]) -> None:
        """Write records protojobs never writes with a raw producer (DIRECT listeners: the
        faults are what they hold, not how they travel); note where each one landed."""
        event = self._fault("hostile", "topics", shapes=[r["shape"] for r in op["records"]])
        producer = Producer(profile.producer(self.env.cluster.bootstrap, **{"compression.type": "lz4"}))
        landed: list[tuple[dict[str, Any], Any]] = []
        for spec in op["records"]:
            topic, value, key, headers = hostile_record(self.prefix, spec, now_ms())
            producer.produce(topic, value, key, headers=headers,
                             on_delivery=lambda err, msg, spec=spec: landed.append((spec, (err, msg))))
        producer.flush(60)
        for spec, (err, msg) in landed:
            if err is not None:
                log.warning("hostile record %s not stored: %s", spec["shape"], err)
                continue
            role = spec["role"]
            self.recorder.wrote_hostile(Hostile(
                spec["shape"], str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0),
                int(msg.timestamp()[1]), spec.get("id") if spec["shape"] not in RAW_SHAPES else None,
                spec["shape"] in RUNNABLE_SHAPES, None if role == "control" else spec["queue"]))
        event.end = time.time()

    def _op_clear_replay(self, op: dict[str, Any]) -> None:
        """Clear a queue through the ops API (`protojobs clear`), then `dlq replay` its poison
        jobs dead-lettered so far: every replayed job must run again."""
        queue_name = op["queue"]
        event = self._fault("clear_replay", queue_name, queue=queue_name)
        cleared = clear(self.direct, queue_name)
        event.detail["cleared_at"] = now_ms()
        event.detail["deleted"] = cleared.records
        poison = {d.job_id for d in self.recorder.history().dispatches if d.kind == "poison" and d.queue == queue_name}
        entries = [e for e in dlq.read(self.direct, queue=queue_name) if e.job_id in poison and e.envelope]
        event.detail["replayed_at"] = now_ms()
        report = dlq.replay(self.direct, entries) if entries else None
        event.detail["replayed"] = sorted({e.job_id for e in report.replayed if e.job_id}) if report else []
        event.end = time.time()

    def _op_load(self, op: dict[str, Any]) -> None:
        """A steady background workload until the example ends: `rate` jobs/s in batches every
        250 ms, drawn from `seed` (mixed queues and keys, some delayed, flaky, poison)."""
        if self.load_thread is not None:
            return
        self.load_thread = threading.Thread(target=self._load_loop, args=(float(op["rate"]), int(op["seed"])),
                                            name="chaos-load", daemon=True)
        self.load_thread.start()

    def _load_loop(self, rate: float, seed: int) -> None:
        rng = random.Random(seed)
        dispatcher = Dispatcher(self.settings, ensure_topics=False)
        n = 1_000_000
        try:
            next_at = time.monotonic()
            while not self.load_stop.is_set():
                size = max(1, round(rate / 4))
                jobs = [load_job(rng, n + i) for i in range(size)]
                n += size
                self._send_batch(jobs, dispatcher)
                next_at += 0.25
                self.load_stop.wait(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at, time.monotonic() - 1)  # a stall (a fault) is not caught up in a burst
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.load_error = exc
            log.exception("load thread failed")
        finally:
            with contextlib.suppress(Exception):
                dispatcher.close(5)

    def _op_heal(self, _op: dict[str, Any] | None = None) -> None:
        self.env.server.reset()
        now = time.time()
        for event, _name, _toxic in self.persistent:
            if event.end is None:
                event.end = now
        self.persistent = []
        for w in self.workers:
            if w.stopped:
                w.signal(signal.SIGCONT)
                w.stopped = False
        for node in range(self.env.nodes):
            if node not in self.env.cluster.running_pids():
                self.env.cluster.restart_node(node)
                self.env.cluster.wait_ready(90)

    # --- dispatching ----------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        try:
            while True:
                batch = self.batches.get()
                if batch is None:
                    return
                self._send_batch(batch)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.dispatch_error = exc
            log.exception("dispatch thread failed")

    def _send_batch(self, batch: list[dict[str, Any]], dispatcher: Dispatcher | None = None) -> None:
        dispatcher = dispatcher or self.dispatcher
        assert dispatcher is not None
        sent: list[tuple[Dispatch, Outcome]] = []
        for job in batch:
            data = {"n": job["n"], "kind": job["kind"], "fail": job.get("fail", 0), "sleep": job.get("sleep", 0)}
            for extra in ("hang", "block_failed"):
                if job.get(extra):
                    data[extra] = job[extra]
            if job["queue"] in ("ordered", "strict"):
                data["k"] = job["key"]
            env = dispatcher.build(job["queue"], data, delay=(job.get("delay_ms") or 0) / 1000 or None)
            d = Dispatch(env.id, job["queue"], env.key, env.available_at, job["kind"], INDEFINITE,
                         self.recorder.next_seq(), job.get("fail", 0), bool(job.get("delay_ms")), now_ms(),
                         dispatched_at=env.dispatched_at)
            outcome = Outcome(env.id)
            try:
                dispatcher.send(env, outcome)
            except DispatchError as err:
                outcome.error, outcome.done = err, True
            sent.append((d, outcome))
        dispatcher.wait([o for _, o in sent])
        for d, outcome in sent:
            err = outcome.error
            d.outcome = ACKED if err is None else INDEFINITE if isinstance(err, DeliveryUncertain) else FAILED
            d.error = None if err is None else str(err)
            self.recorder.dispatched(d)

    # --- the end --------------------------------------------------------------------------

    def finish(self) -> Outcome_:
        """Heal, let every job settle (bounded), stop the workers, drain over DIRECT, check."""
        try:
            left = self.min_seconds - (time.monotonic() - self.t0)
            if left > 0:  # the load goes on through whatever faults are still on
                time.sleep(left)
            self._op_heal()
            self.schedule["ops"].append({"op": "heal", "at": round(time.monotonic() - self.t0, 3), "teardown": True})
            self.batches.put(None)
            self.load_stop.set()
            self.sender.join(float(profile.PRODUCER["message.timeout.ms"]) / 1000 + 15)
            if self.load_thread is not None:
                self.load_thread.join(float(profile.PRODUCER["message.timeout.ms"]) / 1000 + 15)
            self._supervise()
            for w in self.workers:
                if w.proc is None:
                    w.start()
            dead_topics = {q.dead_letter_topic for q in self.queue_info.values()} | {
                self.settings.kafka.dead_letter_topic}
            queue_topics = {q.topic for q in self.queue_info.values()}
            names = sorted(queue_topics | dead_topics
                           | {topics.delay_topic(self.prefix, t) for t in self.settings.tiers_ms})
            reader = TopicReader(self.env.cluster.bootstrap, names)
            try:
                settled_in = self._settle(reader, queue_topics, dead_topics)
                if settled_in >= SETTLE_TIMEOUT:  # jobs never settled: each worker's stacks go to its log
                    for w in self.workers:
                        w.signal(signal.SIGUSR1)
                    time.sleep(1.0)
                for w in self.workers:
                    w.stop()
                complete, note = reader.read_to_end(30)
                drain = to_drain(reader.records, queue_topics, dead_topics)
                drain.complete, drain.note = complete, note
            finally:
                reader.close()
            history = self.recorder.history()
            if self.dispatch_error is not None or self.load_error is not None:
                drain.complete, drain.note = False, \
                    f"a dispatch thread failed: {self.dispatch_error or self.load_error!r}"
            result = check(history, drain)
            exits = sum(len(w.unexpected_exits) for w in self.workers)
            faults: dict[str, int] = {}
            for f in history.faults:
                faults[f.kind] = faults.get(f.kind, 0) + 1
            self.schedule["result"] = {**result.to_json(), "settle_wait_s": settled_in,
                                       "unexpected_worker_exits": exits, "prefix": self.prefix}
            (self.dir / "history.json").write_text(json.dumps(history.to_json()))
            (self.dir / "drain.json").write_text(json.dumps(drain.to_json()))
            self._save()
            return Outcome_(result, history, self.schedule_path, exits, faults)
        finally:
            self.close()

    def _settle(self, reader: TopicReader, queue_topics: set[str], dead_topics: set[str]) -> float:
        """Wait until every job that must settle has (or SETTLE_TIMEOUT passes); return the wait."""
        start = time.monotonic()
        while time.monotonic() - start < SETTLE_TIMEOUT:
            reader.poll(0.5)
            self._supervise()
            drain = to_drain(reader.records, queue_topics, dead_topics)
            result = check(self.recorder.history(), drain)
            if not result.flagged("lost"):
                time.sleep(1.0)  # let in-flight duplicates and commits land
                return round(time.monotonic() - start, 2)
        return round(time.monotonic() - start, 2)

    def close(self) -> None:
        self.load_stop.set()
        for w in self.workers + self.churning:
            with contextlib.suppress(Exception):
                w.stop(10)
        self.batches.put(None)
        if self.dispatcher is not None:
            with contextlib.suppress(Exception):
                self.dispatcher.close(5)
        with contextlib.suppress(Exception):
            self.env.server.reset()


# --- hostile records and the background workload ----------------------------------------------

RAW_SHAPES = {"bad_utf8", "bad_version", "oversize_raw", "control"}  # no job id a dead-letter record keeps
RUNNABLE_SHAPES = {"bad_header", "bad_attempt_header"}  # decodable jobs of the normal kind: they run
HOSTILE_SHAPES = ["bad_utf8", "lone_surrogate", "oversize", "oversize_raw", "deep", "bad_version", "bad_header",
                  "bad_attempt_header", "control"]


def hostile_record(prefix: str, spec: dict[str, Any], now: int) -> tuple[str, bytes, bytes | None,
                                                                        list[tuple[str, bytes]]]:
    """(topic, value, key, headers) of one hostile record. spec: shape, role (queue | tier |
    control), queue, id (a job id, for the shapes that carry one)."""
    shape, queue_name, job_id = spec["shape"], spec.get("queue", "plain"), spec.get("id", "hostile")

    def hand_written(data_json: str, version: int = 1) -> bytes:
        return (f'{{"v":{version},"id":"{job_id}","queue":"{queue_name}","job":"x","attempt":1,"dispatched_at":{now},'
                f'"available_at":{now},"key":null,"data":{data_json}}}').encode()

    headers: list[tuple[str, bytes]] = []
    if spec["role"] == "control":
        return topics.control_topic(prefix), b"\xff\xfe{not a control record", f"clear/{queue_name}".encode(), []
    if shape == "bad_utf8":
        value = b'{"v":1,"id":"\xff\xfe\xc3\x28","data":{}}'
    elif shape == "lone_surrogate":  # valid JSON, as a JavaScript producer may write it
        value = hand_written('{"kind":"poison","n":-1,"s":"\\ud800 alone"}')
    elif shape == "oversize":  # a valid job just under message.max.bytes: its copies must be cut down
        value = hand_written('{"kind":"poison","n":-2,"pad":"' + "x" * 990_000 + '"}')
    elif shape == "oversize_raw":
        value = b"\x00\xff" * 450_000
    elif shape == "deep":
        value = hand_written('{"kind":"poison","n":-3,"d":' + '{"d":' * 420 + "1" + "}" * 420 + "}")
    elif shape == "bad_version":
        value = hand_written('{"kind":"normal","n":-4}', version=99)
    elif shape == "bad_header":  # '²'.isdigit() is True, int('²') raises
        value = hand_written('{"kind":"normal","n":-5}')
        headers = [(envelope.H_QUEUE, queue_name.encode()), (envelope.H_AVAILABLE_AT, str(now).encode()),
                   (envelope.H_DISPATCHED_AT, "²".encode())]
    elif shape == "bad_attempt_header":
        value = hand_written('{"kind":"normal","n":-6}')
        headers = [(envelope.H_ATTEMPT, "²".encode()), (envelope.H_ID, b"\xff")]
    else:
        raise ValueError(f"unknown hostile shape {shape!r}")
    tier = spec["role"] == "tier"
    return topics.delay_topic(prefix, 200) if tier else topics.queue_topic(prefix, queue_name), value, None, headers


def load_job(rng: random.Random, n: int) -> dict[str, Any]:
    """One job of the background workload: mostly normal, some flaky, a few poison, some delayed."""
    queue_name = rng.choice(["plain", "plain", "ordered"])
    kind = rng.choices(["normal", "flaky", "poison"], [90, 7, 3])[0]
    return {"n": n, "queue": queue_name, "kind": kind, "fail": rng.randint(1, 2) if kind == "flaky" else 0,
            # its own keys: key order holds per producer, and the rules' jobs come from another one
            "key": f"load{rng.randrange(8)}" if queue_name == "ordered" else None,
            "delay_ms": rng.randint(300, 3000) if rng.random() < 0.1 else 0, "sleep": 0}


def load_schedule(path: Path) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


def run_schedule(env: ChaosEnv, schedule: dict[str, Any], out: Path, meta: dict[str, Any] | None = None) -> Outcome_:
    """Replay a schedule exactly (same ops, same payloads, same offsets) and check the result."""
    ops = [op for op in schedule["ops"] if not op.get("teardown")]
    example = Example(env, schedule.get("mode", "at_least_once"), out, int(schedule.get("workers", 2)),
                      {"replay_of": meta or {}})
    example.min_seconds = max([float(op.get("at", 0)) for op in schedule["ops"] if op.get("teardown")], default=0.0)
    example.start()
    try:
        example.replay(ops)
    except BaseException:
        example.close()
        raise
    return example.finish()
