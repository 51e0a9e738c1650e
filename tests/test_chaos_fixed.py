"""The fixed, replayable chaos schedules (chaos/schedules/*.json) and every schedule that once
found a bug (chaos/found/*.json), against the session broker, so `make test` guards the chaos
checker, the guarantees it checks and the fixes (the full randomized suite is `make chaos`).
Each replays its schedule exactly: real `protojobs run` processes behind toxiproxy, faults,
heal, settle, drain over DIRECT, check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.harness import ChaosEnv, exactly_once_support, load_schedule, run_schedule  # noqa: E402
from protojobs.testing import Cluster  # noqa: E402
from protojobs.testing.plugin import Faults  # noqa: E402

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]
SCHEDULES = sorted((ROOT / "chaos" / "schedules").glob("*.json"))
FOUND = sorted((ROOT / "chaos" / "found").glob("*.json"))


@pytest.mark.parametrize("schedule", SCHEDULES + FOUND,
                         ids=[p.stem for p in SCHEDULES] + [f"found-{p.stem}" for p in FOUND])
def test_fixed_schedule_keeps_the_guarantees(schedule: Path, kafka: Cluster, toxiproxy: Faults, tmp_path: Path) -> None:
    if load_schedule(schedule).get("mode") == "exactly_once" and (reason := exactly_once_support()) is not None:
        pytest.skip(reason)
    if load_schedule(schedule).get("cluster", "single") != "single":
        pytest.skip("needs the 3-node chaos cluster: make chaos REPLAY=" + str(schedule.relative_to(ROOT)))
    env = ChaosEnv("single", kafka, toxiproxy.server, tmp_path)
    outcome = run_schedule(env, load_schedule(schedule), tmp_path / "schedule.json", {"file": str(schedule)})
    kafka.wait_ready(60)  # a schedule may have restarted the broker: leave it ready for the next test
    result = outcome.result
    assert result.ok, f"{schedule.name} (replay: make chaos REPLAY={schedule.relative_to(ROOT)}):\n" + "\n".join(
        str(v) for v in result.violations[:20])
    assert result.must_settle > 0 and result.acked > 0
    assert outcome.faults, "the schedule injected no fault"


def test_there_are_fixed_and_found_schedules() -> None:
    assert len(SCHEDULES) == 4 and len(FOUND) >= 3
