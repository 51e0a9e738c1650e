"""`make chaos`: a hypothesis state machine injecting faults into real brokers and real worker
processes, checked by chaos/checker.py after every example (README.md explains it all).

Each example: fresh topics and group, two `protojobs run` processes whose clients go through
toxiproxy, a background dispatcher (also through toxiproxy), then the machine's rules, then a
teardown that heals, lets every job settle, drains over the DIRECT listeners and checks. Every
example's schedule is written to chaos/reports/schedules/<n>.json; `make chaos REPLAY=<file>`
runs one again exactly. Failures do not stop the run: they are all collected, reported, and
fail the test at the end (naming the schedule files).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import pytest
from hypothesis import seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from chaos.conftest import SEED, env_for, replay_path
from chaos.harness import (
    HOSTILE_SHAPES,
    MIN_SECONDS,
    ChaosEnv,
    Example,
    Outcome_,
    exactly_once_support,
    load_schedule,
    run_schedule,
)
from chaos.report import REPORTS
from protojobs.engine.dispatch import now_ms
from protojobs.model import envelope

pytestmark = [pytest.mark.broker, pytest.mark.timeout(int(os.environ.get("CHAOS_TEST_TIMEOUT", "1500")))]
MODES = ["at_least_once", "exactly_once"]
CLUSTERS = ["single", "cluster"]
STEPS = int(os.environ.get("CHAOS_STEPS") or "8")
FAILING = REPORTS / "failing"
EXAMPLES = int(os.environ.get("CHAOS_EXAMPLES") or "3")  # per (cluster, mode)
RATE = float(os.environ.get("CHAOS_RATE") or "150")  # background jobs per second in every example

JOB = st.fixed_dictionaries({
    "queue": st.sampled_from(["plain", "ordered", "strict"]),
    "kind": st.sampled_from(["normal"] * 6 + ["flaky"] * 2 + ["poison", "hang"]),
    "fail": st.integers(1, 2),
    "key": st.sampled_from(["k0", "k1", "k2", "k3"]),
    "delay_ms": st.one_of(st.just(0), st.just(0), st.integers(300, 4000)),
    "sleep": st.sampled_from([0, 0, 0.01, 0.05]),
    "hang": st.sampled_from([1.5, 2.5]),  # seconds: past the strict queue's 1 s timeout
    "block_failed": st.sampled_from([0, 0, 3]),  # seconds a strict poison job's failed() blocks
})
HOSTILE = st.lists(st.tuples(st.sampled_from(HOSTILE_SHAPES), st.booleans()), min_size=1, max_size=4)
BATCH = st.lists(JOB, min_size=8, max_size=30)
HOLD = st.sampled_from([1, 3, 6])
TOXICS = st.one_of(
    st.fixed_dictionaries({"kind": st.just("latency"), "attrs": st.fixed_dictionaries(
        {"latency": st.integers(100, 1500), "jitter": st.integers(0, 500)}), "persist": st.booleans()}),
    st.fixed_dictionaries({"kind": st.just("bandwidth"), "attrs": st.fixed_dictionaries(
        {"rate": st.integers(8, 128)}), "persist": st.booleans()}),
    st.fixed_dictionaries({"kind": st.just("slicer"), "attrs": st.fixed_dictionaries(
        {"average_size": st.integers(16, 512), "size_variation": st.just(8), "delay": st.integers(0, 2000)}),
        "persist": st.booleans()}),
    st.fixed_dictionaries({"kind": st.just("reset_peer"), "attrs": st.fixed_dictionaries(
        {"timeout": st.integers(0, 2000)}), "persist": st.just(False)}),
    st.fixed_dictionaries({"kind": st.just("timeout"), "attrs": st.fixed_dictionaries(
        {"timeout": st.sampled_from([0, 2000])}), "persist": st.just(False)}),
    st.fixed_dictionaries({"kind": st.just("limit_data"), "attrs": st.fixed_dictionaries(
        {"bytes": st.integers(500, 50000)}), "persist": st.just(False)}),
)


def jobs_of(batch: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
    out = []
    for i, job in enumerate(batch):
        keyed = job["queue"] in ("ordered", "strict")
        strict = job["queue"] == "strict"
        kind = job["kind"] if strict or job["kind"] != "hang" else "flaky"  # hangs only where the timeout is 1 s
        out.append({"n": first + i, "queue": job["queue"], "kind": kind,
                    "fail": job["fail"] if kind in ("flaky", "hang") else 0, "key": job["key"] if keyed else None,
                    "delay_ms": job["delay_ms"], "sleep": job["sleep"],
                    "hang": job["hang"] if kind == "hang" else 0,
                    "block_failed": job["block_failed"] if strict and kind == "poison" else 0})
    return out


def hostile_of(drawn: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    """Concrete hostile records: where each goes (tier or queue, for the shapes that can go to
    either) and the job id of those that carry one."""
    out = []
    for shape, on_tier in drawn:
        role = "control" if shape == "control" else "tier" if shape == "bad_header" or (
            on_tier and shape in ("oversize_raw", "bad_utf8")) else "queue"
        out.append({"shape": shape, "role": role, "queue": "plain", "id": envelope.new_id(now_ms())})
    return out


def machine_for(env: ChaosEnv, mode: str, outcomes: list[Outcome_], numbers: Any) -> type[RuleBasedStateMachine]:  # noqa: C901
    targets = st.sampled_from(["all", *range(env.nodes)])

    class ChaosMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.example = Example(env, mode, numbers.next(), meta={"seed": SEED}).start()
            self.example.min_seconds = MIN_SECONDS
            self.jobs = 0
            self.cleared = False  # clear_replay runs at most once per example

        @initialize(batch=BATCH, load_seed=st.integers(0, 2**31))
        def first_batch(self, batch: list[dict[str, Any]], load_seed: int) -> None:
            if RATE > 0:
                self.example.apply({"op": "load", "rate": RATE, "seed": load_seed})
            self.dispatch(batch)

        @rule(batch=BATCH)
        def dispatch(self, batch: list[dict[str, Any]]) -> None:
            jobs = jobs_of(batch, self.jobs)
            self.jobs += len(jobs)
            self.example.apply({"op": "dispatch", "jobs": jobs})

        @rule(where=targets, toxic=TOXICS, stream=st.sampled_from(["downstream", "upstream"]), hold=HOLD)
        def toxic(self, where: Any, toxic: dict[str, Any], stream: str, hold: int) -> None:
            self.example.apply({"op": "toxic", "target": where, "stream": stream, "hold": hold, **toxic})

        @rule(where=targets, hold=st.sampled_from([2, 8]))  # shorter / longer than session.timeout (6 s)
        def disable(self, where: Any, hold: int) -> None:
            self.example.apply({"op": "disable", "target": where, "hold": hold})

        @precondition(lambda self: env.nodes >= 3)  # the peer and controller listeners are proxied
        @rule(where=targets, role=st.sampled_from(["internal", "controller"]), toxic=TOXICS,
              stream=st.sampled_from(["downstream", "upstream"]), hold=HOLD)
        def peer_toxic(self, where: Any, role: str, toxic: dict[str, Any], stream: str, hold: int) -> None:
            self.example.apply({"op": "toxic", "role": role, "target": where, "stream": stream, "hold": hold,
                                **toxic})

        @rule(records=HOSTILE)
        def hostile(self, records: list[tuple[str, bool]]) -> None:
            self.example.apply({"op": "hostile", "records": hostile_of(records)})

        @rule(cycles=st.integers(2, 4), up=st.sampled_from([1, 2, 3]))
        def churn(self, cycles: int, up: int) -> None:
            self.example.apply({"op": "churn", "cycles": cycles, "up": up})

        @precondition(lambda self: not self.cleared)
        @rule()
        def clear_replay(self) -> None:
            self.cleared = True
            self.example.apply({"op": "clear_replay", "queue": "plain"})

        @precondition(lambda self: env.nodes >= 3)
        @rule(node=st.integers(0, 2), hold=st.sampled_from([3, 8]))
        def isolate(self, node: int, hold: int) -> None:
            self.example.apply({"op": "isolate", "node": node, "hold": hold})

        @rule(node=st.sampled_from(["busiest", *range(env.nodes)]), down=st.sampled_from([1, 5]))
        def kill_broker(self, node: Any, down: int) -> None:
            self.example.apply({"op": "kill_broker", "node": node, "down": down})

        @rule(worker=st.integers(0, 1), sig=st.sampled_from(["kill", "term", "stop"]), hold=st.sampled_from([0, 2]),
              long_stop=st.booleans())
        def worker(self, worker: int, sig: str, hold: int, long_stop: bool) -> None:
            if sig == "stop":  # 12 s is longer than max.poll.interval (10 s): the group moves on
                hold = 12 if long_stop else 3
            self.example.apply({"op": "worker", "worker": worker, "signal": sig, "hold": hold})

        @rule()
        def heal(self) -> None:
            self.example.apply({"op": "heal"})

        @rule(seconds=st.sampled_from([1, 3]))
        def pause(self, seconds: int) -> None:
            self.example.apply({"op": "pause", "seconds": seconds})

        def teardown(self) -> None:
            outcomes.append(self.example.finish())

    return ChaosMachine


def _record(report: Any, scenario: str, mode: str, cluster: str, outcomes: list[Outcome_]) -> None:
    """Add the outcomes to the report; failing schedules are also kept in chaos/reports/failing/
    (the schedules/ folder is emptied by the next run)."""
    row = report.row(scenario, mode, cluster)
    for o in outcomes:
        row.add(o.result, o.schedule, o.faults, o.unexpected_worker_exits)
        if not o.result.ok:
            FAILING.mkdir(parents=True, exist_ok=True)
            shutil.copy(o.schedule, FAILING / f"{time.strftime('%Y%m%d-%H%M%S')}-{cluster}-{mode}-{o.schedule.name}")
    report.write()


def _verdict(outcomes: list[Outcome_]) -> None:
    bad = [o for o in outcomes if not o.result.ok]
    lines = []
    for o in bad:
        lines.append(f"{o.schedule} ({len(o.result.violations)} violations; replay: make chaos REPLAY={o.schedule}):")
        lines += [f"    {v}" for v in o.result.violations[:15]]
    assert not bad, "guarantees broken:\n" + "\n".join(lines)


@pytest.mark.skipif(bool(replay_path()), reason="REPLAY is set: only the replay runs")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_random_faults(request: pytest.FixtureRequest, pytestconfig: pytest.Config, protojobs_toxiproxy_server: Any,
                       chaos_report: Any, schedule_numbers: Any, cluster: str, mode: str) -> None:
    if mode == "exactly_once":
        reason = exactly_once_support()
        if reason is not None:
            chaos_report.skip("random", mode, cluster, reason)
            chaos_report.write()
            pytest.skip(reason)
    env = env_for(request, pytestconfig, protojobs_toxiproxy_server, cluster)
    outcomes: list[Outcome_] = []
    # each (cluster, mode) test draws its own examples: seed SEED + its index
    machine = seed(SEED + 2 * CLUSTERS.index(cluster) + MODES.index(mode))(
        machine_for(env, mode, outcomes, schedule_numbers))
    try:
        run_state_machine_as_test(machine, settings=settings(max_examples=EXAMPLES, stateful_step_count=STEPS),
                                  _min_steps=min(5, STEPS))
    finally:
        _record(chaos_report, "random", mode, cluster, outcomes)
    _verdict(outcomes)


@pytest.mark.skipif(not replay_path(), reason="set REPLAY=<schedule.json> to replay one")
def test_replay(request: pytest.FixtureRequest, pytestconfig: pytest.Config, protojobs_toxiproxy_server: Any,
                chaos_report: Any, schedule_numbers: Any) -> None:
    path = replay_path()
    assert path is not None and path.exists(), f"no schedule file {path}"
    schedule = load_schedule(path)
    mode = schedule.get("mode", "at_least_once")
    if mode == "exactly_once" and (reason := exactly_once_support()) is not None:
        pytest.skip(reason)
    env = env_for(request, pytestconfig, protojobs_toxiproxy_server, schedule.get("cluster", "single"))
    outcome = run_schedule(env, schedule, schedule_numbers.next("replay-"), {"file": str(path)})
    _record(chaos_report, f"replay {path.name}", mode, env.name, [outcome])
    _verdict([outcome])
