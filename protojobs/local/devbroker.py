"""`protojobs broker start|stop|status`: the local development Kafka, kept in `./.protojobs/broker`.

Data survives `stop` / `start` (queued jobs stay queued); `start --fresh` formats anew.
These functions return what they found or did; protojobs.cli.broker prints it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from protojobs.local.cluster import BrokerError, Cluster
from protojobs.local.toxiproxy import Toxiproxy

STATE = Path(".protojobs") / "broker"


def _state_file(state: Path) -> Path:
    return state / "cluster.json"


def _load(state: Path) -> Cluster | None:
    try:
        info = json.loads(_state_file(state).read_text())
    except (OSError, ValueError):
        return None
    return Cluster(state / "kafka", nodes=info["nodes"], base_port=info["base_port"])


@dataclass(frozen=True)
class Started:
    """A running broker: `already_running` when `start` found it up and left it as it was."""

    nodes: int
    bootstrap: str
    proxied_bootstrap: str | None = None  # with toxiproxy in front of each node
    already_running: bool = False


@dataclass(frozen=True)
class Node:
    """One node of `status`: its client address, and its pid and resident memory when it runs."""

    number: int  # 1-based
    address: str
    pid: int | None
    rss_bytes: int


@dataclass(frozen=True)
class Status:
    nodes: list[Node]
    bootstrap: str

    @property
    def complete(self) -> bool:
        """Every node runs."""
        return all(node.pid for node in self.nodes)


def start(nodes: int = 1, port: int = 9092, fresh: bool = False, toxiproxy: bool = False,
          state: Path = STATE, profile: str = "test") -> Started:
    """Start the broker (and toxiproxy), or find it running. On BrokerError whatever was
    started is stopped again before the error propagates."""
    current = _load(state)
    if current is not None and current.running_pids():
        return Started(current.nodes, current.bootstrap, already_running=True)
    cluster = Cluster(state / "kafka", nodes=nodes, base_port=port, profile=profile)
    if current is not None and (current.nodes, current.base_port) != (nodes, port):
        fresh = True
    try:
        if toxiproxy:
            server = Toxiproxy(state / "toxiproxy", port=port + 380).start()
            for name, listen, upstream in cluster.proxy_routes():
                server.create(name, listen, upstream)
        cluster.start(fresh=fresh)
    except BrokerError:
        stop(state)
        raise
    state.mkdir(parents=True, exist_ok=True)
    _state_file(state).write_text(json.dumps({"nodes": nodes, "base_port": port}))
    return Started(nodes, cluster.bootstrap, cluster.proxied_bootstrap if toxiproxy else None)


def stop(state: Path = STATE) -> None:
    cluster = _load(state)
    if cluster is not None:
        cluster.stop()
    Toxiproxy(state / "toxiproxy").stop()


def status(state: Path = STATE) -> Status | None:
    """Each node's state; None when the broker is not running at all."""
    cluster = _load(state)
    pids = cluster.running_pids() if cluster else {}
    if cluster is None or not pids:
        return None
    rss = cluster.rss_bytes()
    return Status([Node(node + 1, f"127.0.0.1:{cluster.ports.direct(node)}", pids.get(node), rss.get(node, 0))
                   for node in range(cluster.nodes)], cluster.bootstrap)


def needed(config: str) -> bool:
    """True when `config` names a loopback broker on which nothing listens yet."""
    import socket
    import tomllib

    try:
        with open(config, "rb") as fh:
            brokers = str(tomllib.load(fh).get("kafka", {}).get("brokers", "localhost:9092"))
    except (OSError, ValueError):
        brokers = "localhost:9092"
    host, _, port = brokers.split(",")[0].rpartition(":")
    if host not in ("localhost", "127.0.0.1", "::1", "[::1]"):
        return False
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", int(port))) != 0
