"""`protojobs broker start | stop | status`: the local development Kafka (protojobs.local.devbroker)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from protojobs.cli import base
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



_state = click.option("--state", default=".protojobs/broker", hidden=True, type=click.Path(path_type=Path))


@base.group("broker")
def broker() -> None:
    """The local development Kafka that the project fetches and runs."""


@base.command("start", parent=broker)
@click.option("--nodes", type=click.Choice(["1", "3"]), default="1", show_default=True, help="brokers in the cluster")
@click.option("--port", type=int, default=9092, show_default=True, help="first node's client port")
@click.option("--fresh", is_flag=True, help="format anew, dropping queued data")
@click.option("--toxiproxy", is_flag=True, help="also run toxiproxy in front of each node")
@click.option("--if-needed", is_flag=True,
              help="start only when --config points at a loopback broker that is not listening")
@_state
def start_cmd(nodes: str, port: int, fresh: bool, toxiproxy: bool, if_needed: bool, state: Path) -> int:
    """Start the broker (exit 0 once every node is ready)."""
    if if_needed and not devbroker.needed(base.config_path()):
        return 0
    return start(nodes=int(nodes), port=port, fresh=fresh, toxiproxy=toxiproxy, state=state)


@base.command("stop", parent=broker)
@_state
def stop_cmd(state: Path) -> int:
    """Stop the broker (and its toxiproxy)."""
    return stop(state)


@base.command("status", parent=broker)
@_state
def status_cmd(state: Path) -> int:
    """Each node's address and process; exit 1 when stopped or only partly running."""
    return status(state)
