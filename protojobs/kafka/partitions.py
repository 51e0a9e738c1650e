"""Partition ownership, progress and commits of one consumer: the worker's, the router's and the scheduler's.

One `Partitions` owns the group consumer and answers three questions the same way for every
loop that consumes:
- Is this record still ours? Every (topic, partition) has a generation, bumped when it is
  assigned, revoked, lost or rewound; work taken under an older generation is stale and is
  neither finished nor committed (the next owner runs it again from the committed offset).
  Rebalance callbacks run inside librdkafka's poll and consume calls, so a record `fetch`
  returns may have been taken from librdkafka before its partition was revoked (or revoked
  and assigned again) in the same call: `fetch` drops every record of a partition revoked or
  lost during the call, and seeks a re-assigned one back to its committed offset, so such a
  record is never started, run or committed.
- What may be committed? Only the contiguous finished prefix of each partition
  (`model.offsets.OffsetTracker`). Transactional partitions commit through `Transactions`
  (records and offsets atomically); the others with a plain commit: asynchronous on the
  interval, synchronous on revoke and shutdown.
- What happens on a rebalance? Cooperative-sticky: `on_assign` starts fresh progress;
  `on_revoke` lets the owner finish what it can (`Rebalance.partitions_revoking`), commits the revoked
  partitions and forgets them; `on_lost` forgets without committing and, when a transactional
  producer is in use, marks the session lost so the owner stops (a newer process may hold our
  transactional.id: publishing anything more could duplicate it).
- What is paused? `hold_all` / `release_all` pause every partition (flow control, shutdown);
  `put_back` pauses one partition and seeks it back to a record the owner did not take (pause
  first, then seek), so it is fetched again after `release`. A partition put back stays paused
  through `release_all`; a newly assigned one starts unpaused unless everything is held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, TopicPartition

from protojobs.config import KafkaSettings
from protojobs.kafka.clients import ErrorWatch, consumer_config, fetch
from protojobs.kafka.transactions import Output, Transactions, rewind_to_committed
from protojobs.model.offsets import OffsetTracker

log = logging.getLogger(__name__)
Key = tuple[str, int]


class Run(Protocol):
    """Work taken from a record: where it came from, and in which generation of ownership."""

    topic: str
    partition: int
    offset: int
    generation: int


class Rebalance(Protocol):
    """What the owner of a `Partitions` does around rebalances (all optional no-ops in `Quiet`)."""

    def partitions_assigned(self, keys: set[Key]) -> None:
        """Newly assigned partitions (before any record of them is fetched)."""

    def partitions_revoking(self, keys: set[Key]) -> None:
        """About to commit and give up `keys`: finish or drop their work now (bounded)."""

    def partitions_forgotten(self, keys: set[Key]) -> None:
        """`keys` were revoked, lost or rewound: drop any state kept for them."""


class Quiet:
    def partitions_assigned(self, keys: set[Key]) -> None:
        return None

    def partitions_revoking(self, keys: set[Key]) -> None:
        return None

    def partitions_forgotten(self, keys: set[Key]) -> None:
        return None


class Partitions:
    """The group consumer of one loop, with ownership generations, offsets and commits."""

    def __init__(self, kafka: KafkaSettings, watch: ErrorWatch, *, group: str | None = None,
                 owner: Rebalance | None = None, transactional: Callable[[str], bool] = lambda _t: False,
                 **consumer_extra: Any) -> None:
        self.owner: Rebalance = owner or Quiet()
        self.transactional = transactional  # topic -> commits through `txn`
        self.consumer = Consumer(consumer_config(kafka, watch, group=group, on_commit=self._on_commit,
                                                 **consumer_extra))
        self.offsets = OffsetTracker()
        self.generation: dict[Key, int] = {}
        self.assigned: set[Key] = set()
        self.revoking: set[Key] = set()
        self.txn: Transactions | None = None  # set by the owner once its producer is initialised
        self._committing: dict[Key, int] = {}  # the generation of each partition in the transaction in flight
        self.session_lost = False
        self.paused = False  # flow control: every partition held
        self.held: set[Key] = set()  # partitions this owner paused (and must resume before giving up)
        self.withheld: set[Key] = set()  # put back one by one: paused until `release`
        self.finished_count = 0  # offsets marked finished, in all (commit on a count)
        self._moved: set[Key] | None = None  # during `fetch`: partitions revoked, lost or rewound

    def subscribe(self, topics: list[str]) -> None:
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    # --- ownership and progress ---------------------------------------------------------------

    def generation_of(self, topic: str, partition: int) -> int:
        return self.generation.get((topic, partition), 0)

    def owns(self, topic: str, partition: int, generation: int) -> bool:
        """The partition is still ours, as it was when work of `generation` was taken."""
        return self.generation.get((topic, partition)) == generation

    def startable(self, topic: str, partition: int, generation: int) -> bool:
        """Owned, and not being revoked (buffered work of a revoking partition is dropped)."""
        return self.owns(topic, partition, generation) and (topic, partition) not in self.revoking

    def fetch(self, max_messages: int, timeout: float) -> list[Any]:
        """`clients.fetch`, without the records of partitions revoked, lost or rewound during the
        call (see the module's first question). A partition revoked and assigned again meanwhile
        is sought back to its committed offset: records of its new generation may be among
        those dropped, and must not be skipped. (A partition only assigned during the call has
        no stale records: librdkafka discards what it fetched for an earlier assignment.)"""
        self._moved = set()
        try:
            msgs = fetch(self.consumer, max_messages, timeout)
        finally:
            moved, self._moved = self._moved, None
        if not moved:
            return msgs
        kept, dropped = [], set()
        for msg in msgs:
            key = (msg.topic(), msg.partition())
            if msg.error() is None and key in moved:
                dropped.add(key)
            else:
                kept.append(msg)
        again = sorted(key for key in dropped if key in self.assigned)
        if dropped:
            log.info("dropped records taken before a rebalance of %s (not started, not committed)",
                     ", ".join(f"{t}[{p}]" for t, p in sorted(dropped)))
        if again:
            self.rewind(again)
        return kept

    def started(self, topic: str, partition: int, offset: int) -> bool:
        """Track `offset` as started; False (nothing tracked) for a partition not assigned: its
        record must not run (it would be committed for a partition we do not own)."""
        if (topic, partition) not in self.assigned:
            return False
        if not self.offsets.partition(topic, partition).ascends(offset):
            # librdkafka moved the fetch position back by itself (an offset reset, e.g. after a
            # leader change under faults): the records after it come again. Like a rewind, the
            # partition's progress is forgotten (work in flight for it is dropped when it ends)
            # and tracking starts over here, never a crash of the consuming thread.
            log.warning("%s[%d] went back to offset %d by itself; its records from there run again",
                        topic, partition, offset)
            self.forget({(topic, partition)}, keep_assigned=True)
        self.offsets.started(topic, partition, offset)
        return True

    def started_run(self, topic: str, partition: int, offsets: list[int]) -> bool:
        """`started` for a partition's run of ascending offsets at once; False (nothing tracked)
        when the partition is not assigned or the run does not ascend from where it stands:
        the caller then goes offset by offset."""
        if (topic, partition) not in self.assigned:
            return False
        return self.offsets.partition(topic, partition).started_run(offsets)

    def finished(self, topic: str, partition: int, offset: int, generation: int | None = None) -> bool:
        """Mark `offset` finished; False (nothing marked) when the partition changed hands since."""
        if generation is not None and not self.owns(topic, partition, generation):
            return False
        if self.offsets.finished(topic, partition, offset):
            self.finished_count += 1
        return True

    def finished_runs(self, runs: Iterable[Run]) -> int:
        """`finished` for many runs of work (each with its topic, partition, offset and the
        generation it was taken in); how many were still owned (the others are ignored)."""
        generation, offsets = self.generation, self.offsets
        owned = marked = 0
        for run in runs:
            if generation.get((run.topic, run.partition)) == run.generation:
                owned += 1
                if offsets.finished(run.topic, run.partition, run.offset):
                    marked += 1
        self.finished_count += marked
        return owned

    def publish_with_offset(self, topic: str, partition: int, output: Output) -> None:
        """Buffer a record for the transaction that will commit its source offset."""
        assert self.txn is not None, "publish_with_offset needs a transactional producer"
        self.txn.add(topic, partition, output)

    def pending(self) -> int:
        return self.offsets.pending()

    def window(self, topic: str, partition: int) -> int:
        """Jobs of the partition started but not committable (not in its finished prefix)."""
        return self.offsets.window(topic, partition)

    def uncommitted(self, topic: str, partition: int) -> int:
        """Jobs of the partition started and not committed (a crash would run them again)."""
        return self.offsets.uncommitted(topic, partition)

    def windows(self) -> dict[Key, int]:
        return self.offsets.windows()

    # --- commits ------------------------------------------------------------------------------

    def commit(self, asynchronous: bool, only: set[Key] | None = None, transactions: bool = True,
               overlap: bool = False) -> None:
        """Commit the finished prefix (of `only`, or of every partition; `transactions` False:
        not those of transactional topics). With `overlap` the transaction of the transactional
        partitions only begins here: the broker commits it while the caller goes on, and the
        next call (or `settled`) applies its end; one in flight makes this call skip them."""
        ready = True
        if self.txn is not None and transactions:
            ready = self._settle(wait=not overlap)
        chosen = [(t, p, o) for t, p, o in self.offsets.commit_points()
                  if (t, p) in self.assigned and (only is None or (t, p) in only)]
        if self.txn is not None and transactions and ready:
            txn_points = [pt for pt in chosen if self.transactional(pt[0])]
            if txn_points:
                self._committing = {(t, p): self.generation.get((t, p), 0) for t, p, _o in txn_points}
                self.txn.begin(txn_points)
                if not overlap:
                    self._settle(wait=True)
        points = [TopicPartition(t, p, o) for t, p, o in chosen if self.txn is None or not self.transactional(t)]
        if not points:
            return
        try:
            if asynchronous:
                self.consumer.commit(offsets=points, asynchronous=True)
                return
            for tp in self.consumer.commit(offsets=points, asynchronous=False) or []:
                if tp.error is None:
                    self.offsets.mark_committed(tp.topic, tp.partition, tp.offset)
        except Exception as exc:  # noqa: BLE001 - a failed commit is retried at the next interval
            log.warning("commit failed (will retry): %s", exc)

    def settled(self) -> bool:
        """Apply the end of the transaction in flight if it has ended; True when none is in
        flight any more. Raises Fenced (see `Transactions.settle`)."""
        return self.txn is None or self._settle(wait=False)

    def _settle(self, wait: bool) -> bool:
        """`Transactions.settle`, applied to the partitions still owned as when it began (one
        revoked, lost or rewound meanwhile is neither marked committed nor rewound again)."""
        assert self.txn is not None
        done = self.txn.settle(self._rewind_unchanged, wait)
        if done is None:
            return False
        for t, p, o in done:
            if self._unchanged((t, p)):
                self.offsets.mark_committed(t, p, o)
        self._committing = {}
        return True

    def _unchanged(self, key: Key) -> bool:
        return key in self.assigned and self.generation.get(key, 0) == self._committing.get(key)

    def _rewind_unchanged(self, keys: list[Key]) -> None:
        unchanged = [key for key in keys if self._unchanged(key)]
        if unchanged:
            self.rewind(unchanged)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if err is None and tp.error is None:
                self.offsets.mark_committed(tp.topic, tp.partition, tp.offset)

    # --- rebalancing --------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        for key in keys:
            self.generation[key] = self.generation.get(key, 0) + 1
            self.offsets.drop(*key)
        self.assigned |= keys
        self.withheld -= keys  # fresh progress from the committed offset: nothing is put back
        if self.paused and partitions:  # flow control holds every partition, new ones too
            consumer.incremental_assign(partitions)
            self.pause(keys)
        self.owner.partitions_assigned(keys)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self.revoking |= revoked
        try:
            self.owner.partitions_revoking(revoked)
            self.commit(asynchronous=False, only=revoked)
        finally:
            self._unpause(revoked)
            self.forget(revoked)
            self.revoking -= revoked

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost (not committing): %s", [f"{tp.topic}[{tp.partition}]" for tp in partitions])
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._unpause(lost)
        self.forget(lost)
        if self.txn is not None:
            # Our group session expired (a long pause, SIGSTOP): a newer process may hold our
            # transactional.id. The owner must publish nothing more: it stops, a fresh one starts.
            self.session_lost = True

    def rewind(self, keys: list[Key]) -> None:
        """After an aborted transaction: forget the partitions' progress and seek them back to
        their committed offsets; their records are consumed again."""
        self.forget(set(keys), keep_assigned=True)
        rewind_to_committed(self.consumer, keys)

    def forget(self, keys: set[Key], keep_assigned: bool = False) -> None:
        if self._moved is not None:
            self._moved |= keys
        for key in keys:
            self.generation[key] = self.generation.get(key, 0) + 1
            self.offsets.drop(*key)
            if self.txn is not None:
                self.txn.drop(*key)
            if not keep_assigned:
                self.assigned.discard(key)
                self.held.discard(key)
        withheld = self.withheld & keys
        self.withheld -= keys
        if keep_assigned and withheld and not self.paused:  # rewound: fetched again from the committed offset
            self.resume(withheld)
        self.owner.partitions_forgotten(keys)

    # --- flow control -------------------------------------------------------------------------

    def pause(self, keys: Iterable[Key]) -> None:
        keys = set(keys)
        self.consumer.pause([TopicPartition(t, p) for t, p in keys])
        self.held |= keys

    def resume(self, keys: Iterable[Key]) -> None:
        keys = set(keys)
        self.consumer.resume([TopicPartition(t, p) for t, p in keys])
        self.held -= keys

    def _unpause(self, keys: set[Key]) -> None:
        """Resume what we paused of partitions we are giving up, while they are still assigned:
        librdkafka keeps a partition's pause flag across losing and regaining it, so a held tier
        head or a flow-controlled partition would come back paused and never be fetched. (Resuming
        right after `incremental_assign` instead crashed librdkafka's main thread.)"""
        stale = keys & self.held
        if stale:
            self.resume(stale)

    def hold_all(self) -> None:
        """Stop fetching every assigned partition (and those assigned later) until `release_all`."""
        if self.assigned:
            self.pause(self.assigned)
        self.paused = True

    def release_all(self) -> None:
        """Resume every assigned partition but those put back (`release` resumes them)."""
        if self.assigned - self.withheld:
            self.resume(self.assigned - self.withheld)
        self.paused = False

    def put_back(self, topic: str, partition: int, offset: int) -> bool:
        """Pause the partition and seek it back to `offset`, a record the owner does not take now:
        it is fetched again after `release`. False (nothing withheld) when the seek failed: the
        owner must take the record, or an offset would be skipped."""
        key = (topic, partition)
        try:
            self.pause([key])  # pause first, then seek: a seek before the pause can be lost
            self.consumer.seek(TopicPartition(topic, partition, offset))
        except Exception as exc:  # noqa: BLE001 - KafkaException: take the record after all
            log.warning("could not put %s[%d]@%d back (%s); taking it", topic, partition, offset, exc)
            if not self.paused:
                self.resume([key])
            return False
        self.withheld.add(key)
        return True

    def release(self, keys: Iterable[Key]) -> None:
        """Fetch partitions put back again (from where they were put back); while everything is
        held (`hold_all`) they stay paused until `release_all`."""
        keys = {key for key in keys if key in self.withheld}
        if not keys:
            return
        self.withheld -= keys
        if not self.paused:
            self.resume(keys & self.assigned)

    def close(self) -> None:
        if self.txn is not None:
            self.txn.close()  # waits for a transaction still in flight (its end is not applied)
        try:
            self.consumer.close()  # leaves the group
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the consumer: %s", exc)
