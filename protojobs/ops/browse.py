"""Read-only views of the cluster for presenters (the dashboard): queue and tier offsets, the
cluster's brokers, and pages of records.

Guarantees
- Nothing here joins a consumer group or commits: committed offsets are asked through a
  consumer of the group that never subscribes, records are read with `assign()`.
- Offsets of every topic are asked in one batch per kind (earliest, latest, committed per
  group), so the cost of an overview grows with round trips, not with the number of queues.
- `read_range` reads at most `count` records of one partition from an offset: a page never
  reads a whole topic.
- A `Browser` is safe to share between threads (one lock around its consumers).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import OffsetSpec

from protojobs.config import Settings
from protojobs.kafka import admin
from protojobs.kafka.clients import ErrorWatch, consumer_config
from protojobs.model import names
from protojobs.ops import dlq

Key = tuple[str, int]


@dataclass(frozen=True)
class Offsets:
    """One partition: low and high watermarks, the group's committed offset (None: never)."""

    low: int
    high: int
    committed: int | None

    @property
    def depth(self) -> int:
        """Records not yet consumed-and-committed (as `protojobs stats` counts them)."""
        return max(0, self.high - max(self.low, self.committed if self.committed is not None else self.low))

    @property
    def lag(self) -> int:
        """High watermark minus the committed offset (the low watermark when none)."""
        return max(0, self.high - (self.committed if self.committed is not None else self.low))


class Browser:
    """Long-lived clients for repeated reads (one AdminClient, a consumer per group asked)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = admin.client(settings)
        self._lock = threading.Lock()
        self._watch = ErrorWatch()
        self._groups: dict[str, Consumer] = {}
        self._reader: Consumer | None = None

    def close(self) -> None:
        with self._lock:
            for consumer in [*self._groups.values(), *([self._reader] if self._reader else [])]:
                consumer.close()
            self._groups.clear()
            self._reader = None

    # --- offsets ------------------------------------------------------------------------------

    def partitions(self, topics: Iterable[str]) -> dict[str, list[int]]:
        """topic -> its partitions (absent: the topic does not exist)."""
        meta = admin.list_topics(self.client).topics
        return {t: sorted(meta[t].partitions) for t in topics if t in meta and meta[t].error is None}

    def offsets(self, group: str, topics: Iterable[str]) -> dict[str, dict[int, Offsets]]:
        """topic -> partition -> Offsets of `group` (topics that do not exist are left out)."""
        parts = self.partitions(topics)
        tps = [TopicPartition(t, p) for t, ps in parts.items() for p in ps]
        if not tps:
            return {}
        low = self.client.list_offsets({tp: OffsetSpec.earliest() for tp in tps}, request_timeout=admin.TIMEOUT)
        high = self.client.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=admin.TIMEOUT)
        done = self.committed(group, tps)
        out: dict[str, dict[int, Offsets]] = {t: {} for t in parts}
        for tp in tps:
            key = (tp.topic, tp.partition)
            out[tp.topic][tp.partition] = Offsets(low[tp].result(admin.TIMEOUT).offset,
                                                  high[tp].result(admin.TIMEOUT).offset, done.get(key))
        return out

    def committed(self, group: str, tps: list[TopicPartition]) -> dict[Key, int]:
        with self._lock:
            consumer = self._groups.get(group)
            if consumer is None:
                consumer = Consumer(consumer_config(self.settings.kafka, self._watch, group=group,
                                                    **{"isolation.level": "read_uncommitted"}))
                self._groups[group] = consumer
            got = consumer.committed([TopicPartition(tp.topic, tp.partition) for tp in tps], timeout=admin.TIMEOUT)
        return {(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0 and tp.error is None}

    # --- records ------------------------------------------------------------------------------

    def read_range(self, topic: str, partition: int, start: int, count: int, end: int | None = None,
                   timeout: float = 5.0) -> list[Message]:
        """At most `count` records of topic[partition] from `start` (below `end` when given);
        fewer when the partition ends first or nothing arrives for `timeout` seconds."""
        if count <= 0 or (end is not None and start >= end):
            return []
        with self._lock:
            if self._reader is None:
                self._reader = Consumer(consumer_config(
                    self.settings.kafka, self._watch, group=names.dlq_reader_group(self.settings.kafka.group_id),
                    **{"enable.partition.eof": True, "enable.auto.commit": False,
                       "isolation.level": "read_committed", "fetch.wait.max.ms": 10}))
            reader = self._reader
            reader.assign([TopicPartition(topic, partition, start)])
            out: list[Message] = []
            deadline = time.monotonic() + timeout
            try:
                while len(out) < count and time.monotonic() < deadline:
                    msgs = reader.consume(min(500, count - len(out)), 0.02)
                    if _take(msgs, out, count, end, topic, partition):
                        break
            finally:
                reader.unassign()
        return out

    # --- the cluster --------------------------------------------------------------------------

    def cluster(self) -> dict[str, Any]:
        """Brokers, the controller, and partitions whose in-sync replicas are fewer than their
        replicas (under-replicated) or that have no leader."""
        desc = self.client.describe_cluster(request_timeout=admin.TIMEOUT).result(admin.TIMEOUT)
        meta = admin.list_topics(self.client)
        under = [{"topic": t, "partition": p.id, "replicas": list(p.replicas), "isr": list(p.isrs), "leader": p.leader}
                 for t, tm in sorted(meta.topics.items()) for p in tm.partitions.values()
                 if len(p.isrs) < len(p.replicas) or p.leader < 0]
        controller = desc.controller.id if desc.controller is not None else None
        brokers = [{"id": n.id, "host": n.host, "port": n.port, "controller": n.id == controller}
                   for n in sorted(desc.nodes, key=lambda n: n.id)]
        return {"cluster_id": desc.cluster_id, "controller": controller, "brokers": brokers,
                "under_replicated": under}


def _take(msgs: list[Message], out: list[Message], count: int, end: int | None, topic: str, partition: int) -> bool:
    """Add the records of `msgs` to `out`; True when the page is complete (count, end, or EOF)."""
    for msg in msgs:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return True
            continue
        if msg.topic() != topic or msg.partition() != partition:
            continue
        if end is not None and cast(int, msg.offset()) >= end:
            return True
        out.append(msg)
        if len(out) >= count or (end is not None and cast(int, msg.offset()) + 1 >= end):
            return True
    return False


def overview(browser: Browser) -> dict[str, Any]:
    """Per queue: depth, lag, end offsets and committed totals; per delay tier: records waiting
    (behind the router's committed offsets); per dead-letter topic: records; group members."""
    settings = browser.settings
    prefix, group = settings.kafka.topic_prefix, settings.kafka.group_id
    topics = {names.queue_topic(prefix, q): q for q in settings.queues}
    queues = browser.offsets(group, topics)
    out: dict[str, Any] = {"queues": {}, "tiers": {}, "dead_letter": {}}
    for topic, name in topics.items():
        parts = queues.get(topic, {})
        out["queues"][name] = {"topic": topic, "depth": sum(o.depth for o in parts.values()),
                               "lag": sum(o.lag for o in parts.values()),
                               "produced": sum(o.high for o in parts.values()),
                               "committed": sum(o.committed or o.low for o in parts.values())}
    tiers = {names.delay_topic(prefix, t): t for t in settings.tiers_ms}
    tier_offsets = browser.offsets(names.router_group(group), tiers)
    for topic, tier_ms in tiers.items():
        waiting = sum(o.depth for o in tier_offsets.get(topic, {}).values())
        out["tiers"][topic] = {"tier_ms": tier_ms, "waiting": waiting}
    dl = browser.offsets(group, dlq.dead_letter_topics(settings))
    for topic in dlq.dead_letter_topics(settings):
        parts = dl.get(topic, {})
        out["dead_letter"][topic] = {"records": sum(o.high - o.low for o in parts.values()),
                                     "produced": sum(o.high for o in parts.values())}
    out["members"] = admin.group_members(browser.client, group)
    return out


# --- dead letters, a page at a time ----------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterFilter:
    """What the dead-letter list shows: every field given must match (None / "": any)."""

    queue: str | None = None
    job: str | None = None
    error: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    text: str | None = None

    def matches(self, e: dlq.Entry) -> bool:
        env = e.envelope
        if (self.queue and e.queue != self.queue) or (self.error and e.error_type != self.error):
            return False
        if self.job and (env is None or env.job != self.job) and e.job_id != self.job:
            return False
        if (self.since_ms is not None and e.failed_at < self.since_ms) or (
                self.until_ms is not None and e.failed_at > self.until_ms):
            return False
        return not self.text or self.text.lower() in _searchable(e)


def _searchable(e: dlq.Entry) -> str:
    d = e.dead
    parts = [e.job_id or "", e.queue or "", e.value or "", e.problem or ""]
    if d is not None:
        parts += [d.error_type, d.error_message, d.raw or ""]
        if d.envelope is not None:
            parts += [d.envelope.job, repr(d.envelope.data)]
    return "\n".join(parts).lower()


@dataclass
class DeadLetterPage:
    """Matching entries, newest failure first; `cursor` continues with older records (None: the
    start of every partition was reached); `scanned` records were read to fill it."""

    entries: list[dlq.Entry]
    cursor: dict[Key, int] | None
    scanned: int
    total: int


def dead_letter_page(browser: Browser, flt: DeadLetterFilter, cursor: dict[Key, int] | None = None,
                     limit: int = 50, budget: int = 1000) -> DeadLetterPage:
    """Walk the dead-letter topics backwards from `cursor` (default: their ends), a window of
    records per partition at a time, until `limit` entries match or `budget` records were read."""
    settings = browser.settings
    queue_of_topic = {names.queue_topic(settings.kafka.topic_prefix, q): q for q in settings.queues}
    offsets = browser.offsets(settings.kafka.group_id, dlq.dead_letter_topics(settings))
    lows = {(t, p): o.low for t, parts in offsets.items() for p, o in parts.items()}
    total = sum(o.high - o.low for parts in offsets.values() for o in parts.values())
    ends = {(t, p): o.high for t, parts in offsets.items() for p, o in parts.items()}
    pos = {k: max(lows[k], min(ends[k], cursor.get(k, ends[k]) if cursor else ends[k])) for k in ends}
    found: list[dlq.Entry] = []
    scanned = 0
    window = max(limit, 100)
    while len(found) < limit and scanned < budget and any(pos[k] > lows[k] for k in pos):
        for key in sorted(pos):
            if pos[key] <= lows[key]:
                continue
            start = max(lows[key], pos[key] - window)
            msgs = browser.read_range(key[0], key[1], start, pos[key] - start, end=pos[key])
            scanned += len(msgs)
            pos[key] = start
            found += [e for e in (dlq.decode_entry(m, queue_of_topic) for m in msgs) if flt.matches(e)]
    found.sort(key=lambda e: (e.failed_at, e.topic, e.partition, e.offset), reverse=True)
    more = any(pos[k] > lows[k] for k in pos)
    return DeadLetterPage(found, pos if more else None, scanned, total)


def dead_letter(browser: Browser, topic: str, partition: int, offset: int) -> dlq.Entry | None:
    """The dead-letter record at topic[partition]@offset, or None when there is none."""
    if topic not in dlq.dead_letter_topics(browser.settings):
        return None
    queue_of_topic = {names.queue_topic(browser.settings.kafka.topic_prefix, q): q for q in browser.settings.queues}
    msgs = browser.read_range(topic, partition, offset, 1)
    if not msgs or msgs[0].offset() != offset:
        return None
    return dlq.decode_entry(msgs[0], queue_of_topic)


def replay_matching(browser: Browser, flt: DeadLetterFilter, max_replays: int = dlq.DEFAULT_MAX_REPLAYS
                    ) -> dlq.ReplayReport:
    """Replay every dead-lettered job `flt` matches, with `ops.dlq`'s loop guard (an action,
    not a page: it reads every dead-letter record)."""
    known = dlq.read_all(browser.settings)
    chosen = [e for e in known if flt.matches(e)]
    return dlq.replay(browser.settings, chosen, known=known, max_replays=max_replays)


# --- workers --------------------------------------------------------------------------------

WORKERS_TAIL = 2000  # records of the workers topic read: the last beats of every live worker


def stale_after(interval_s: float) -> float:
    """Seconds without a presence record after which a worker is shown as lost."""
    return 3 * interval_s + 5


def workers(browser: Browser, now_s: float | None = None, tail: int = WORKERS_TAIL) -> list[dict[str, Any]]:
    """Every worker process seen in the tail of `{prefix}workers` (`observe.presence`), by host
    and pid, with `lost` (no record for `stale_after` its interval) and `age` (seconds since its
    last record); a worker that stopped cleanly (tombstone) is left out."""
    topic = names.workers_topic(browser.settings.kafka.topic_prefix)
    offsets = browser.offsets(browser.settings.kafka.group_id, [topic]).get(topic, {})
    latest: dict[bytes, dict[str, Any] | None] = {}
    for p, o in offsets.items():
        start = max(o.low, o.high - tail)
        for msg in browser.read_range(topic, p, start, o.high - start, end=o.high):
            key, value = msg.key() or b"", msg.value()
            try:
                latest[key] = json.loads(value) if value is not None else None
            except ValueError:
                continue
    now = time.time() if now_s is None else now_s
    out = []
    for row in latest.values():
        if not isinstance(row, dict) or not isinstance(row.get("ts"), int | float):
            continue
        age = now - row["ts"]
        interval = float(row["interval"]) if isinstance(row.get("interval"), int | float) else 3.0
        out.append(row | {"age": age, "lost": age > stale_after(interval)})
    return sorted(out, key=lambda r: (str(r.get("host")), int(r.get("pid") or 0), int(r.get("slot") or 0)))
