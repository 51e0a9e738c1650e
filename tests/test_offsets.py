"""Finished offsets -> commit point: checked against a from-scratch model."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from protojobs.model.offsets import OffsetTracker, PartitionOffsets


def test_commit_point_is_one_past_the_contiguous_finished_prefix() -> None:
    part = PartitionOffsets()
    assert part.commit_point() is None
    for offset in (0, 1, 2, 3):
        part.started(offset)
    part.finished(2)
    assert part.commit_point() is None  # 0 and 1 still running
    part.finished(0)
    assert part.commit_point() == 1
    part.finished(1)
    assert part.commit_point() == 3  # 0, 1, 2 done; 3 running
    part.finished(3)
    assert part.commit_point() == 4
    assert part.pending() == 0


def test_a_run_of_offsets_starts_at_once_only_if_it_ascends() -> None:
    part = PartitionOffsets()
    assert part.started_run([0, 1, 2, 5])
    assert not part.started_run([6, 4])  # not ascending: nothing of it is tracked
    assert not part.started_run([5])  # behind where the partition stands
    assert part.window() == 4 and part.ascends(6)
    part.finished(0)
    part.finished(1)
    assert part.commit_point() == 2


def test_uncommitted_counts_the_window_and_the_finished_prefix_beyond_the_commit() -> None:
    part = PartitionOffsets()
    assert part.uncommitted() == 0
    part.started_run([10, 11, 12, 13])
    part.finished(10)
    part.finished(11)
    part.finished(13)
    assert part.window() == 2 and part.uncommitted() == 4  # 10, 11 finished; 12 open, 13 behind it
    part.mark_committed(12)
    assert part.uncommitted() == 2


def test_gaps_between_offsets_are_skipped() -> None:
    part = PartitionOffsets()
    for offset in (10, 12, 15):  # 11, 13, 14: transaction markers or compacted away
        part.started(offset)
    part.finished(12)
    part.finished(10)
    assert part.commit_point() == 13
    part.finished(15)
    assert part.commit_point() == 16


def test_commit_point_is_reported_once_per_advance() -> None:
    part = PartitionOffsets()
    part.started(0)
    part.finished(0)
    assert part.commit_point() == 1
    part.mark_committed(1)
    assert part.commit_point() is None
    part.started(1)
    assert part.commit_point() is None
    part.finished(1)
    assert part.commit_point() == 2


def test_out_of_order_commit_acknowledgements_keep_the_highest() -> None:
    part = PartitionOffsets()
    for offset in range(3):
        part.started(offset)
        part.finished(offset)
    part.mark_committed(3)
    part.mark_committed(1)  # a late acknowledgement of an older commit
    assert part.commit_point() is None


def test_started_offsets_must_ascend() -> None:
    part = PartitionOffsets()
    part.started(5)
    with pytest.raises(ValueError, match="ascend"):
        part.started(5)
    with pytest.raises(ValueError, match="ascend"):
        part.started(3)


def test_finishing_an_unknown_or_finished_offset_changes_nothing() -> None:
    part = PartitionOffsets()
    part.started(0)
    part.started(1)
    assert part.finished(7) is False
    assert part.finished(1) is True
    assert part.finished(1) is False
    assert part.commit_point() is None and part.pending() == 1


def test_reset_forgets_offsets_from_the_seek_point_and_accepts_them_again() -> None:
    part = PartitionOffsets()
    for offset in range(6):
        part.started(offset)
    part.finished(0)
    part.finished(4)
    part.reset(3)  # the consumer seeks back to 3: 3, 4, 5 will be delivered again
    assert part.pending() == 2  # 1 and 2
    assert part.finished(4) is False  # a stale finish of a forgotten delivery
    part.started(3)
    part.finished(1)
    part.finished(2)
    assert part.commit_point() == 3
    part.finished(3)
    assert part.commit_point() == 4


def test_reset_forgets_finished_offsets_too() -> None:
    part = PartitionOffsets()
    for offset in range(3):
        part.started(offset)
    part.finished(2)  # finished, but behind 0 and 1
    part.reset(1)  # 1 and 2 will be delivered again
    part.started(1)
    part.started(2)  # running again: its earlier finish must not count
    part.finished(0)
    part.finished(1)
    assert part.commit_point() == 2
    assert part.pending() == 1


def test_reset_never_moves_the_commit_point_back() -> None:
    part = PartitionOffsets()
    for offset in range(5):
        part.started(offset)
        part.finished(offset)
    part.reset(2)
    part.started(2)
    part.finished(2)
    assert part.commit_point() == 5


def test_tracker_keys_partitions_and_drops_revoked_ones() -> None:
    tracker = OffsetTracker()
    tracker.started("jobs-b", 0, 7)
    tracker.started("jobs-a", 1, 3)
    tracker.started("jobs-a", 0, 0)
    tracker.finished("jobs-a", 1, 3)
    tracker.finished("jobs-b", 0, 7)
    assert tracker.commit_points() == [("jobs-a", 1, 4), ("jobs-b", 0, 8)]
    assert tracker.pending() == 1
    tracker.mark_committed("jobs-a", 1, 4)
    assert tracker.commit_points() == [("jobs-b", 0, 8)]
    tracker.drop("jobs-b", 0)
    assert tracker.commit_points() == []
    assert tracker.finished("jobs-b", 0, 8) is False  # late finish after revoke: ignored
    tracker.mark_committed("jobs-b", 0, 9)  # late commit acknowledgement: ignored
    assert tracker.partitions() == [("jobs-a", 0), ("jobs-a", 1)]
    tracker.drop("nope", 3)  # dropping an unknown partition is fine


def test_tracker_reset_reaches_the_partition() -> None:
    tracker = OffsetTracker()
    tracker.started("t", 0, 0)
    tracker.started("t", 0, 1)
    tracker.reset("t", 0, 1)
    tracker.started("t", 0, 1)
    assert tracker.pending() == 2


def test_many_offsets_finished_in_the_worst_order_stay_fast() -> None:
    part = PartitionOffsets()
    n = 200_000
    for offset in range(0, 2 * n, 2):
        part.started(offset)
    for offset in range(2 * n - 2, -1, -2):  # worst order: the prefix completes only at the end
        part.finished(offset)
    assert part.commit_point() == 2 * n - 1 and part.pending() == 0


def test_window_counts_started_jobs_not_in_the_finished_prefix() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.started("t", 0, offset)
    tracker.finished("t", 0, 1)
    tracker.finished("t", 0, 2)
    assert tracker.window("t", 0) == 5  # 1 and 2 finished behind the unfinished 0
    tracker.finished("t", 0, 0)
    assert tracker.window("t", 0) == 2 and tracker.windows() == {("t", 0): 2}
    assert tracker.window("t", 1) == 0


class Model(RuleBasedStateMachine):
    """Random interleavings of start / finish / commit / reset, checked against the definition:
    the commit point is 1 + the highest offset that and every earlier tracked offset finished,
    never moving backwards, reported only while ahead of the last committed offset."""

    def __init__(self) -> None:
        super().__init__()
        self.part = PartitionOffsets()
        self.started: list[int] = []
        self.finished: set[int] = set()
        self.next = 0
        self.best: int | None = None
        self.committed: int | None = None

    def expected(self) -> int | None:
        point = None
        for offset in self.started:
            if offset not in self.finished:
                break
            point = offset + 1
        if point is not None and (self.best is None or point > self.best):
            self.best = point
        if self.best is None or (self.committed is not None and self.best <= self.committed):
            return None
        return self.best

    @rule(gap=st.sampled_from([0, 0, 0, 1, 3]))  # mostly contiguous, sometimes a gap
    def start(self, gap: int) -> None:
        offset = self.next + gap
        self.part.started(offset)
        self.started.append(offset)
        self.next = offset + 1

    @rule(gaps=st.lists(st.sampled_from([0, 0, 0, 1, 3]), min_size=1, max_size=6))
    def start_run(self, gaps: list[int]) -> None:
        """A fetch's run of records started at once (the worker's fast path)."""
        offsets = []
        for gap in gaps:
            offsets.append(self.next + gap)
            self.next = offsets[-1] + 1
        assert self.part.started_run(offsets) is True
        self.started.extend(offsets)

    @precondition(lambda self: len(self.finished) < len(self.started))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        running = [o for o in self.started if o not in self.finished]
        offset = data.draw(st.sampled_from(running))
        assert self.part.finished(offset) is True
        self.finished.add(offset)

    @rule()
    def commit(self) -> None:
        point = self.part.commit_point()
        if point is not None:
            self.part.mark_committed(point)
            self.committed = point

    @rule(data=st.data())
    def reset(self, data: st.DataObject) -> None:
        self.expected()  # the model's best point so far survives the reset
        target = data.draw(st.sampled_from([*self.started[-6:], self.next]))
        self.part.reset(target)
        self.started = [o for o in self.started if o < target]
        self.finished = {o for o in self.finished if o < target}
        self.next = target

    @invariant()
    def commit_point_matches_the_model(self) -> None:
        assert self.part.commit_point() == self.expected()

    @invariant()
    def pending_matches_the_model(self) -> None:
        assert self.part.pending() == len(self.started) - len(self.finished)

    @invariant()
    def window_matches_the_model(self) -> None:
        unfinished = [i for i, o in enumerate(self.started) if o not in self.finished]
        assert self.part.window() == (len(self.started) - unfinished[0] if unfinished else 0)


TestModel = Model.TestCase
TestModel.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
