"""Each queue's retry schedule: nominal delays, the delay tiers a retry waits in, worst lateness."""

from __future__ import annotations

from typing import Any

from protojobs.config import Settings
from protojobs.model import retry
from protojobs.model.delays import hop_path
from protojobs.model.durations import format_ms
from protojobs.ops.errors import known_queue


def retry_plan_rows(settings: Settings, queue: str) -> list[dict[str, Any]]:
    """One row per retry of the queue's policy: nominal delay, tier path, worst lateness.
    `flag` is set when the smallest tier exceeds the delay itself (lateness could exceed the
    wait). UnknownQueue for a queue jobs.toml does not declare."""
    q = settings.queues[known_queue(settings, queue)]
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
