"""`protojobs retry-plan`: tier paths and the tolerance flag (pure, no broker)."""

from __future__ import annotations

from pathlib import Path

from conftest import settings_tree, write_config

from protojobs.cli import main
from protojobs.model.delays import hop_path


def test_hop_path_follows_the_routing_rule() -> None:
    tiers = (200, 1000, 3000)
    assert hop_path(0, tiers) == []
    assert hop_path(150, tiers) == [200]
    assert hop_path(1000, tiers) == [1000]
    assert hop_path(7500, tiers) == [3000, 3000, 1000, 200, 200, 200]
    assert sum(hop_path(7500, tiers)[:-1]) < 7500  # never released before it is due


def test_retry_plan_prints_and_flags(tmp_path: Path, capsys) -> None:
    tree = settings_tree("127.0.0.1:1", "t-", {"ok": {"handler": "engine_jobs:record"},
                                               "tight": {"handler": "engine_jobs:record", "retry": "fast"}},
                         retry={"default": {"max_attempts": 3, "backoff": "fixed", "base": "1s", "jitter": 0},
                                "fast": {"max_attempts": 2, "backoff": "fixed", "base": "100ms", "jitter": 0}},
                         delays={"tiers": ["200ms", "1s"]})
    path = write_config(tmp_path / "jobs.toml", tree)
    assert main.main(["retry-plan", "--config", str(path), "--queue", "ok"]) == 0
    out = capsys.readouterr().out
    assert "attempt 2: after 1s" in out and "via 1s" in out and "late by at most 200ms" in out
    assert main.main(["retry-plan", "--config", str(path), "--queue", "tight"]) == 1
    assert "smallest tier exceeds this delay" in capsys.readouterr().out
