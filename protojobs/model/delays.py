"""Delay tiers: where a job waits until it is due (docs/architecture.md, "Delay tiers").

A job that is not yet due waits in one of the delay-tier topics (`topics.delay_topic`), each a
FIFO shared by all queues. The tier router holds each tier's head record until it is due,
then forwards it: to its queue if it is due now, else to the tier for what remains.

This file holds, for now, only the pure routing rule (no I/O, no clock: callers pass times
in epoch milliseconds). The router itself (pause + seek, forward) comes later, below it.

Guarantees of the rule, with tiers t1 < t2 < ... < tk (proved by the hypothesis tests in
tests/test_delays_rule.py, which simulate FIFO tiers with many jobs and zero processing time):
- never early: a job reaches its queue at or after its `available_at`;
- late by less than t1 (the smallest tier), plus processing time: in every tier but the
  smallest, a record's due time is exactly entered + tier, so due times ascend in FIFO order
  and no record waits behind another; only in the smallest tier can a record due sooner
  (remaining < t1) wait behind the head, and never past its own entry time + t1;
- few hops: at most `hop_bound(delay, tiers)` = floor(delay / tk)
  + sum over i < k of (ceil(t(i+1) / ti) - 1) + 1 tier visits per job.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

# --- the routing rule (pure) ----------------------------------------------------------------


def _check_tiers(tiers_ms: Sequence[int]) -> None:
    if not tiers_ms:
        raise ValueError("at least one delay tier is needed")
    if tiers_ms[0] <= 0 or any(a >= b for a, b in zip(tiers_ms, tiers_ms[1:], strict=False)):
        raise ValueError(f"delay tiers must be positive and strictly ascending, not {tiers_ms!r}")


def tier_for(remaining_ms: int, tiers_ms: Sequence[int]) -> int:
    """The tier for a job due in `remaining_ms`: the largest tier <= remaining, or the smallest
    tier if remaining is smaller than every tier. `tiers_ms` ascends strictly."""
    _check_tiers(tiers_ms)
    index = bisect_right(tiers_ms, remaining_ms) - 1
    return tiers_ms[max(index, 0)]


def due_at(entered_ms: int, tier_ms: int, available_at: int) -> int:
    """When a record that entered tier `tier_ms` at `entered_ms` may leave it:
    min(entered + tier, available_at). `entered_ms` is the tier record's timestamp."""
    return min(entered_ms + tier_ms, available_at)


def next_hop(available_at: int, now_ms: int, tiers_ms: Sequence[int]) -> int | None:
    """Where a job goes at `now_ms`: None = to its queue now (now >= available_at), else the
    tier to wait in, `tier_for(available_at - now_ms)`. Used at dispatch, on retry, and by the
    router when it releases a record."""
    if now_ms >= available_at:
        return None
    return tier_for(available_at - now_ms, tiers_ms)


def hop_bound(delay_ms: int, tiers_ms: Sequence[int]) -> int:
    """The most tier visits a job with this delay can make before reaching its queue.

    floor(delay / tk) visits of the largest tier, fewer than t(i+1) / ti visits of each other
    tier ti (once the remaining time is below t(i+1)), and one last visit of the smallest
    tier when less than t1 remains. 0 for a job that is due already.
    """
    _check_tiers(tiers_ms)
    if delay_ms <= 0:
        return 0
    ratios = sum(-(-hi // lo) - 1 for lo, hi in zip(tiers_ms, tiers_ms[1:], strict=False))
    return delay_ms // tiers_ms[-1] + ratios + 1


def hop_path(delay_ms: int, tiers_ms: Sequence[int]) -> list[int]:
    """The tiers a job delayed by `delay_ms` passes through (zero processing time)."""
    path: list[int] = []
    now = 0
    while True:
        tier = next_hop(delay_ms, now, tiers_ms)
        if tier is None:
            return path
        path.append(tier)
        now = due_at(now, tier, delay_ms)
