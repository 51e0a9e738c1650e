"""The command functions behind the CLI: each returns an exit code and prints its result."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protojobs import config
from protojobs.engine.dispatch import Dispatcher, DispatchError
from protojobs.kafka import admin
from protojobs.model import names
from protojobs.model.durations import parse_ms


def _load(path: str | None) -> config.Settings | None:
    try:
        return config.load(path)
    except config.ConfigError as err:
        print(err, file=sys.stderr)
        return None


def dispatch(path: str | None, queue: str, payload: str | None, file: str | None, key: str | None,
             delay: str | None, at: str | None, job: str | None, job_id: str | None) -> int:
    settings = _load(path)
    if settings is None:
        return 1
    options: dict[str, Any] = {"key": key, "job": job, "job_id": job_id}
    try:
        if delay:
            options["delay_ms"] = parse_ms(delay)
        if at:
            options["at_ms"] = parse_time_ms(at)
    except ValueError as err:
        print(f"dispatch: {err}", file=sys.stderr)
        return 2
    dispatcher = Dispatcher(settings)
    try:
        if file is not None:
            return _dispatch_file(dispatcher, queue, Path(file), options)
        try:
            data = json.loads(payload or "")
        except json.JSONDecodeError as err:
            print(f"dispatch: the payload is not JSON: {err}", file=sys.stderr)
            return 1
        print(dispatcher.dispatch(queue, data, **options))
        return 0
    except (DispatchError, ValueError) as err:
        print(f"dispatch: {err}", file=sys.stderr)
        return 1
    finally:
        dispatcher.close()


def _dispatch_file(dispatcher: Dispatcher, queue: str, file: Path, options: dict[str, Any]) -> int:
    items, bad = [], []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as err:
            bad.append(f"{file}:{number}: not JSON: {err}")
    if bad:
        print("\n".join(bad), file=sys.stderr)
        return 1
    options = {k: v for k, v in options.items() if k != "job_id"}
    result = dispatcher.dispatch_many(queue, items, **options)
    for job_id in result.ids:
        print(job_id)
    for index, problem in sorted(result.errors.items()):
        print(f"{file}: job {index + 1}: {problem}", file=sys.stderr)
    print(f"dispatched {len(result.ids)} of {len(items)} jobs", file=sys.stderr)
    return 0 if result.ok else 1


def parse_time_ms(text: str) -> int:
    """ISO 8601 (with a zone, or UTC when none) or epoch seconds -> epoch ms."""
    from datetime import UTC, datetime

    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--at {text!r}: give an ISO 8601 time (2027-01-01T09:00:00Z) or epoch seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def stats_data(settings: config.Settings, queues: Sequence[str] | None = None) -> dict[str, Any]:
    """Depth per queue (and partition), jobs in delay tiers, dead-lettered, group members."""
    client = admin.client(settings)
    group, prefix = settings.kafka.group_id, settings.kafka.topic_prefix
    out: dict[str, Any] = {"group": group, "queues": {}}
    for name in queues or settings.queues:
        depth = admin.topic_depth(client, group, names.queue_topic(prefix, name))
        out["queues"][name] = {"depth": sum(depth.values()), "partitions": {str(p): d for p, d in sorted(depth.items())}}
    router = f"{group}-delays"
    out["delayed"] = {names.delay_topic(prefix, t): sum(admin.topic_depth(client, router,
                      names.delay_topic(prefix, t)).values()) for t in settings.tiers_ms}
    dead = {}
    for name in sorted({q.dead_letter_topic for q in settings.queues.values()}):
        dead[name] = sum(high - low for low, high in admin.watermarks(client, name).values())
    out["dead_letter"] = dead
    out["members"] = admin.group_members(client, group)
    return out


def stats(path: str | None, queues: Sequence[str] | None, as_json: bool) -> int:
    settings = _load(path)
    if settings is None:
        return 1
    unknown = [q for q in queues or () if q not in settings.queues]
    if unknown:
        print(f"stats: unknown queue(s) {unknown}", file=sys.stderr)
        return 1
    data = stats_data(settings, queues)
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"group {data['group']}: {len(data['members'])} member(s)")
    for m in data["members"]:
        print(f"  {m['client_id']} {m['host']}: {', '.join(m['assignment']) or '-'}")
    for name, q in data["queues"].items():
        print(f"queue {name}: depth {q['depth']}  ({', '.join(f'p{p}={d}' for p, d in q['partitions'].items())})")
    for name, n in data["delayed"].items():
        print(f"delay tier {name}: {n} waiting")
    for name, n in data["dead_letter"].items():
        print(f"dead letter {name}: {n}")
    return 0


def clear(path: str | None, queue: str, yes: bool) -> int:
    settings = _load(path)
    if settings is None:
        return 1
    if queue not in settings.queues:
        print(f"clear: unknown queue {queue!r}", file=sys.stderr)
        return 1
    client = admin.client(settings)
    topic = names.queue_topic(settings.kafka.topic_prefix, queue)
    if not yes:
        pending = sum(h - lo for lo, h in admin.watermarks(client, topic).values())
        print(f"clear: would delete {pending} record(s) of {topic}; add --yes to do it", file=sys.stderr)
        return 2
    from protojobs.engine.dispatch import now_ms
    from protojobs.kafka.control import record_clear

    admin.ensure_topics(settings, client)
    record_clear(settings, queue, now_ms())  # first: jobs of the queue still on their way are dropped
    print(f"cleared {admin.clear(client, topic)} record(s) from {topic}; jobs of {queue} waiting in "
          "delay tiers or retries are dropped when they come due")
    return 0


def topics_command(path: str | None, action: str) -> int:
    settings = _load(path)
    if settings is None:
        return 1
    client = admin.client(settings)
    try:
        changes = admin.plan(client, admin.topic_specs(settings))
        for change in changes:
            print(change)
        if not changes:
            print("topics: the cluster matches jobs.toml")
        if action == "apply" and changes:
            done = admin.apply(client, changes)
            print(f"topics: applied {len(done)} change(s)")
        return 1 if any(c.unsafe for c in changes) else 0
    except admin.AdminError as err:
        print(f"topics: {err}", file=sys.stderr)
        return 1


def hop_path(delay_ms: int, tiers_ms: tuple[int, ...]) -> list[int]:
    """The tiers a job delayed by `delay_ms` passes through (zero processing time)."""
    from protojobs.model import delays
    path: list[int] = []
    now = 0
    while True:
        tier = delays.next_hop(delay_ms, now, tiers_ms)
        if tier is None:
            return path
        path.append(tier)
        now = delays.due_at(now, tier, delay_ms)


def retry_plan_rows(settings: config.Settings, queue: str) -> list[dict[str, Any]]:
    """One row per retry of the queue's policy: nominal delay, tier path, worst lateness."""
    from protojobs.model import retry
    from protojobs.model.durations import format_ms

    q = settings.queues[queue]
    policy = settings.retry[q.retry]
    smallest = min(settings.tiers_ms) if settings.tiers_ms else 0
    rows = []
    for attempt, delay in enumerate(retry.schedule(policy), start=2):
        low, high = retry.jitter_bounds(policy, attempt - 1)
        path = hop_path(delay, settings.tiers_ms) if not q.blocking_retries else []
        worst = 0 if q.blocking_retries or not path else smallest
        rows.append({"attempt": attempt, "delay": format_ms(delay), "jitter": f"{format_ms(low)}..{format_ms(high)}",
                     "tiers": [format_ms(t) for t in path], "worst_lateness": format_ms(worst) if worst else "0s",
                     "flag": bool(path) and worst > delay})
    return rows


def retry_plan(path: str | None, queues: Sequence[str] | None) -> int:
    """Print each queue's retry schedule; exit 1 when a delay cannot be kept within tolerance
    (the smallest tier exceeds the delay itself, so lateness could exceed the wait)."""
    settings = _load(path)
    if settings is None:
        return 1
    flagged = False
    for name in queues or settings.queues:
        if name not in settings.queues:
            print(f"retry-plan: unknown queue {name!r}", file=sys.stderr)
            return 1
        q = settings.queues[name]
        mode = "blocking (in place, order kept)" if q.blocking_retries else "through delay tiers"
        print(f"queue {name}: policy {q.retry!r}, {settings.retry[q.retry].max_attempts} attempts, retries {mode}")
        for row in retry_plan_rows(settings, name):
            mark = "  <- smallest tier exceeds this delay" if row["flag"] else ""
            flagged = flagged or row["flag"]
            print(f"  attempt {row['attempt']}: after {row['delay']} (jitter {row['jitter']}), "
                  f"via {' > '.join(row['tiers']) or '-'}, late by at most {row['worst_lateness']}{mark}")
    return 1 if flagged else 0
