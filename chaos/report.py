"""The chaos report: `chaos/reports/latest.md` (a markdown table) and `latest.json`.

One row per (scenario, mode, cluster): examples, jobs, faults injected, lost, phantom, duplicate
executions (max and distribution, and executions beyond the first per worker SIGKILL), order
violations, early runs, dead-letter problems, hostile records and how each ended, crash loops,
cleared and replayed jobs, recovery time (max), plus the Kafka and librdkafka versions and the
hypothesis seed of the run. Faults are also counted by class (`toxic@internal:latency` is in
class `toxic@internal`, `worker:kill` in `worker`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPORTS = Path(__file__).resolve().parent / "reports"


@dataclass
class Row:
    scenario: str
    mode: str
    cluster: str
    examples: int = 0
    jobs: int = 0
    acked: int = 0
    indefinite: int = 0
    failed: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    phantom: int = 0
    duplicates: Counter[int] = field(default_factory=Counter)
    dead_letter_duplicates: int = 0
    extra_executions: int = 0
    crashes: int = 0
    order_violations: int = 0
    early: int = 0
    dead_letter_violations: int = 0
    exactly_once_violations: int = 0
    other_violations: int = 0
    hostile: int = 0
    hostile_states: Counter[str] = field(default_factory=Counter)
    hostile_violations: int = 0
    crash_loops: int = 0
    cleared: int = 0
    replayed: int = 0
    recovery_max_s: float | None = None
    unexpected_worker_exits: int = 0
    failing_schedules: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.skipped is None and not self.failing_schedules

    def add(self, result: Any, schedule: Path, faults: dict[str, int], worker_exits: int) -> None:
        self.examples += 1
        self.jobs += result.jobs
        self.acked += result.acked
        self.indefinite += result.indefinite
        self.failed += result.failed
        self.faults.update(faults)
        self.lost += result.lost
        self.phantom += result.phantom
        self.duplicates.update(result.duplicates)
        self.dead_letter_duplicates += result.dead_letter_duplicates
        self.extra_executions += result.extra_executions
        self.crashes += result.crashes
        self.order_violations += result.order_violations
        self.early += result.early
        self.dead_letter_violations += result.dead_letter_violations
        self.exactly_once_violations += result.exactly_once_violations
        self.other_violations += len(result.flagged("drain"))
        self.hostile += result.hostile
        self.hostile_states.update(result.hostile_states)
        self.hostile_violations += result.hostile_violations
        self.crash_loops += result.crash_loops
        self.cleared += result.cleared
        self.replayed += result.replayed
        if result.recovery_s is not None:
            self.recovery_max_s = max(self.recovery_max_s or 0.0, result.recovery_s)
        self.unexpected_worker_exits += worker_exits
        if not result.ok:
            self.failing_schedules.append(str(schedule))

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "mode": self.mode, "cluster": self.cluster, "examples": self.examples,
                "jobs": self.jobs, "acked": self.acked, "indefinite": self.indefinite, "failed": self.failed,
                "faults_injected": sum(self.faults.values()), "faults": dict(sorted(self.faults.items())),
                "fault_classes": dict(sorted(fault_classes(self.faults).items())),
                "hostile_records": self.hostile, "hostile_states": dict(sorted(self.hostile_states.items())),
                "hostile_violations": self.hostile_violations, "crash_loops": self.crash_loops,
                "cleared": self.cleared, "replayed": self.replayed,
                "lost": self.lost, "phantom": self.phantom,
                "duplicate_executions": {"max": max(self.duplicates, default=0),
                                         "distribution": {str(k): v for k, v in sorted(self.duplicates.items())}},
                "extra_executions": self.extra_executions, "worker_kills": self.crashes,
                "duplicate_executions_per_crash": round(self.extra_executions / self.crashes, 2) if self.crashes
                else None,
                "dead_letter_duplicates": self.dead_letter_duplicates, "order_violations": self.order_violations,
                "early_runs": self.early, "dead_letter_violations": self.dead_letter_violations,
                "exactly_once_violations": self.exactly_once_violations, "drain_incomplete": self.other_violations,
                "recovery_max_s": self.recovery_max_s, "unexpected_worker_exits": self.unexpected_worker_exits,
                "failing_schedules": self.failing_schedules, "skipped": self.skipped, "ok": self.ok}


def fault_classes(faults: Counter[str]) -> Counter[str]:
    """Faults by class: the kind up to its ':' (`toxic@internal:latency` -> `toxic@internal`)."""
    out: Counter[str] = Counter()
    for kind, n in faults.items():
        out[kind.split(":")[0]] += n
    return out


class Report:
    def __init__(self, seed: int | None = None, directory: Path = REPORTS) -> None:
        self.seed = seed
        self.directory = directory
        self.rows: dict[tuple[str, str, str], Row] = {}
        self.started = time.time()

    def row(self, scenario: str, mode: str, cluster: str) -> Row:
        return self.rows.setdefault((scenario, mode, cluster), Row(scenario, mode, cluster))

    def skip(self, scenario: str, mode: str, cluster: str, reason: str) -> None:
        self.row(scenario, mode, cluster).skipped = reason

    def versions(self) -> dict[str, Any]:
        import confluent_kafka
        import hypothesis

        from protojobs.testing import KAFKA_VERSION

        return {"kafka": KAFKA_VERSION, "librdkafka": confluent_kafka.libversion()[0],
                "confluent_kafka": confluent_kafka.version()[0], "hypothesis": hypothesis.__version__,
                "hypothesis_seed": self.seed}

    def write(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        rows = [r.to_json() for r in self.rows.values()]
        data = {"versions": self.versions(), "started": self.started,
                "duration_s": round(time.time() - self.started, 1),
                "rows": rows, "ok": all(r["ok"] or r["skipped"] for r in rows)}
        (self.directory / "latest.json").write_text(json.dumps(data, indent=1))
        (self.directory / "latest.md").write_text(markdown(data))
        return self.directory / "latest.md"


def markdown(data: dict[str, Any]) -> str:
    v = data["versions"]
    lines = [
        "# chaos report", "",
        f"Kafka {v['kafka']}, librdkafka {v['librdkafka']}, hypothesis {v['hypothesis']} "
        f"(seed {v['hypothesis_seed']}: test i of single/cluster x at_least_once/exactly_once uses seed + i; "
        f"CHAOS_SEED={v['hypothesis_seed']} draws the same examples again); {data['duration_s']} s.", "",
        "| scenario | mode | cluster | examples | jobs (acked/indef./failed) | faults injected | lost | phantom "
        "| dup. executions max (distribution) | dup. executions per crash | order violations | early runs "
        "| dead-letter problems | hostile records (ended as) | crash loops | cleared / replayed | recovery max "
        "| result |",
        "| --- | --- | --- | ---: | --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | --- | ---: | --- "
        "| ---: | --- |",
    ]
    for r in data["rows"]:
        if r["skipped"]:
            lines.append(f"| {r['scenario']} | {r['mode']} | {r['cluster']} | - | - | - | - | - | - | - | - | - | - "
                         f"| - | - | - | - | skipped: {r['skipped']} |")
            continue
        faults = ", ".join(f"{k} {n}" for k, n in r["fault_classes"].items()) or "none"
        ended = ", ".join(f"{k} {n}" for k, n in r["hostile_states"].items())
        hostile = f"{r['hostile_records']} ({ended})" + (f", {r['hostile_violations']} bad" if r["hostile_violations"]
                                                          else "")
        dist = ", ".join(f"{k}x: {n}" for k, n in r["duplicate_executions"]["distribution"].items())
        dead = r["dead_letter_violations"] + r["exactly_once_violations"]
        rec = "-" if r["recovery_max_s"] is None else f"{r['recovery_max_s']:.1f} s"
        per_crash = "-" if r["duplicate_executions_per_crash"] is None else \
            f"{r['duplicate_executions_per_crash']:g} ({r['extra_executions']} / {r['worker_kills']} kills)"
        verdict = "ok" if r["ok"] else "FAIL: " + ", ".join(Path(s).name for s in r["failing_schedules"])
        lines.append(f"| {r['scenario']} | {r['mode']} | {r['cluster']} | {r['examples']} | {r['jobs']} "
                     f"({r['acked']}/{r['indefinite']}/{r['failed']}) | {r['faults_injected']}: {faults} | {r['lost']} "
                     f"| {r['phantom']} | {r['duplicate_executions']['max']} ({dist}) | {per_crash} "
                     f"| {r['order_violations']} | {r['early_runs']} "
                     f"| {dead} (dup. dead letters {r['dead_letter_duplicates']}) | {hostile} | {r['crash_loops']} "
                     f"| {r['cleared']} / {r['replayed']} | {rec} | {verdict} |")
    extra = [r for r in data["rows"] if r["unexpected_worker_exits"] or r["drain_incomplete"]]
    if extra:
        lines += ["", "Notes:"]
        for r in extra:
            lines.append(f"- {r['scenario']}/{r['mode']}/{r['cluster']}: {r['unexpected_worker_exits']} worker "
                         f"process(es) exited on their own (restarted); {r['drain_incomplete']} incomplete drain(s)")
    lines += ["", "Replay a failing example: `make chaos REPLAY=chaos/reports/schedules/<n>.json` "
              "(see chaos/README.md).", ""]
    return "\n".join(lines)
