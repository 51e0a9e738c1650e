"""Scenario 7 (`--profile`): cProfile of the worker's hot path, written to results/profile.txt.

N pre-loaded no-op jobs are drained by an in-process `Worker` (max_jobs=N). cProfile runs in
the consume loop's thread and in every lane thread (a per-thread profiler started by
threading.setprofile), merged into one report. Profiling slows Python code down (roughly 2x
here), so the report gives shares and per-job costs under the profiler; the unprofiled cost per
job is 1 / the jobs/s of scenario 2. Two passes: validate_on_consume on (the default) and off.
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
        prof = cProfile.Profile()
        with lock:
            profiles.append(prof)
        prof.enable()

    bench_jobs.reset()
    worker = Worker(settings, WorkerOptions(max_jobs=n))
    threading.setprofile(start_thread_profiler)
    main = cProfile.Profile()
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


def run(env: Env) -> dict[str, Any]:
    n = 20_000 if env.quick else 40_000
    out = io.StringIO()
    summary: dict[str, Any] = {"jobs": n}
    for validate in (True, False):
        stats, elapsed = profiled_drain(env, n, validate)
        label = f"validate_on_consume={str(validate).lower()}"
        summary[label] = {"seconds_profiled": elapsed}
        out.write(f"=== worker hot path, {n} no-op jobs, {label}: {elapsed:.2f} s under the profiler "
                  f"({n / elapsed:,.0f} jobs/s profiled) ===\n\n")
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
