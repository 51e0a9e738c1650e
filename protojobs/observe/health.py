"""Health probes and the metrics endpoint of `protojobs run --metrics-port PORT`.

The process that runs the command (the supervisor with `--processes N`, else the worker
itself) serves on PORT, at `--metrics-host` (default `DEFAULT_HOST`, 127.0.0.1: reachable from
this host only; 0.0.0.0 opens it to every interface):

- `/metrics`: Prometheus text format, summed over every worker process of the command
  (prometheus_client multiprocess mode, see protojobs.metrics).
- `/healthz`: 200 when every worker process is alive, its poll loop is not stuck (its
  heartbeat file is fresher than `HEARTBEAT_STALE_S` and its last poll is within
  `POLL_STALL_S`), none of its queues is wedged (more handlers hung past their timeout than
  its `max_hung`, `engine.lanes`), and its delay router and scheduler threads run; else 503
  and the reason, naming the worker and the queue or the dead thread (with its error: retries
  and delays would stall silently). A worker waiting for the broker keeps polling, so a broker
  outage never makes a worker unhealthy (restarting it would not help).
- `/readyz`: 200 when, in addition, every worker polled within `READY_POLL_S`, has partitions
  (or the group has at least as many members as the command has workers: more workers than
  partitions leaves some idle, yet in the group), and the broker answers a metadata request within
  `BROKER_TIMEOUT_S` (cached `BROKER_CACHE_S`); else 503 and the reason.

Every worker process writes `worker-<slot>.json` (pid, last poll, assigned partitions, hung
handlers and wedged queues, the uncommitted window per queue, why each of its background
threads died, if one did) in
the command's state directory every `HEARTBEAT_S`; the serving process reads them, so health
reflects all children. `protojobs health [--url URL] [--ready]` asks the endpoint for exec
probes: exit 0 when healthy, 1 with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from protojobs.config import Settings
from protojobs.engine.hooks import Hooks
from protojobs.observe.process import pid_alive

log = logging.getLogger(__name__)

ENV_DIR = "PROTOJOBS_OBS_DIR"
DEFAULT_HOST = "127.0.0.1"
HEARTBEAT_S = 1.0
HEARTBEAT_STALE_S = 10.0
POLL_STALL_S = 30.0
READY_POLL_S = 10.0
BROKER_TIMEOUT_S = 1.5
BROKER_CACHE_S = 1.0


# --- worker side -----------------------------------------------------------------------------


class Observed:
    """What one worker process reports: metrics and tracing hooks (made before the Worker, which
    takes them) and the heartbeat thread (started with the Worker, `start(worker)`)."""

    def __init__(self, slot: int = 0) -> None:
        from protojobs.observe import tracing

        self.slot = slot
        self.directory = Path(os.environ[ENV_DIR]) if os.environ.get(ENV_DIR) else None
        self.hooks: list[Hooks] = []
        self.jobs: Any = None
        if self.directory is not None:  # this command serves /metrics: count and time jobs
            from protojobs.observe import metrics

            self.jobs = metrics.JobMetrics()
            self.hooks.append(self.jobs)
        traced = tracing.hooks()
        if traced is not None:
            self.hooks.append(traced)
        self.worker: Any = None
        self.threads: list[Any] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="protojobs-heartbeat", daemon=True)

    def start(self, worker: Any, threads: Iterable[Any] = ()) -> Observed:
        """`threads`: the process's `engine.background.Background` threads (router, scheduler)."""
        self.worker = worker
        self.threads = [t for t in threads if t is not None]
        if self.directory is not None:
            self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
            self.beat()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.beat()

    def beat(self) -> None:
        try:
            if self.jobs is not None:
                from protojobs.observe import metrics

                self.jobs.flush()
                metrics.sample_in_flight(self.worker)
            if self.directory is not None:
                write_heartbeat(self.directory / "heartbeat", self.slot, heartbeat(self.worker, self.threads))
        except Exception:  # noqa: BLE001
            log.exception("heartbeat failed")


def heartbeat(worker: Any, threads: Iterable[Any] = ()) -> dict[str, Any]:
    # Only plain attributes: a call into the consumer from this thread would wait for the poll loop.
    now = time.time()
    lanes = list(worker.lanes.values())
    dead = {t.name: why for t in threads if (why := t.failure()) is not None}
    return {"pid": os.getpid(), "ts": now, "last_poll": now - (time.monotonic() - worker.last_poll),
            "assigned": len(worker.assigned), "stopping": worker.stopping,
            "hung": {lane.queue.name: lane.hung for lane in lanes},
            "wedged": {lane.queue.name: [lane.hung, lane.max_hung] for lane in lanes if lane.wedged},
            "uncommitted": dict(worker.uncommitted), "dead_threads": dead}


def write_heartbeat(directory: Path, slot: int, beat: dict[str, Any]) -> None:
    path = directory / f"worker-{slot}.json"
    tmp = directory / f".worker-{slot}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(beat))
    os.replace(tmp, path)


# --- serving side ----------------------------------------------------------------------------


class Checks:
    """/healthz and /readyz of one command: its worker processes' heartbeats and the broker."""

    def __init__(self, settings: Settings, directory: Path, slots: Iterable[int],
                 members: Callable[[], int | None] = lambda: None) -> None:
        self.settings = settings
        self.members = members  # the group's member count (admin refresh), None when unknown
        self.directory = directory
        self.slots = list(slots)
        self._admin: Any = None
        self._broker: tuple[float, str | None] = (0.0, None)
        self._lock = threading.Lock()

    def _beats(self) -> tuple[dict[int, dict[str, Any]], list[str]]:
        beats, problems = {}, []
        now = time.time()
        for slot in self.slots:
            path = self.directory / f"worker-{slot}.json"
            try:
                beat = json.loads(path.read_text())
            except (OSError, ValueError):
                problems.append(f"worker {slot}: no heartbeat yet (starting, or not running)")
                continue
            if now - beat["ts"] > HEARTBEAT_STALE_S:
                problems.append(f"worker {slot} (pid {beat['pid']}): no heartbeat for {now - beat['ts']:.0f}s "
                                "(process dead or hung)")
            elif not pid_alive(beat["pid"]):
                problems.append(f"worker {slot} (pid {beat['pid']}): process is gone")
            elif now - beat["last_poll"] > POLL_STALL_S:
                problems.append(f"worker {slot} (pid {beat['pid']}): poll loop stuck, last poll "
                                f"{now - beat['last_poll']:.0f}s ago")
            elif beat.get("wedged") or beat.get("dead_threads"):
                problems += [f"worker {slot} (pid {beat['pid']}): queue {queue} wedged: {hung} handlers hung past "
                             f"their timeout (limit {limit})"
                             for queue, (hung, limit) in sorted(beat.get("wedged", {}).items())]
                problems += [f"worker {slot} (pid {beat['pid']}): the {name} thread died ({why})"
                             for name, why in sorted(beat.get("dead_threads", {}).items())]
            else:
                beats[slot] = beat
        return beats, problems

    def healthz(self) -> tuple[bool, str]:
        beats, problems = self._beats()
        if problems:
            return False, "; ".join(problems)
        return True, f"ok: {len(beats)} worker process(es) alive and polling"

    def readyz(self) -> tuple[bool, str]:
        beats, problems = self._beats()
        now = time.time()
        members = self.members()
        in_group = members is not None and members >= len(self.slots)
        for slot, beat in beats.items():
            if now - beat["last_poll"] > READY_POLL_S:
                problems.append(f"worker {slot}: last poll {now - beat['last_poll']:.0f}s ago")
            elif beat.get("stopping"):
                problems.append(f"worker {slot}: stopping")
            elif not beat["assigned"] and not in_group:
                problems.append(f"worker {slot}: no partitions assigned and the group has {members} member(s)")
        broker = self.broker_error()
        if broker is not None:
            problems.append(f"broker unreachable: {broker}")
        if problems:
            return False, "; ".join(problems)
        return True, f"ready: {len(beats)} worker process(es) in group {self.settings.kafka.group_id}, broker reachable"

    def broker_error(self) -> str | None:
        """None when the broker answered a metadata request (cached BROKER_CACHE_S), else why not."""
        with self._lock:
            checked, error = self._broker
            if time.monotonic() - checked < BROKER_CACHE_S:
                return error
            try:
                if self._admin is None:
                    self._admin = _admin_client(self.settings)
                meta = self._admin.list_topics(timeout=BROKER_TIMEOUT_S)
                error = None if meta.brokers else "no broker in the metadata"
            except Exception as exc:  # noqa: BLE001 - KafkaException and friends: the reason is the point
                error = f"no metadata within {BROKER_TIMEOUT_S:g}s ({exc})"
            self._broker = (time.monotonic(), error)
            return error


def _admin_client(settings: Settings) -> Any:
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {k: v for k, v in settings.kafka.consumer.items()
                            if k.startswith(("security.", "sasl.", "ssl."))}
    conf.update({"bootstrap.servers": settings.kafka.brokers, "reconnect.backoff.max.ms": 1000,
                 "socket.connection.setup.timeout.ms": 3000, "error_cb": lambda err: None})
    return AdminClient(conf)


class Server:
    """The HTTP endpoint of one `protojobs run`: /metrics, /healthz, /readyz."""

    def __init__(self, settings: Settings, port: int, slots: Iterable[int], host: str = DEFAULT_HOST,
                 refresh: float | None = None) -> None:
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))  # first: fails when the port is taken
        self.httpd.daemon_threads = True
        self.directory = Path(tempfile.mkdtemp(prefix="protojobs-obs-"))
        (self.directory / "metrics").mkdir()
        (self.directory / "heartbeat").mkdir()
        if "prometheus_client" in sys.modules and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            log.warning("prometheus_client was imported before multiprocess mode was set: "
                        "this process's own gauges will be missing from /metrics")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.directory / "metrics")  # before the import below
        os.environ[ENV_DIR] = str(self.directory)  # inherited by the spawned workers
        from protojobs.observe import metrics
        self.metrics = metrics
        self.gauges = metrics.AdminGauges(settings, **({"interval": refresh} if refresh else {}))
        self.checks = Checks(settings, self.directory / "heartbeat", slots, lambda: self.gauges.members)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="protojobs-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> Server:
        self.gauges.start()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.gauges.stop()
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST

                self._send(200, server.metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, reason = server.checks.healthz() if path == "/healthz" else server.checks.readyz()
                self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            log.debug("http: " + format, *args)

    return Handler


@dataclass(frozen=True)
class Probe:
    """The answer of a health endpoint: `ok`, and its body, or why it is unhealthy."""

    ok: bool
    detail: str


def probe(url: str, ready: bool = False, timeout: float = 5.0) -> Probe:
    """Ask `url`'s /healthz (`ready`: /readyz) for `protojobs health`."""
    target = url.rstrip("/") + ("/readyz" if ready else "/healthz")
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            return Probe(True, response.read().decode().strip())
    except urllib.error.HTTPError as err:
        return Probe(False, err.read().decode().strip() or str(err.reason))
    except (OSError, urllib.error.URLError) as err:
        return Probe(False, f"{target} did not answer: {err}")


def child_exited(pid: int) -> None:
    """The supervisor saw a worker process exit: drop its live gauges (no-op without metrics)."""
    if os.environ.get(ENV_DIR):
        from protojobs.observe import metrics
        metrics.process_dead(pid)
