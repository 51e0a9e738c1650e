"""Finished offsets -> the safe commit point, per partition (the commit rule of docs/architecture.md).

Jobs of one partition finish out of order (concurrency, per-key ordering), but a Kafka commit
says "everything before this offset is done". The safe commit point of a partition is
therefore 1 + the highest offset such that it and every earlier started offset are finished:
the contiguous finished prefix. Offsets need not be contiguous (transaction markers and
compaction leave gaps), so the tracker keeps the started offsets themselves, never a range.

Guarantees:
- `commit_point` never names an offset beyond a started offset that is not finished, so a
  commit of it never skips an unfinished job;
- the commit point of a partition never moves backwards, and is returned only while it is
  ahead of the last `mark_committed` offset;
- every operation is amortized O(1).
Pure: no I/O. Not thread-safe: use from the consume loop's thread.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Started and finished offsets of one partition, and the commit point they allow."""

    __slots__ = ("_order", "_open", "_finished", "_next_min", "_done", "_committed", "_base")

    def __init__(self) -> None:
        self._order: deque[int] = deque()  # started, not yet in the finished prefix, ascending
        self._open: set[int] = set()  # started, not finished
        self._finished: set[int] = set()  # finished, behind an open offset
        self._next_min = 0  # a newly started offset must be at least this
        self._done: int | None = None  # 1 + the end of the contiguous finished prefix
        self._committed: int | None = None
        self._base: int | None = None  # the first offset started: where progress is counted from

    def started(self, offset: int) -> None:
        """Record that the job at `offset` started. Offsets must ascend between resets;
        ValueError otherwise (a redelivery after a seek needs `reset` first)."""
        if offset < self._next_min:
            raise ValueError(
                f"offset {offset} started after offset {self._next_min - 1}: offsets must "
                "ascend within a partition (call reset() after a seek)"
            )
        if self._base is None:
            self._base = offset
        self._order.append(offset)
        self._open.add(offset)
        self._next_min = offset + 1

    def started_run(self, offsets: list[int]) -> bool:
        """`started` for each of `offsets` at once, if they ascend from here; False (nothing
        changes) if they do not."""
        low = self._next_min
        for offset in offsets:
            if offset < low:
                return False
            low = offset + 1
        if self._base is None and offsets:
            self._base = offsets[0]
        self._order.extend(offsets)
        self._open.update(offsets)
        self._next_min = low
        return True

    def ascends(self, offset: int) -> bool:
        """True when `offset` may start now (it is past every offset started since the last reset)."""
        return offset >= self._next_min

    def finished(self, offset: int) -> bool:
        """Record that the job at `offset` finished (done, or its retry / dead-letter copy is
        acknowledged). False, and nothing changes, if `offset` is not a started, unfinished
        offset (e.g. it was dropped by `reset`)."""
        if offset not in self._open:
            return False
        self._open.remove(offset)
        order = self._order
        if order[0] != offset:
            self._finished.add(offset)
            return True
        order.popleft()
        last = offset
        finished = self._finished
        while order and order[0] in finished:
            last = order.popleft()
            finished.remove(last)
        if self._done is None or last + 1 > self._done:
            self._done = last + 1
        return True

    def commit_point(self) -> int | None:
        """The offset to commit (1 + the end of the contiguous finished prefix), or None if
        it is not ahead of the last `mark_committed` offset."""
        done = self._done
        if done is None or (self._committed is not None and done <= self._committed):
            return None
        return done

    def mark_committed(self, offset: int) -> None:
        """Record that `offset` was committed (the broker acknowledged it). Out-of-order
        acknowledgements are fine: the highest one counts."""
        if self._committed is None or offset > self._committed:
            self._committed = offset

    def pending(self) -> int:
        """How many started jobs are not finished."""
        return len(self._open)

    def window(self) -> int:
        """How many started jobs are not in the finished prefix: unfinished, or finished behind an
        unfinished one. A crash re-delivers them (and what finished since the last commit)."""
        return len(self._order)

    def uncommitted(self) -> int:
        """Jobs a crash now would run again: the window, plus the finished prefix beyond the
        last committed offset (counted in offsets: gaps count too)."""
        done = self._done
        if done is None:
            return len(self._order)
        low = self._committed if self._committed is not None else self._base
        return len(self._order) + max(0, done - (low if low is not None else done))

    def reset(self, from_offset: int) -> None:
        """Forget every started offset >= `from_offset`: the consumer was moved back there
        (a seek, or re-assignment), so those records will be delivered and started again.
        Offsets below it stay tracked; the commit point does not move backwards."""
        order = self._order
        while order and order[-1] >= from_offset:
            offset = order.pop()
            self._open.discard(offset)
            self._finished.discard(offset)
        self._next_min = from_offset


class OffsetTracker:
    """`PartitionOffsets` for every assigned (topic, partition) of one consumer."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], PartitionOffsets] = {}

    def partition(self, topic: str, partition: int) -> PartitionOffsets:
        """The tracker of one partition, created empty on first use."""
        key = (topic, partition)
        part = self._parts.get(key)
        if part is None:
            part = self._parts[key] = PartitionOffsets()
        return part

    def started(self, topic: str, partition: int, offset: int) -> None:
        """See `PartitionOffsets.started`."""
        self.partition(topic, partition).started(offset)

    def finished(self, topic: str, partition: int, offset: int) -> bool:
        """See `PartitionOffsets.finished`; False for a partition that was dropped."""
        part = self._parts.get((topic, partition))
        return part.finished(offset) if part is not None else False

    def commit_points(self) -> list[tuple[str, int, int]]:
        """(topic, partition, offset) for every partition with something new to commit,
        sorted by topic and partition."""
        points = []
        for (topic, partition), part in sorted(self._parts.items()):
            offset = part.commit_point()
            if offset is not None:
                points.append((topic, partition, offset))
        return points

    def mark_committed(self, topic: str, partition: int, offset: int) -> None:
        """See `PartitionOffsets.mark_committed`; ignored for a partition that was dropped."""
        part = self._parts.get((topic, partition))
        if part is not None:
            part.mark_committed(offset)

    def reset(self, topic: str, partition: int, from_offset: int) -> None:
        """See `PartitionOffsets.reset`."""
        self.partition(topic, partition).reset(from_offset)

    def drop(self, topic: str, partition: int) -> None:
        """Forget a partition (revoked or lost): its late finishes are ignored from now on."""
        self._parts.pop((topic, partition), None)

    def pending(self) -> int:
        """How many started jobs are not finished, over every partition."""
        return sum(part.pending() for part in self._parts.values())

    def window(self, topic: str, partition: int) -> int:
        """See `PartitionOffsets.window`; 0 for a partition not tracked."""
        part = self._parts.get((topic, partition))
        return part.window() if part is not None else 0

    def uncommitted(self, topic: str, partition: int) -> int:
        """See `PartitionOffsets.uncommitted`; 0 for a partition not tracked."""
        part = self._parts.get((topic, partition))
        return part.uncommitted() if part is not None else 0

    def windows(self) -> dict[tuple[str, int], int]:
        """`window` of every tracked partition."""
        return {key: part.window() for key, part in self._parts.items()}

    def partitions(self) -> list[tuple[str, int]]:
        """The tracked (topic, partition) pairs, sorted."""
        return sorted(self._parts)
