"""Scenario 7 (`--profile`): cProfile of the worker's hot path, written to results/profile.txt.

N pre-loaded no-op jobs are drained by an in-process `Worker` (max_jobs=N). cProfile runs in
the consume loop's thread and in every lane thread (a per-thread profiler started by
threading.setprofile), merged into one report. Its clock is each thread's CPU time
(`time.thread_time`): a thread blocked on a lock or the GIL, or waiting for records, costs
nothing, so the figures are CPU per job. Profiling slows Python code down (roughly 2x
here), so the report gives shares and per-job costs under the profiler; the unprofiled cost per
job is 1 / the jobs/s of scenario 2. Two passes: validate_on_consume on (the default) and off.

The per-stage table (`stages`): every function's own time is put in one stage of the hot path
(fetch, decode, validate, hand-off, handler call, offset bookkeeping, commit, metrics, other; see
`STAGES`), as µs per job under the profiler and as a share; `est_us` scales the shares to the
cost per job of an unprofiled drain of the same jobs in the same run (`unprofiled_jobs_s`), so
the stage figures are comparable between runs on a shared machine only as shares and ratios.
The in-process worker has no metrics hooks (the `metrics` stage is empty here; `protojobs run`
adds the Prometheus hooks, measured by scenario 2).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
import sys
import threading
import time
from pathlib import Path
from typing import Any

import bench_jobs
from common import RESULTS, Env, fresh_prefix, make_settings, settings_tree
from s2_drain import preload

from protojobs.engine.worker import Worker, WorkerOptions


def profiled_drain(env: Env, n: int, validate: bool) -> tuple[pstats.Stats, float]:
    prefix = fresh_prefix("profile")
    tree = settings_tree(env.bootstrap, prefix)
    tree["queues"]["jobs"]["validate_on_consume"] = validate
    settings = make_settings(tree)
    preload(settings, n)
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_thread_profiler(*_: Any) -> None:
        sys.setprofile(None)
        prof = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(prof)
        prof.enable()

    bench_jobs.reset()
    worker = Worker(settings, WorkerOptions(max_jobs=n))
    threading.setprofile(start_thread_profiler)
    main = cProfile.Profile(time.thread_time)
    started = time.perf_counter()
    main.enable()
    try:
        worker.run()
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    for prof in profiles:
        prof.disable()
    stats = pstats.Stats(main)
    for prof in profiles:
        with contextlib.suppress(TypeError):  # a thread that never ran Python code under its profiler
            stats.add(prof)
    return stats, elapsed


# Blocking waits (idle lane threads, the loop's timed waits): time spent doing nothing.
IDLE = {"<method 'get' of '_queue.SimpleQueue' objects>", "<method 'acquire' of '_thread.lock' objects>",
        "<method 'consume' of 'cimpl.Consumer' objects>", "<built-in method time.sleep>"}


def per_job_table(stats: pstats.Stats, n: int, limit: int = 25) -> str:
    """The functions with the most own time, as microseconds per job (under the profiler),
    idle waits left out (shares are of the busy time)."""
    busy = {k: v for k, v in stats.stats.items() if k[2] not in IDLE}  # type: ignore[attr-defined]
    rows = sorted(busy.items(), key=lambda kv: kv[1][2], reverse=True)[:limit]
    total = sum(v[2] for v in busy.values())
    lines = [f"{'us/job':>8} {'share':>6} {'calls/job':>9}  function", "-" * 80]
    for (file, line, name), (_cc, calls, tottime, _ct, _callers) in rows:
        where = f"{Path(file).name}:{line}({name})" if file != "~" else name
        lines.append(f"{tottime / n * 1e6:8.2f} {tottime / total:6.1%} {calls / n:9.2f}  {where}")
    return "\n".join(lines)


# Stage of a profile entry: the first rule whose file part and function part both occur in
# (file, function) wins. Idle waits are left out before (IDLE).
STAGES: list[tuple[str, str, str]] = [
    ("commit", "", "commit"),
    ("fetch", "", "'consume' of 'cimpl.Consumer'"),
    ("fetch", "kafka/clients.py", "fetch"),
    ("fetch", "kafka/partitions.py", "fetch"),
    ("fetch", "cimpl", ""),
    ("decode", "model/envelope.py", ""),
    ("decode", "", "msgspec"),
    ("decode", "", "'decode' of"),
    ("decode", "json/", ""),
    ("validate", "config/", ""),
    ("validate", "", "jsonschema"),
    ("validate", "jsonschema", ""),
    ("admission (_take, admit, JobRun)", "engine/worker.py", "_take"),
    ("admission (_take, admit, JobRun)", "engine/worker.py", "admit"),
    ("admission (_take, admit, JobRun)", "engine/worker.py", "_startable"),
    ("admission (_take, admit, JobRun)", "typing.py", "cast"),
    ("admission (_take, admit, JobRun)", "<string>", "__init__"),
    ("hand-off", "engine/lanes.py", ""),
    ("hand-off", "threading.py", ""),
    ("hand-off", "", "_thread"),
    ("hand-off", "", "SimpleQueue"),
    ("hand-off", "", "'notify'"),
    ("handler call", "engine/attempt.py", ""),
    ("handler call", "bench_jobs.py", ""),
    ("handler call", "", "ContextVar"),
    ("handler call", "", "Token"),
    ("offset bookkeeping", "model/offsets.py", ""),
    ("offset bookkeeping", "kafka/partitions.py", ""),
    ("offset bookkeeping", "engine/worker.py", "_finished"),
    ("offset bookkeeping", "engine/worker.py", "_drain"),
    ("metrics", "observe/", ""),
    ("metrics", "engine/hooks.py", ""),
    ("metrics", "prometheus", ""),
]
STAGE_ORDER = ["fetch", "decode", "validate", "admission (_take, admit, JobRun)",
               "hand-off", "handler call", "offset bookkeeping", "commit", "metrics",
               "other (loop, admission, flow control...)"]


def stage_of(file: str, name: str) -> str:
    for stage, in_file, in_name in STAGES:
        if in_file in file and in_name in name:
            return stage
    return STAGE_ORDER[-1]


def stage_costs(stats: pstats.Stats, n: int, unprofiled_jobs_s: float) -> dict[str, dict[str, float]]:
    """µs per job per stage (own time, idle waits left out), profiled and estimated unprofiled."""
    busy = {k: v for k, v in stats.stats.items() if k[2] not in IDLE}  # type: ignore[attr-defined]
    totals = dict.fromkeys(STAGE_ORDER, 0.0)
    for (file, _line, name), (_cc, _calls, tottime, _ct, _callers) in busy.items():
        totals[stage_of(file, name)] += tottime
    total = sum(totals.values()) or 1.0
    per_job_us = 1e6 / unprofiled_jobs_s if unprofiled_jobs_s else 0.0
    return {stage: {"profiled_us": t / n * 1e6, "share": t / total, "est_us": t / total * per_job_us}
            for stage, t in totals.items()}


def stage_table(stages: dict[str, dict[str, float]]) -> str:
    lines = [f"{'stage':<42} {'us/job (profiled)':>17} {'share':>6} {'est. us/job':>11}", "-" * 80]
    for stage in STAGE_ORDER:
        v = stages[stage]
        lines.append(f"{stage:<42} {v['profiled_us']:17.2f} {v['share']:6.1%} {v['est_us']:11.2f}")
    lines.append(f"{'total':<42} {sum(v['profiled_us'] for v in stages.values()):17.2f} {1:6.0%} "
                 f"{sum(v['est_us'] for v in stages.values()):11.2f}")
    return "\n".join(lines)


def unprofiled_drain(env: Env, n: int, validate: bool) -> float:
    """jobs/s of the same in-process drain without the profiler (the scale of `est_us`)."""
    prefix = fresh_prefix("unprofiled")
    tree = settings_tree(env.bootstrap, prefix)
    tree["queues"]["jobs"]["validate_on_consume"] = validate
    settings = make_settings(tree)
    preload(settings, n)
    bench_jobs.reset()
    Worker(settings, WorkerOptions(max_jobs=n)).run()
    state = bench_jobs.report()  # first to last handler call: start-up and group join left out
    return n / max((state["last"] - state["first"]) / 1e9, 1e-9)


def run(env: Env) -> dict[str, Any]:
    n = 20_000 if env.quick else 40_000
    out = io.StringIO()
    summary: dict[str, Any] = {"jobs": n}
    for validate in (True, False):
        stats, elapsed = profiled_drain(env, n, validate)
        rate = unprofiled_drain(env, n, validate)
        label = f"validate_on_consume={str(validate).lower()}"
        stages = stage_costs(stats, n, rate)
        summary[label] = {"seconds_profiled": elapsed, "unprofiled_jobs_s": rate, "stages": stages}
        out.write(f"=== worker hot path, {n} no-op jobs, {label}: {elapsed:.2f} s under the profiler "
                  f"({n / elapsed:,.0f} jobs/s profiled; {rate:,.0f} jobs/s unprofiled, in process, "
                  f"first to last handler call) ===\n\n")
        out.write("--- cost per stage (own time; est. = share x unprofiled us/job) ---\n")
        out.write(stage_table(stages) + "\n\n")
        out.write("--- own time per job (top 25) ---\n")
        out.write(per_job_table(stats, n) + "\n\n")
        for order in ("cumulative", "tottime"):
            buf = io.StringIO()
            stats.stream = buf  # type: ignore[attr-defined]
            stats.sort_stats(order).print_stats(40)
            out.write(f"--- top 40 by {order} ---\n{buf.getvalue()}\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "profile.txt"
    path.write_text(out.getvalue())
    summary["report"] = str(path)
    return summary
