"""The chaos checker (chaos/checker.py) on hand-made histories: each fault is flagged, a clean
history passes. Pure: no broker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chaos.checker import DeadRecord, Drain, Record, check  # noqa: E402
from chaos.history import Dispatch, Execution, FaultEvent, History, Hostile, QueueInfo, WorkerExit  # noqa: E402

T0 = 1_700_000_000.0
QUEUES = {
    "plain": QueueInfo("plain", "p-plain", "none", False, "p-dead-letter"),
    "ordered": QueueInfo("ordered", "p-ordered", "key", True, "p-dead-letter"),
}


def dispatch(job_id: str, seq: int, queue: str = "plain", key: str | None = None, kind: str = "normal",
             outcome: str = "acked", delay: float = 0.0) -> Dispatch:
    return Dispatch(job_id, queue, key, int((T0 + seq * 0.01 + delay) * 1000), kind, outcome, seq,
                    fail=1 if kind == "flaky" else 0, delayed=delay > 0, sent_at=int((T0 + seq * 0.01) * 1000))


def run(job_id: str, t: float, attempt: int = 1, ok: bool = True, due: float = T0, key: str | None = None) -> Execution:
    return Execution(job_id, attempt, 1234, t, due, ok, key=key, end=t + 0.001)


def dead(job_id: str, queue: str = "plain", key: str | None = None, attempts: int = 3,
         error_type: str = "ValueError", t: float = T0 + 5) -> DeadRecord:
    return DeadRecord("p-dead-letter", 0, 0, int(t * 1000), job_id, queue, key, error_type, attempts,
                      "attempts exhausted", f"p-{queue}", int((T0 + 1) * 1000), int(t * 1000))


def clean() -> tuple[History, Drain]:
    """Five jobs: two plain, one delayed, a flaky one, a poison one, two ordered on one key."""
    dispatches = [
        dispatch("a", 1), dispatch("b", 2), dispatch("c", 3, delay=2.0),
        dispatch("f", 4, kind="flaky"), dispatch("p", 5, kind="poison"),
        dispatch("o1", 6, queue="ordered", key="k"), dispatch("o2", 7, queue="ordered", key="k"),
        dispatch("x", 8, outcome="failed"), dispatch("u", 9, outcome="indefinite"),
    ]
    executions = [
        run("a", T0 + 0.5), run("b", T0 + 0.6), run("b", T0 + 3.0),  # b ran twice: at-least-once
        run("c", T0 + 2.2, due=T0 + 2.03),
        run("f", T0 + 0.7, ok=False), run("f", T0 + 1.2, attempt=2, due=T0 + 1.0),
        run("p", T0 + 0.8, ok=False), run("p", T0 + 1.3, attempt=2, ok=False, due=T0 + 1.1),
        run("p", T0 + 1.8, attempt=3, ok=False, due=T0 + 1.6),
        run("o1", T0 + 0.9, key="k"), run("o2", T0 + 1.0, key="k"),
        run("o1", T0 + 4.0, key="k"),  # a replay after a crash repeats a run: allowed
    ]
    history = History("at_least_once", 3, QUEUES, dispatches, executions,
                      [FaultEvent("disable", "client-1", T0 + 0.2, T0 + 1.5)], healed_at=T0 + 1.5)
    drain = Drain(queue_records=[Record("p-plain", 0, i, j, 1) for i, j in enumerate("abcfp")]
                  + [Record("p-ordered", 0, 0, "o1", 1), Record("p-ordered", 0, 1, "o2", 1)],
                  tier_records=[Record("p-delay-1s", 0, 0, "c", 1)], dead=[dead("p")])
    return history, drain


def test_clean_history_passes() -> None:
    history, drain = clean()
    result = check(history, drain)
    assert result.ok, [str(v) for v in result.violations]
    assert result.acked == 7 and result.failed == 1 and result.indefinite == 1 and result.must_settle == 7
    assert result.duplicates == {1: 4, 2: 2} and result.max_duplicates == 2
    assert result.recovery_s == pytest.approx(T0 + 5 - (T0 + 1.5))


def test_lost_job_is_flagged() -> None:
    history, drain = clean()
    history.executions = [e for e in history.executions if e.job_id != "a"]
    result = check(history, drain)
    assert [v.job_id for v in result.flagged("lost")] == ["a"] and result.lost == 1


def test_lost_poison_job_is_flagged() -> None:
    history, drain = clean()
    drain.dead = []
    assert [v.job_id for v in check(history, drain).flagged("lost")] == ["p"]


def test_indefinite_job_that_was_stored_must_run() -> None:
    history, drain = clean()
    drain.queue_records.append(Record("p-plain", 1, 0, "u", 1))
    assert [v.job_id for v in check(history, drain).flagged("lost")] == ["u"]


def test_phantoms_are_flagged() -> None:
    history, drain = clean()
    history.executions.append(run("ghost", T0 + 1))  # never dispatched
    history.executions.append(run("x", T0 + 1))  # dispatch failed definitely
    drain.queue_records.append(Record("p-plain", 2, 0, "x2", 1))  # stored, never dispatched
    result = check(history, drain)
    assert sorted(str(v.job_id) for v in result.flagged("phantom")) == ["ghost", "x", "x2"]


def test_duplicate_is_allowed_in_at_least_once_but_not_in_exactly_once() -> None:
    history, drain = clean()
    drain.queue_records.append(Record("p-plain", 0, 9, "a", 1))  # job a stored twice
    drain.dead.append(dead("p", t=T0 + 6))  # and p dead-lettered twice
    result = check(history, drain)
    assert result.ok and result.dead_letter_duplicates == 1
    history.mode = "exactly_once"
    result = check(history, drain)
    assert sorted(str(v.job_id) for v in result.flagged("exactly_once")) == ["a", "p"]
    assert result.exactly_once_violations == 2


def test_duplicate_executions_per_crash_are_reported() -> None:
    from chaos.report import Row, markdown

    history, drain = clean()  # b and o1 ran twice (attempt 1): two executions beyond the first
    result = check(history, drain)
    assert result.ok and result.extra_executions == 2 and result.crashes == 0 and result.duplicates_per_crash is None
    history.faults += [FaultEvent("worker:kill", "0", T0 + 2, T0 + 2), FaultEvent("worker:term", "1", T0 + 3, T0 + 3),
                       FaultEvent("worker:kill", "1", T0 + 4, T0 + 4)]
    result = check(history, drain)
    assert result.crashes == 2 and result.duplicates_per_crash == 1.0
    assert result.to_json()["duplicates_per_crash"] == 1.0
    row = Row("random", "at_least_once", "single")
    row.add(result, Path("1.json"), {"worker:kill": 2, "worker:term": 1}, 0)
    row.add(check(*clean()), Path("2.json"), {}, 0)  # no kill: its re-runs count, over the same kills
    data = row.to_json()
    assert (data["extra_executions"], data["worker_kills"], data["duplicate_executions_per_crash"]) == (4, 2, 2.0)
    versions = {"kafka": "4.1", "librdkafka": "2", "hypothesis": "6", "hypothesis_seed": 1}
    table = markdown({"versions": versions, "duration_s": 1.0, "rows": [data]})
    assert "| 2 (4 / 2 kills) |" in table


def test_early_run_is_flagged() -> None:
    history, drain = clean()
    history.executions = [e for e in history.executions if e.job_id != "c"] + [run("c", T0 + 1.5, due=T0 + 2.03)]
    result = check(history, drain)
    assert [v.job_id for v in result.flagged("early")] == ["c"] and result.early == 1


def test_early_against_the_dispatched_due_time_is_flagged() -> None:
    history, drain = clean()
    history.executions = [e for e in history.executions if e.job_id != "c"] + [run("c", T0 + 1.5, due=T0)]
    assert [v.job_id for v in check(history, drain).flagged("early")] == ["c"]


def test_retry_before_previous_attempt_failed_is_flagged() -> None:
    history, drain = clean()
    history.executions = [e for e in history.executions if e.job_id != "f"] + [
        run("f", T0 + 1.2, attempt=2, due=T0 + 1.0), run("f", T0 + 1.5, ok=False)]
    assert [v.job_id for v in check(history, drain).flagged("early")] == ["f"]


def test_stopped_workers_late_attempt_does_not_make_the_new_owners_retry_early() -> None:
    """A SIGSTOPped worker's attempt 1 ends (fails) after the new owner ran attempt 1 and, once
    that one failed, attempt 2: attempt 2 is judged against the first failure of attempt 1."""
    history, drain = clean()
    history.executions = [e for e in history.executions if e.job_id != "f"] + [
        Execution("f", 1, 1111, T0 + 0.7, T0, False, end=T0 + 13.0),  # stopped for 12 s inside its handler
        Execution("f", 1, 2222, T0 + 12.0, T0, False, end=T0 + 12.1),
        Execution("f", 2, 2222, T0 + 12.5, T0 + 12.4, True, end=T0 + 12.6)]
    assert check(history, drain).ok


def test_order_violation_is_flagged() -> None:
    history, drain = clean()
    history.executions = [e for e in history.executions if e.job_id not in ("o1", "o2")] + [
        run("o2", T0 + 0.9, key="k"), run("o1", T0 + 1.0, key="k")]
    result = check(history, drain)
    assert [v.job_id for v in result.flagged("order")] == ["o2"] and result.order_violations == 1


def test_order_is_not_checked_without_blocking_retries() -> None:
    history, drain = clean()
    history.queues = {**QUEUES, "ordered": QueueInfo("ordered", "p-ordered", "key", False, "p-dead-letter")}
    history.executions = [e for e in history.executions if e.job_id not in ("o1", "o2")] + [
        run("o2", T0 + 0.9, key="k"), run("o1", T0 + 1.0, key="k")]
    assert check(history, drain).ok


def test_healthy_job_dead_lettered_is_flagged() -> None:
    history, drain = clean()
    drain.dead.append(dead("f", error_type="RuntimeError"))
    result = check(history, drain)
    assert [v.job_id for v in result.flagged("dead_letter")] == ["f"] and not result.flagged("lost")


def test_dead_letter_metadata_is_checked() -> None:
    history, drain = clean()
    drain.dead = [dead("p", attempts=1, key="wrong")]
    details = [v.detail for v in check(history, drain).flagged("dead_letter")]
    assert len(details) == 2 and "key 'wrong'" in details[0] and "attempts 1" in details[1]


def test_unreadable_dead_letter_record_is_a_phantom() -> None:
    history, drain = clean()
    drain.dead.append(DeadRecord("p-dead-letter", 0, 5, int(T0 * 1000), None, problem="not JSON"))
    assert len(check(history, drain).flagged("phantom")) == 1


def test_incomplete_drain_fails() -> None:
    history, drain = clean()
    drain.complete, drain.note = False, "timed out"
    assert [v.check for v in check(history, drain).violations] == ["drain"]


def test_history_and_drain_round_trip_through_json() -> None:
    history, drain = clean()
    again = check(History.from_json(history.to_json()), Drain.from_json(drain.to_json()))
    assert again.to_json() == check(history, drain).to_json()


def hostile(shape: str, offset: int, job_id: str | None = None, may_run: bool = False,
            topic: str = "p-plain", partition: int = 1) -> Hostile:
    return Hostile(shape, topic, partition, offset, int(T0 * 1000), job_id, may_run, "plain")


def raw_dead(offset: int, reason: str = "undecodable: not UTF-8") -> DeadRecord:
    return DeadRecord("p-dead-letter", 0, 40 + offset, int((T0 + 2) * 1000), None, None, None, "EnvelopeError",
                      1, reason, "p-plain", None, int((T0 + 2) * 1000), "raw record", 1, offset)


def test_each_hostile_record_ends_in_exactly_one_state() -> None:
    history, drain = clean()
    history.hostile = [hostile("bad_utf8", 10), hostile("lone_surrogate", 11, "hs"),
                       hostile("bad_header", 12, "hh", True), hostile("control", 0, topic="p-control", partition=0)]
    drain.queue_records += [Record("p-plain", 1, 10, None, None), Record("p-plain", 1, 11, "hs", 1),
                            Record("p-plain", 1, 12, "hh", 1)]
    drain.dead += [raw_dead(10), dead("hs")]
    history.executions.append(run("hh", T0 + 1))
    history.parked = [("p-control", 0, 0), ("p-control", 0, 0)]  # every worker start skips it again
    result = check(history, drain)
    assert result.ok, result.violations
    assert result.hostile == 4 and result.hostile_states == {"dead_lettered": 2, "ran": 1, "parked": 1}


def test_hostile_record_that_never_ended_or_ended_twice_is_flagged() -> None:
    history, drain = clean()
    history.hostile = [hostile("bad_utf8", 10), hostile("deep", 11, "hd"), hostile("bad_header", 12, "hh", True)]
    drain.queue_records += [Record("p-plain", 1, 10, None, None)]
    drain.dead += [dead("hd"), dead("hh")]
    history.parked = [("p-plain", 1, 11)]
    history.executions.append(run("hh", T0 + 1))
    result = check(history, drain)
    assert [(v.check, v.job_id) for v in result.violations] == [
        ("hostile", None), ("hostile", "hd"), ("hostile", "hh")], result.violations
    assert result.hostile_violations == 3


def test_a_raw_dead_letter_record_of_no_hostile_record_is_still_a_phantom() -> None:
    history, drain = clean()
    history.hostile = [hostile("bad_utf8", 10)]
    drain.dead += [raw_dead(10), raw_dead(99)]
    assert [v.check for v in check(history, drain).violations] == ["phantom"]


def test_a_crash_loop_is_flagged() -> None:
    history, drain = clean()
    history.worker_exits = [WorkerExit(0, 1, T0 + 1), WorkerExit(1, -9, T0 + 2), WorkerExit(0, 1, T0 + 3)]
    assert check(history, drain).ok and check(history, drain).worker_exits == 3
    history.worker_exits.append(WorkerExit(0, 1, T0 + 4))
    result = check(history, drain)
    assert [v.check for v in result.violations] == ["crash"] and result.crash_loops == 1


def test_cleared_jobs_may_stay_unrun_and_replayed_jobs_must_run_again() -> None:
    history, drain = clean()
    history.mode = "exactly_once"
    history.dispatches.append(dispatch("late", 50))  # dispatched after the clear: must run
    history.executions = [e for e in history.executions if e.job_id not in ("a", "b")]
    cleared_at = int((T0 + 0.3) * 1000)
    replayed_at = int((T0 + 6) * 1000)
    history.faults.append(FaultEvent("clear_replay", "plain", T0 + 0.3, T0 + 6,
                                     {"queue": "plain", "cleared_at": cleared_at, "replayed": ["p"],
                                      "replayed_at": replayed_at}))
    drain.dead.append(dead("p", t=T0 + 9))  # the replayed poison job failed again: a second record, allowed
    result = check(history, drain)
    assert [(v.check, v.job_id) for v in result.violations] == [("lost", "p"), ("lost", "late")], result.violations
    assert result.cleared == 2
    history.executions += [run("p", T0 + 7, ok=False, due=T0 + 6), run("late", T0 + 1)]
    result = check(history, drain)
    assert result.ok, result.violations


def test_the_chaos_suite_asks_for_no_deprecated_fixture() -> None:
    """`make chaos` runs chaos/ under its own conftest, outside `make test`: a deprecated fixture
    name there (they warn, and warnings are errors) stopped the whole suite at set-up once."""
    import ast

    from protojobs.testing import plugin

    deprecated = set(plugin.DEPRECATED)
    assert {"kafka", "toxiproxy_server", "fresh_prefix"} <= deprecated
    asked = set()
    for path in sorted((Path(__file__).resolve().parents[1] / "chaos").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                asked |= {(path.name, arg.arg) for arg in node.args.args}
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "getfixturevalue":
                asked |= {(path.name, c.value) for n in node.args for c in ast.walk(n)
                          if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    assert {(file, name) for file, name in asked if name in deprecated} == set()
