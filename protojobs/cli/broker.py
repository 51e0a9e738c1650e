"""`protojobs broker start | stop | status`: the local development Kafka (protojobs.local.devbroker)."""

from __future__ import annotations

import sys
from pathlib import Path

from protojobs.local import devbroker
from protojobs.local.cluster import BrokerError


def start(nodes: int, port: int, fresh: bool, toxiproxy: bool, state: Path) -> int:
    try:
        started = devbroker.start(nodes=nodes, port=port, fresh=fresh, toxiproxy=toxiproxy, state=state)
    except BrokerError as err:
        print("broker: stopped")  # devbroker.start stopped what it had started
        print(f"broker: {err}", file=sys.stderr)
        return 1
    if started.already_running:
        print(f"broker: already running ({started.nodes} node(s), bootstrap {started.bootstrap})")
        return 0
    print(f"broker: {started.nodes} node(s) ready, bootstrap {started.bootstrap}"
          + (f" (via toxiproxy: {started.proxied_bootstrap})" if started.proxied_bootstrap is not None else ""))
    return 0


def stop(state: Path) -> int:
    devbroker.stop(state)
    print("broker: stopped")
    return 0


def status(state: Path) -> int:
    """Exit 0 when every node runs, 1 when the broker is stopped or only partly running."""
    found = devbroker.status(state)
    if found is None:
        print("broker: not running")
        return 1
    for node in found.nodes:
        state_text = f"pid {node.pid}, rss {node.rss_bytes // 2**20} MiB" if node.pid else "DOWN"
        print(f"node {node.number}: {node.address} {state_text}")
    print(f"bootstrap: {found.bootstrap}")
    return 0 if found.complete else 1

