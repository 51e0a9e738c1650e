"""Scenario 4: delay accuracy through the delay tiers (protojobs.engine.router).

1,000 jobs per delay are dispatched with `delay_ms` (`dispatch_many`); one `protojobs run`
subprocess runs the worker and the delay router beside it (the default). The `due` handler
records lateness = handler start (epoch ms) - the job's `available_at`; an early start would
be negative. All delays run at once, so the full run waits for the longest (5 min) only once.
The router's start-up (its group join) is measured apart (`router_ready_s`: one 200 ms-delayed
job dispatched once the worker runs, until it is done) before the timed jobs are dispatched.
Tiers: 1s, 5s, 30s, 5m.
"""

from __future__ import annotations

import time
from typing import Any

from common import (
    Env,
    committed_total,
    fresh_prefix,
    make_settings,
    payloads,
    read_reports,
    settings_tree,
    spawn,
    stop,
    summary_ms,
    wait_until,
    write_config,
)
from s2_drain import PROTOJOBS

from protojobs.engine.dispatch import Dispatcher


def run(env: Env) -> dict[str, Any]:
    delays = {"1s": 1_000, "5s": 5_000} if env.quick else {"1s": 1_000, "30s": 30_000, "5min": 300_000}
    per_delay = 1_000
    prefix = fresh_prefix("delay")
    tree = settings_tree(env.bootstrap, prefix, handler="bench_jobs:due")
    settings = make_settings(tree)
    dispatcher = Dispatcher(settings)
    dispatcher.dispatch_many("jobs", payloads(1))  # creates the topics before the worker starts
    work = env.scratch("delay")
    proc = spawn([PROTOJOBS, "run", "--config", str(write_config(work, tree))],
                 env={"BENCH_REPORT_DIR": str(work)}, log=work / "worker.log")
    topic, group = f"{prefix}jobs", tree["kafka"]["group_id"]
    total = 2 + per_delay * len(delays)
    try:
        wait_until(lambda: committed_total(env.bootstrap, group, topic) >= 1, 60, 0.25)
        # The router joins its own group after the worker: one delayed job through the shortest
        # tier first, so its start-up (a group join, up to seconds) is measured apart from the
        # lateness of the jobs below, which see a router that is already running.
        started = time.monotonic()
        assert dispatcher.dispatch_many("jobs", [dict(payloads(1)[0], note="router-start")], delay=0.2).ok
        wait_until(lambda: committed_total(env.bootstrap, group, topic) >= 2, 60, 0.1)
        router_ready_s = time.monotonic() - started
        for label, ms in delays.items():
            batch = [dict(p, note=label) for p in payloads(per_delay)]
            result = dispatcher.dispatch_many("jobs", batch, delay=ms / 1000)
            assert result.ok, result.errors
        longest = max(delays.values()) / 1000
        finished = wait_until(lambda: committed_total(env.bootstrap, group, topic) >= total, longest + 60, 0.5)
    finally:
        stop(proc)
        dispatcher.close()
    by_label: dict[str, list[int]] = {label: [] for label in delays}
    for report in read_reports(work):
        for label, late in report["lat"]:
            if label in by_label:
                by_label[label].append(late)
    out: dict[str, Any] = {"jobs_per_delay": per_delay, "finished": finished,
                           "router_ready_s": round(router_ready_s, 2)}
    for label, late in by_label.items():
        stats = summary_ms([x * 1_000_000 for x in late])
        stats["early"] = sum(1 for x in late if x < 0)
        out[label] = stats
    return out
