"""Real Apache Kafka (KRaft) on loopback: fetch, format, start, wait, stop.

The jars come from Maven Central through the packaged `pom.xml` (see `ensure_kafka`); nothing is
downloaded by hand. Each node runs in its own process group with a pidfile in the cluster's
state directory (`protojobs.local.pidfiles`: it also records who started the node), so `stop()`
(and `protojobs.testing.cleanup`) can always kill it: no JVM outlives a test run.

Port layout, node i (0-based) of a cluster whose base port is B (`Ports`):
  B+10i+0 DIRECT      client listener, advertised as itself
  B+10i+1 PROXIED     client listener, advertised as its toxiproxy port B+10i+5
  B+10i+2 INTERNAL    replication listener (advertised as B+10i+6 in the chaos profile)
  B+10i+3 CONTROLLER  KRaft quorum listener (voters point at B+10i+7 in the chaos profile)
  B+10i+4 SASL        SASL_PLAINTEXT / SCRAM-SHA-256 client listener (when `sasl_users`)
Clients bootstrapping on the PROXIED ports stay behind toxiproxy; on DIRECT they never touch it.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from protojobs.local.pidfiles import (
    _read_pid,
    _signal_group,
    _wait_dead,
    stop_pidfiles,
    track,
    write_pidfile,
)
from protojobs.observe.process import pid_alive, rss_of

KAFKA_VERSION = "4.1.1"
REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout, when running from one
JVM_FLAGS = {
    "test": ["-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"],
    "bench": ["-Xms1g", "-Xmx2g", "-XX:+UseG1GC"],
}


class BrokerError(RuntimeError):
    """A broker could not be fetched, formatted or started; the message says why and what to do."""


def cache_dir() -> Path:
    """Where fetched Kafka jars and toxiproxy live: $PROTOJOBS_CACHE, else the checkout's `.cache`
    (`make install` fills it), else ~/.cache/protojobs for an installed wheel."""
    if os.environ.get("PROTOJOBS_CACHE"):
        return Path(os.environ["PROTOJOBS_CACHE"])
    if _is_checkout(REPO_ROOT):
        return REPO_ROOT / ".cache"
    return Path.home() / ".cache" / "protojobs"


def _is_checkout(root: Path) -> bool:
    """True for protojobs' own source tree (not, say, the site-packages of an installed wheel)."""
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False
    return (root / "protojobs").is_dir() and 'name = "protojobs"' in pyproject


def kafka_lib_dir() -> Path:
    return Path(os.environ.get("PROTOJOBS_KAFKA_LIB", cache_dir() / "kafka" / "lib"))


def ensure_kafka() -> Path:
    """Return the directory of the broker's jars, fetching them with Maven when missing."""
    lib = kafka_lib_dir()
    if any(lib.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        return lib
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is not on PATH: it fetches Kafka from Maven Central; install it")
    # The pom is package data; Maven writes next to it, so it runs from a copy in the cache.
    pom = lib.parent / "pom.xml"
    pom.parent.mkdir(parents=True, exist_ok=True)
    pom.write_bytes(resources.files("protojobs.local").joinpath("pom.xml").read_bytes())
    cmd = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-Dkafka.lib={lib}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"fetching Kafka failed ({' '.join(cmd)}):\n{_tail(done.stdout + done.stderr)}")
    return lib


def java() -> str:
    found = shutil.which("java")
    if found is None:
        raise BrokerError("Java is not on PATH: Kafka 4 needs Java 17 or newer")
    return found


@dataclass(frozen=True)
class Ports:
    base: int

    def of(self, node: int, slot: int) -> int:
        return self.base + 10 * node + slot

    def direct(self, node: int) -> int:
        return self.of(node, 0)

    def proxied(self, node: int) -> int:
        return self.of(node, 1)

    def internal(self, node: int) -> int:
        return self.of(node, 2)

    def controller(self, node: int) -> int:
        return self.of(node, 3)

    def sasl(self, node: int) -> int:
        return self.of(node, 4)

    def client_proxy(self, node: int) -> int:
        return self.of(node, 5)

    def internal_proxy(self, node: int) -> int:
        return self.of(node, 6)

    def controller_proxy(self, node: int) -> int:
        return self.of(node, 7)


@dataclass
class Cluster:
    """A Kafka cluster on loopback, described by its state directory and port base."""

    state_dir: Path
    nodes: int = 1
    base_port: int = 9092
    chaos: bool = False
    profile: str = "test"
    sasl_users: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()  # the JVM runs with the node dir as cwd

    @property
    def ports(self) -> Ports:
        return Ports(self.base_port)

    @property
    def bootstrap(self) -> str:
        """DIRECT listeners: never behind toxiproxy."""
        return ",".join(f"127.0.0.1:{self.ports.direct(i)}" for i in range(self.nodes))

    @property
    def proxied_bootstrap(self) -> str:
        """The toxiproxy ports in front of the PROXIED listeners."""
        return ",".join(f"127.0.0.1:{self.ports.client_proxy(i)}" for i in range(self.nodes))

    @property
    def sasl_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.ports.sasl(i)}" for i in range(self.nodes))

    def node_dir(self, node: int) -> Path:
        return self.state_dir / f"node-{node + 1}"

    def pidfile(self, node: int) -> Path:
        return self.node_dir(node) / "kafka.pid"

    def log_file(self, node: int) -> Path:
        return self.node_dir(node) / "kafka.log"

    def proxy_routes(self) -> list[tuple[str, int, int]]:
        """(name, listen port, upstream port) of every toxiproxy proxy this cluster expects."""
        routes = []
        for i in range(self.nodes):
            routes.append((f"{self.state_dir.name}-client-{i + 1}", self.ports.client_proxy(i), self.ports.proxied(i)))
            if self.chaos:
                routes.append((f"{self.state_dir.name}-internal-{i + 1}",
                               self.ports.internal_proxy(i), self.ports.internal(i)))
                routes.append((f"{self.state_dir.name}-controller-{i + 1}",
                               self.ports.controller_proxy(i), self.ports.controller(i)))
        return routes

    # --- configuration -------------------------------------------------------------------

    def properties(self, node: int) -> dict[str, str]:
        p, n = self.ports, self.nodes
        ctrl = p.controller_proxy if self.chaos else p.controller
        internal_adv = p.internal_proxy(node) if self.chaos else p.internal(node)
        isr = "2" if n >= 3 else "1"
        listeners = {
            "DIRECT": (p.direct(node), p.direct(node)),
            "PROXIED": (p.proxied(node), p.client_proxy(node)),
            "INTERNAL": (p.internal(node), internal_adv),
        }
        if self.sasl_users:
            listeners["SASL"] = (p.sasl(node), p.sasl(node))
        protocols = {name: "PLAINTEXT" for name in listeners} | {"CONTROLLER": "PLAINTEXT"}
        if self.sasl_users:
            protocols["SASL"] = "SASL_PLAINTEXT"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node + 1),
            "controller.quorum.voters": ",".join(f"{i + 1}@127.0.0.1:{ctrl(i)}" for i in range(n)),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "INTERNAL",
            "listeners": ",".join(f"{k}://127.0.0.1:{v[0]}" for k, v in listeners.items())
            + f",CONTROLLER://127.0.0.1:{p.controller(node)}",
            "advertised.listeners": ",".join(f"{k}://127.0.0.1:{v[1]}" for k, v in listeners.items()),
            "listener.security.protocol.map": ",".join(f"{k}:{v}" for k, v in protocols.items()),
            "log.dirs": str(self.node_dir(node) / "data"),
            "num.partitions": "1",
            "default.replication.factor": str(n),
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": str(n),
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": str(n),
            "transaction.state.log.min.isr": isr,
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": str(n),
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": "0",
            "unclean.leader.election.enable": "false",
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "log.flush.interval.messages": str(2**62),
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "5000",
            "transaction.remove.expired.transaction.cleanup.interval.ms": "60000",
        }
        if self.sasl_users:
            props["sasl.enabled.mechanisms"] = "SCRAM-SHA-256"
            jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            props["listener.name.sasl.scram-sha-256.sasl.jaas.config"] = jaas
        return props

    def write_config(self, node: int) -> Path:
        path = self.node_dir(node) / "server.properties"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k}={v}\n" for k, v in self.properties(node).items()))
        return path

    # --- lifecycle -----------------------------------------------------------------------

    def running_pids(self) -> dict[int, int]:
        """Node index -> pid of every node whose pidfile names a live process."""
        alive = {}
        for i in range(self.nodes):
            pid = _read_pid(self.pidfile(i))
            if pid is not None and pid_alive(pid):
                alive[i] = pid
        return alive

    def formatted(self) -> bool:
        return all((self.node_dir(i) / "data" / "meta.properties").exists() for i in range(self.nodes))

    def start(self, timeout: float = 90.0, fresh: bool = True) -> Cluster:
        """Format every node (unless `fresh` is False and data exists), start them together,
        and wait until all answer."""
        if self.running_pids():
            raise BrokerError(f"a cluster already runs from {self.state_dir}: stop it first")
        lib = ensure_kafka()
        self._check_ports_free()
        reuse = not fresh and self.formatted()
        if not reuse and self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        configs = [self.write_config(i) for i in range(self.nodes)]
        if not reuse:
            self._format(lib, configs)
        for i, config in enumerate(configs):
            proc = self._spawn(lib, i, ["kafka.Kafka", str(config)], background=True)
            write_pidfile(self.pidfile(i), proc.pid)
        try:
            self.wait_ready(timeout)
        except BrokerError:
            self.stop()
            raise
        return self

    def _format(self, lib: Path, configs: list[Path]) -> None:
        cluster_id = _random_cluster_id()
        formats = [self._spawn(lib, i, ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(c)]
                               + self._scram_args(), background=False) for i, c in enumerate(configs)]
        for i, proc in enumerate(formats):
            if proc.wait(timeout=120) != 0:
                raise BrokerError(f"formatting node {i + 1} failed:\n{_tail(self.log_file(i).read_text())}")

    def _scram_args(self) -> list[str]:
        args = []
        for user, password in self.sasl_users.items():
            args += ["--add-scram", f"SCRAM-SHA-256=[name={user},password={password}]"]
        return args

    def _spawn(self, lib: Path, node: int, main: list[str], background: bool) -> subprocess.Popen[bytes]:
        log4j = self.node_dir(node) / "log4j2.properties"
        log4j.write_text(_LOG4J)
        cmd = [java(), *JVM_FLAGS[self.profile], "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={self.node_dir(node)}",
               "-cp", f"{lib}/*", *main]
        log = open(self.log_file(node), "ab")  # noqa: SIM115 - handed to the child
        try:
            return track(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True, cwd=self.node_dir(node)))
        finally:
            log.close()

    def _check_ports_free(self) -> None:
        busy = [port for i in range(self.nodes) for port in (
            self.ports.direct(i), self.ports.proxied(i), self.ports.internal(i), self.ports.controller(i),
            self.ports.sasl(i)) if not _port_free(port)]
        if busy:
            raise BrokerError(f"ports {busy} are in use on 127.0.0.1: stop what listens there "
                              f"(`protojobs broker status`) or choose another base port")

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until every node is in the cluster's metadata (AdminClient), or raise with the log tail."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin = None
        while True:
            for i in range(self.nodes):
                pid = _read_pid(self.pidfile(i))
                if pid is None or not pid_alive(pid):
                    raise BrokerError(f"Kafka node {i + 1} exited during start-up; its log ends:\n"
                                      f"{_tail(self.log_file(i).read_text(errors='replace'))}")
            try:
                if admin is None and all(not _port_free(self.ports.direct(i)) for i in range(self.nodes)):
                    admin = AdminClient({"bootstrap.servers": self.bootstrap})
                if admin is None:
                    raise TimeoutError("not listening yet")
                meta = admin.list_topics(timeout=2)
                if len(meta.brokers) == self.nodes and self._coordinator_ready(admin):
                    return
            except Exception:  # noqa: BLE001 - not up yet: retry until the deadline
                pass
            if time.monotonic() > deadline:
                raise BrokerError(f"Kafka did not answer within {timeout:.0f}s; node 1's log ends:\n"
                                  f"{_tail(self.log_file(0).read_text(errors='replace'))}")
            time.sleep(0.2)

    def _coordinator_ready(self, admin: object) -> bool:
        """The group coordinator answers (a group listing succeeds) once the metadata is settled."""
        try:
            admin.list_consumer_groups(request_timeout=2).result()  # type: ignore[attr-defined]
            return True
        except Exception:  # noqa: BLE001
            return False

    def kill_node(self, node: int, sig: int = signal.SIGKILL) -> None:
        pid = _read_pid(self.pidfile(node))
        if pid is not None:
            _signal_group(pid, sig)
            if sig == signal.SIGKILL:
                _wait_dead(pid, 10)

    def restart_node(self, node: int) -> None:
        self.kill_node(node)
        proc = self._spawn(ensure_kafka(), node, ["kafka.Kafka", str(self.node_dir(node) / "server.properties")],
                           background=True)
        write_pidfile(self.pidfile(node), proc.pid)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM each node's process group, then SIGKILL what is left after `timeout`."""
        stop_pidfiles([self.pidfile(i) for i in range(self.nodes)], timeout)

    def rss_bytes(self) -> dict[int, int]:
        return {i: rss_of(pid) for i, pid in self.running_pids().items()}


_LOG4J = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = info
"""


def _random_cluster_id() -> str:
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])
