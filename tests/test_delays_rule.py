"""The delay-tier routing rule (model.delays), proved by simulation.

The simulation models what the router does: each tier is a FIFO topic; a tier's head record
leaves when it is due (`due_at`) and only then can the next record leave (head-of-line
blocking); a released record goes where `next_hop` says. Processing takes zero time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protojobs.model.delays import due_at, hop_bound, next_hop, tier_for

SETTINGS = settings(max_examples=200, deadline=None)
TIERS = [1000, 5000, 30_000, 300_000, 3_600_000]


def test_tier_for_picks_the_largest_tier_not_above_the_remaining_time() -> None:
    assert tier_for(1000, TIERS) == 1000
    assert tier_for(4999, TIERS) == 1000
    assert tier_for(5000, TIERS) == 5000
    assert tier_for(299_999, TIERS) == 30_000
    assert tier_for(10 * 3_600_000, TIERS) == 3_600_000


def test_tier_for_uses_the_smallest_tier_below_it() -> None:
    assert tier_for(1, TIERS) == 1000
    assert tier_for(999, TIERS) == 1000
    assert tier_for(0, [200]) == 200


@pytest.mark.parametrize("tiers", [[], [0, 10], [-5], [10, 10], [30, 10]])
def test_tiers_must_be_positive_and_ascending(tiers: list[int]) -> None:
    with pytest.raises(ValueError, match="tier"):
        tier_for(100, tiers)
    with pytest.raises(ValueError, match="tier"):
        hop_bound(100, tiers)


def test_due_at_is_the_earlier_of_tier_end_and_available_at() -> None:
    assert due_at(10_000, 5000, 100_000) == 15_000
    assert due_at(10_000, 5000, 12_000) == 12_000


def test_next_hop() -> None:
    assert next_hop(5000, 5000, TIERS) is None
    assert next_hop(5000, 6000, TIERS) is None
    assert next_hop(5000, 4999, TIERS) == 1000
    assert next_hop(65_000, 0, TIERS) == 30_000


def test_hop_bound_of_the_documented_tiers() -> None:
    # ceil(5/1)-1 + ceil(30/5)-1 + ceil(300/30)-1 + ceil(3600/300)-1 = 4 + 5 + 9 + 11 = 29
    assert hop_bound(0, TIERS) == 0
    assert hop_bound(1, TIERS) == 30
    assert hop_bound(2 * 3_600_000 + 1, TIERS) == 32


# --- simulation -----------------------------------------------------------------------------


@dataclass
class Job:
    available_at: int
    hops: int = 0
    released_at: int | None = None


@dataclass
class Record:
    job: Job
    entered: int
    due: int


@dataclass
class World:
    tiers: list[int]
    fifos: dict[int, deque[Record]] = field(default_factory=dict)
    max_wait_behind_head: int = 0

    def route(self, job: Job, now: int) -> None:
        tier = next_hop(job.available_at, now, self.tiers)
        if tier is None:
            job.released_at = now
            return
        job.hops += 1
        self.fifos.setdefault(tier, deque()).append(
            Record(job, now, due_at(now, tier, job.available_at))
        )

    def next_time(self) -> int | None:
        heads = [fifo[0].due for fifo in self.fifos.values() if fifo]
        return min(heads) if heads else None

    def release_due(self, now: int) -> None:
        moved = True
        while moved:
            moved = False
            for fifo in list(self.fifos.values()):
                while fifo and fifo[0].due <= now:
                    record = fifo.popleft()
                    self.max_wait_behind_head = max(self.max_wait_behind_head, now - record.due)
                    self.route(record.job, now)
                    moved = True


def simulate(tiers: list[int], dispatches: list[tuple[int, int]]) -> list[Job]:
    """Dispatch (at, delay) jobs in time order; run the tier routers to quiescence."""
    world = World(tiers)
    pending = sorted(dispatches)
    jobs: list[Job] = []
    index = 0
    while index < len(pending) or world.next_time() is not None:
        candidates = [t for t in (world.next_time(),) if t is not None]
        if index < len(pending):
            candidates.append(pending[index][0])
        now = min(candidates)
        while index < len(pending) and pending[index][0] == now:
            at, delay = pending[index]
            job = Job(at + delay)
            jobs.append(job)
            world.route(job, now)
            index += 1
        world.release_due(now)
    return jobs


@st.composite
def tier_sets(draw: st.DrawFn) -> list[int]:
    """1 to 6 strictly ascending tiers. Consecutive tiers differ by at most 40x: the rule holds
    for any ratio, the cap only keeps the number of simulated hops small."""
    tiers = [draw(st.integers(1, 5000))]
    for _ in range(draw(st.integers(0, 5))):
        tiers.append(tiers[-1] + draw(st.integers(1, 40 * tiers[-1])))
    return tiers


def fit(delay: int, tiers: list[int]) -> int:
    """The delay, folded to at most 300 visits of the largest tier (simulation time)."""
    return delay % (300 * tiers[-1] + 1)


delays = st.integers(0, 5_000_000) | st.integers(0, 5000)
dispatch_lists = st.lists(st.tuples(st.integers(0, 200_000), delays), min_size=1, max_size=25)


@given(tier_sets(), delays)
@SETTINGS
def test_a_single_job_is_released_exactly_on_time(tiers: list[int], delay: int) -> None:
    delay = fit(delay, tiers)
    (job,) = simulate(tiers, [(1000, delay)])
    assert job.released_at == job.available_at
    assert job.hops <= hop_bound(delay, tiers)


@given(tier_sets(), dispatch_lists)
@SETTINGS
def test_many_jobs_never_early_and_late_by_less_than_the_smallest_tier(
    tiers: list[int], dispatches: list[tuple[int, int]]
) -> None:
    dispatches = [(at, fit(delay, tiers)) for at, delay in dispatches]
    jobs = simulate(tiers, dispatches)
    assert len(jobs) == len(dispatches)
    for job, (_at, delay) in zip(jobs, sorted(dispatches), strict=True):
        assert job.released_at is not None
        assert job.released_at >= job.available_at  # never early
        late = job.released_at - job.available_at
        assert late == 0 or late < tiers[0]  # late only by less than the smallest tier
        assert job.hops <= hop_bound(delay, tiers)


def test_head_of_line_blocking_in_the_smallest_tier_is_what_makes_jobs_late() -> None:
    # Job A (due in 1000) enters the 1000 ms tier first; job B enters 1 ms later needing only
    # 10 ms (due at 11), so it waits behind A: released at 1000, late by 989 < 1000.
    jobs = simulate([1000, 5000], [(0, 1000), (1, 10)])
    assert [job.released_at for job in jobs] == [1000, 1000]
    assert jobs[1].available_at == 11  # so it is 989 ms late


@given(tier_sets(), st.integers(1, 5_000_000))
@SETTINGS
def test_hops_lie_between_the_greedy_floor_and_the_bound(tiers: list[int], delay: int) -> None:
    delay = max(1, fit(delay, tiers))
    (job,) = simulate(tiers, [(0, delay)])
    greedy_floor = delay // tiers[-1]
    assert greedy_floor <= job.hops <= hop_bound(delay, tiers)


def test_the_hop_bound_is_reached() -> None:
    # tiers 2 and 3: a delay of 5 goes 3 (remaining 2) -> 2 (remaining 0): 2 hops; a delay of
    # 2 hops once; a delay of 1 hops once. Bound: 5 // 3 + (ceil(3/2) - 1) + 1 = 3.
    assert [simulate([2, 3], [(0, d)])[0].hops for d in (1, 2, 5)] == [1, 1, 2]
    (job,) = simulate([10, 100], [(0, 199)])  # 100 -> 10 x 9 -> 10 (remaining 9): 11 hops
    assert job.hops == 11 == hop_bound(199, [10, 100])
