"""`protojobs broker start|stop|status`: the local development Kafka, kept in `./.protojobs/broker`.

Data survives `stop` / `start` (queued jobs stay queued); `start --fresh` formats anew.
"""

from __future__ import annotations

import json
import sys
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


def start(nodes: int = 1, port: int = 9092, fresh: bool = False, toxiproxy: bool = False,
          state: Path = STATE, profile: str = "test") -> int:
    current = _load(state)
    if current is not None and current.running_pids():
        print(f"broker: already running ({current.nodes} node(s), bootstrap {current.bootstrap})")
        return 0
    cluster = Cluster(state / "kafka", nodes=nodes, base_port=port, profile=profile)
    if current is not None and (current.nodes, current.base_port) != (nodes, port):
        fresh = True
    try:
        if toxiproxy:
            server = Toxiproxy(state / "toxiproxy", port=port + 380).start()
            for name, listen, upstream in cluster.proxy_routes():
                server.create(name, listen, upstream)
        cluster.start(fresh=fresh)
    except BrokerError as err:
        stop(state)
        print(f"broker: {err}", file=sys.stderr)
        return 1
    state.mkdir(parents=True, exist_ok=True)
    _state_file(state).write_text(json.dumps({"nodes": nodes, "base_port": port}))
    print(f"broker: {nodes} node(s) ready, bootstrap {cluster.bootstrap}"
          + (f" (via toxiproxy: {cluster.proxied_bootstrap})" if toxiproxy else ""))
    return 0


def stop(state: Path = STATE) -> int:
    cluster = _load(state)
    if cluster is not None:
        cluster.stop()
    Toxiproxy(state / "toxiproxy").stop()
    print("broker: stopped")
    return 0


def status(state: Path = STATE) -> int:
    """Exit 0 when every node runs, 1 when the broker is stopped or only partly running."""
    cluster = _load(state)
    pids = cluster.running_pids() if cluster else {}
    if cluster is None or not pids:
        print("broker: not running")
        return 1
    rss = cluster.rss_bytes()
    for node in range(cluster.nodes):
        pid = pids.get(node)
        where = f"127.0.0.1:{cluster.ports.direct(node)}"
        state_text = f"pid {pid}, rss {rss.get(node, 0) // 2**20} MiB" if pid else "DOWN"
        print(f"node {node + 1}: {where} {state_text}")
    print(f"bootstrap: {cluster.bootstrap}")
    return 0 if len(pids) == cluster.nodes else 1


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
