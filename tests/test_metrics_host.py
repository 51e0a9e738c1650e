"""`protojobs run --metrics-port` listens on 127.0.0.1 unless `--metrics-host` says otherwise.

127.0.0.2 is another address of the loopback interface (Linux routes all of 127/8 there): a
server bound to every interface answers on it, one bound to 127.0.0.1 does not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import settings_tree, write_config
from test_engine import spawn_worker
from test_observability import free_port, get, stop, wait_status

from protojobs.testing import Cluster

pytestmark = pytest.mark.broker


def test_metrics_listen_on_loopback_by_default_and_where_metrics_host_says(kafka: Cluster, fresh_prefix: str,
                                                                          tmp_path: Path) -> None:
    tree = settings_tree(kafka.bootstrap, fresh_prefix, {"work": {"handler": "engine_jobs:record"}})
    path = write_config(tmp_path / "jobs.toml", tree)
    record = tmp_path / "runs.jsonl"

    port = free_port()
    proc = spawn_worker(path, record, "--metrics-port", str(port), "--no-scheduler")
    try:
        wait_status(f"http://127.0.0.1:{port}/healthz", 200, timeout=60)
        status, answer = get(f"http://127.0.0.2:{port}/healthz")
        assert status == 0 and "refused" in answer, (status, answer)  # not on every interface
    finally:
        stop(proc)
    assert "on 127.0.0.1 port" in (tmp_path / "worker-0.log").read_text()

    port = free_port()
    proc = spawn_worker(path, record, "--metrics-port", str(port), "--metrics-host", "127.0.0.2", "--no-scheduler")
    try:
        wait_status(f"http://127.0.0.2:{port}/healthz", 200, timeout=60)
        status, answer = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 0 and "refused" in answer, (status, answer)
    finally:
        stop(proc)
