"""The dead-letter queue: list, show, replay and purge dead-lettered jobs.

Dead-lettered jobs live in the dead-letter topics jobs.toml names: `[kafka] dead_letter_topic`
and each queue's `dead_letter` (`dead_letter_topics`). Nothing is kept in memory between runs.

Guarantees
- `read_all` / `read` take a snapshot: each partition is read from its low watermark up to the
  end offset measured when the read starts (last stable offset, `read_committed`), with
  `assign()`: no consumer group is joined and no offset is committed, so reading changes nothing
  on the cluster. Either every record of the snapshot is returned, or `DlqError` is raised
  (no progress for `timeout` seconds, a fatal client error): never a silently partial list. A record that is not a
  dead-letter record becomes an `Entry` whose `problem` says why; it never raises.
- `replay` is at-least-once. Each job goes back to its queue's topic as `envelope.for_replay`
  (attempt 1, dispatched and due now, so a clear of the queue before the replay does not drop
  it; `replays` + 1, same id) with a `pj-replays` header, produced by an
  idempotent producer (acks=all); it counts as replayed only once the broker acknowledged it.
  Replaying an entry twice runs the job twice. The dead-letter record stays (Kafka is
  append-only) until `purge` deletes it. Of several dead-letter records of one job id only the
  newest (most replays, then latest failure) is replayed, the others are "superseded"; a job
  whose `replays` reached `max_replays` is skipped (replay-loop guard). Records whose original
  job did not decode (raw), or whose payload was truncated to fit the record, cannot be
  replayed and are reported as such.
- `purge` deletes the records of dead-letter topics up to the end offsets measured just
  before (delete_records); records dead-lettered meanwhile are kept. Kafka only deletes a
  topic's prefix, so one queue can be purged only when it has a dead-letter topic of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from protojobs import config
from protojobs.engine.dispatch import Dispatcher, Outcome, delivery_error, now_ms
from protojobs.kafka import admin
from protojobs.kafka.clients import ErrorWatch, consumer_config
from protojobs.model import dead_letter, envelope, names
from protojobs.ops.errors import known_queue

log = logging.getLogger(__name__)
DEFAULT_MAX_REPLAYS = 3
READ_TIMEOUT = 30.0
H_REPLAYS = "pj-replays"


class DlqError(RuntimeError):
    """Reading or replaying the dead-letter topics failed; the message says why."""


@dataclass(frozen=True)
class Entry:
    """One record of a dead-letter topic.

    `dead` is the decoded record, or None when it did not decode: then `problem` says why and
    `value` holds its (bounded) text. `topic`/`partition`/`offset`/`timestamp_ms` locate the
    record in its dead-letter topic. `queue` and `job_id` come from the envelope, else from the
    origin topic or the record's headers; None when unknown.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    dead: dead_letter.DeadLetterRecord | None
    queue: str | None
    job_id: str | None
    problem: str | None = None
    value: str | None = None

    @property
    def envelope(self) -> envelope.Envelope | None:
        return self.dead.envelope if self.dead is not None else None

    @property
    def error_type(self) -> str | None:
        return self.dead.error_type if self.dead is not None else None

    @property
    def failed_at(self) -> int:
        """When the job failed for good; the record's timestamp if the record did not decode."""
        return self.dead.failed_at if self.dead is not None else self.timestamp_ms

    @property
    def replays(self) -> int:
        env = self.envelope
        return env.replays if env is not None else 0

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def recency(self) -> tuple[int, int, str, int, int]:
        """Orders the records of one job: the most replayed, then the latest, is the newest."""
        return (self.replays, self.failed_at, self.topic, self.partition, self.offset)


# --- reading --------------------------------------------------------------------------------


def dead_letter_topics(settings: config.Settings) -> list[str]:
    """Every dead-letter topic of the configuration, sorted, each once."""
    names = {settings.kafka.dead_letter_topic} | {q.dead_letter_topic for q in settings.queues.values()}
    return sorted(names)


def _bounds(client: AdminClient, topic: str) -> dict[int, tuple[int, int]]:
    """partition -> (low watermark, last stable offset); {} when the topic does not exist."""
    meta = client.list_topics(topic, timeout=admin.TIMEOUT).topics.get(topic)
    if meta is None or meta.error is not None:
        return {}
    parts = [TopicPartition(topic, p) for p in meta.partitions]
    low = client.list_offsets({tp: OffsetSpec.earliest() for tp in parts}, request_timeout=admin.TIMEOUT)
    high = client.list_offsets({tp: OffsetSpec.latest() for tp in parts}, request_timeout=admin.TIMEOUT,
                               isolation_level=IsolationLevel.READ_COMMITTED)
    return {tp.partition: (low[tp].result(admin.TIMEOUT).offset, high[tp].result(admin.TIMEOUT).offset)
            for tp in parts}


def _consume(settings: config.Settings, spans: dict[tuple[str, int], tuple[int, int]],
             timeout: float) -> list[Message]:
    """The records in [low, end) of every (topic, partition); DlqError when `timeout` seconds
    pass without a record (or end of partition) while some partition is still unread."""
    pending = {tp: end for tp, (low, end) in spans.items() if end > low}
    if not pending:
        return []
    watch = ErrorWatch()
    conf = consumer_config(settings.kafka, watch, group=names.dlq_reader_group(settings.kafka.group_id), **{
        "isolation.level": "read_committed", "enable.partition.eof": True,
        "enable.auto.commit": False, "auto.offset.reset": "earliest"})  # fmt: skip
    consumer = Consumer(conf)
    out: list[Message] = []
    try:
        consumer.assign([TopicPartition(t, p, spans[(t, p)][0]) for t, p in pending])
        deadline = time.monotonic() + timeout
        while pending:
            watch.check()
            if time.monotonic() > deadline:
                left = ", ".join(f"{t}[{p}]" for t, p in sorted(pending))
                raise DlqError(f"reading the dead-letter topics stalled for {timeout:.0f}s ({left} unread)")
            msgs = consumer.consume(500, 0.2)
            if msgs:
                deadline = time.monotonic() + timeout
            for msg in msgs:
                tp = (cast(str, msg.topic()), cast(int, msg.partition()))
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.pop(tp, None)
                    elif err.fatal():
                        raise DlqError(f"reading {tp[0]}[{tp[1]}]: {err.str()}")
                    else:
                        log.warning("reading the dead-letter topics: %s", err.str())
                    continue
                end, offset = pending.get(tp), cast(int, msg.offset())
                if end is None or offset >= end:
                    continue
                out.append(msg)
                if offset + 1 >= end:
                    pending.pop(tp)
    finally:
        consumer.close()
    return out


def _entry(msg: Message, queue_of_topic: dict[str, str]) -> Entry:
    topic, partition, offset = cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())
    stamp, hdrs, value = msg.timestamp()[1], cast(Any, msg.headers()), msg.value()
    h_queue, h_id = envelope.header_value(hdrs, envelope.H_QUEUE), envelope.header_value(hdrs, envelope.H_ID)
    try:
        dead = dead_letter.decode_dead_letter(value)
    except (envelope.EnvelopeError, TypeError, ValueError, KeyError) as exc:
        text = None if value is None else dead_letter.bound_text(bytes(value).decode("utf-8", "replace"))
        return Entry(topic, partition, offset, stamp, None, h_queue, h_id, str(exc) or type(exc).__name__, text)
    env = dead.envelope
    if env is not None:
        return Entry(topic, partition, offset, stamp, dead, env.queue, env.id)
    return Entry(topic, partition, offset, stamp, dead, queue_of_topic.get(dead.topic) or h_queue, h_id)


decode_entry = _entry  # msg, {queue topic: queue} -> Entry (never raises)


def read_all(settings: config.Settings, timeout: float = READ_TIMEOUT) -> list[Entry]:
    """Every record of every dead-letter topic, oldest failure first (see the module's
    guarantees: a complete snapshot or DlqError)."""
    client = admin.client(settings)
    spans = {(topic, p): span for topic in dead_letter_topics(settings)
             for p, span in _bounds(client, topic).items()}
    prefix = settings.kafka.topic_prefix
    queue_of_topic = {names.queue_topic(prefix, name): name for name in settings.queues}
    entries = [_entry(msg, queue_of_topic) for msg in _consume(settings, spans, timeout)]
    return sorted(entries, key=lambda e: (e.failed_at, e.topic, e.partition, e.offset))


def select(entries: Iterable[Entry], *, queue: str | None = None, error: str | None = None,
           since_ms: int | None = None, ids: Collection[str] | None = None,
           limit: int | None = None) -> list[Entry]:
    """The entries matching every filter given, in their order; `limit` keeps the last N.

    queue: the job's queue (raw records: the queue of their origin topic); error: the exact
    class name of the error; since_ms: failed at or after; ids: job ids (None or empty: any).
    """
    out = [e for e in entries
           if (queue is None or e.queue == queue) and (error is None or e.error_type == error)
           and (since_ms is None or e.failed_at >= since_ms) and (not ids or e.job_id in ids)]
    return out[-limit:] if limit is not None and limit > 0 else ([] if limit == 0 else out)


def read(settings: config.Settings, *, queue: str | None = None, error: str | None = None,
         since_ms: int | None = None, ids: Collection[str] | None = None,
         limit: int | None = None, timeout: float = READ_TIMEOUT) -> list[Entry]:
    """`select(read_all(settings), ...)`: matching entries, oldest failure first, at most the
    `limit` most recent."""
    return select(read_all(settings, timeout), queue=queue, error=error, since_ms=since_ms,
                  ids=ids, limit=limit)


# --- replaying ------------------------------------------------------------------------------


@dataclass
class ReplayReport:
    """What `replay` did (or, for a dry run, would do), entry by entry, with the reasons."""

    replayed: list[Entry] = field(default_factory=list)
    skipped: list[tuple[Entry, str]] = field(default_factory=list)
    unreplayable: list[tuple[Entry, str]] = field(default_factory=list)
    failed: list[tuple[Entry, str]] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)  # asked-for ids no dead-letter record has


def plan_replay(selected: Sequence[Entry], known: Sequence[Entry], max_replays: int,
                settings: config.Settings) -> ReplayReport:
    """Sort `selected` into to-replay (`replayed`), skipped and unreplayable; no I/O.

    `known` is every entry read, so a selected record that a newer record of the same job
    supersedes is skipped even when the filters did not select the newer one.
    """
    newest: dict[str, Entry] = {}
    for e in known:
        env = e.envelope
        if env is not None:
            cur = newest.get(env.id)
            if cur is None or e.recency() > cur.recency():
                newest[env.id] = e
    report = ReplayReport()
    for e in selected:
        env = e.envelope
        if env is None:
            why = (f"not a dead-letter record ({e.problem})" if e.dead is None
                   else "the original record did not decode, so there is no job to send again")
            report.unreplayable.append((e, why))
        elif e.dead is not None and e.dead.truncated:
            report.unreplayable.append((e, "its payload was truncated to fit the dead-letter record, so the job "
                                           "cannot be sent again as it was"))
        elif newest.get(env.id, e) is not e:
            report.skipped.append((e, f"superseded by the newer record {newest[env.id].where}"))
        elif e.replays >= max_replays:
            report.skipped.append((e, f"already replayed {e.replays} time(s) (limit --max-replays {max_replays})"))
        elif env.queue not in settings.queues:
            report.failed.append((e, f"queue {env.queue!r} is not in jobs.toml"))
        else:
            report.replayed.append(e)
    return report


def replay(settings: config.Settings, selected: Sequence[Entry], *, known: Sequence[Entry] | None = None,
           max_replays: int = DEFAULT_MAX_REPLAYS, dry_run: bool = False) -> ReplayReport:
    """Send the selected jobs back to their queues (see the module's guarantees) and wait for
    every delivery report; a dry run only plans. Entries whose delivery failed move from
    `replayed` to `failed`."""
    report = plan_replay(selected, selected if known is None else known, max_replays, settings)
    if dry_run or not report.replayed:
        return report
    admin.ensure_topics(settings)
    dispatcher = Dispatcher(settings, ensure_topics=False)
    sent: list[tuple[Entry, Outcome]] = []
    try:
        now = now_ms()
        for e in report.replayed:
            sent.append((e, _produce(dispatcher, cast(envelope.Envelope, e.envelope), now)))
        dispatcher.wait([o for _, o in sent])
    finally:
        dispatcher.close(5)
    report.replayed = [e for e, o in sent if o.error is None]
    report.failed += [(e, str(o.error)) for e, o in sent if o.error is not None]
    return report


def replay_matching(settings: config.Settings, *, queue: str | None = None, error: str | None = None,
                    since_ms: int | None = None, ids: Collection[str] = (),
                    max_replays: int = DEFAULT_MAX_REPLAYS, dry_run: bool = False) -> ReplayReport:
    """`replay` of the entries `select` picks from a fresh `read_all`; the report's `not_found`
    lists the `ids` that no dead-letter record has."""
    known = read_all(settings)
    chosen = select(known, queue=queue, error=error, since_ms=since_ms, ids=ids)
    report = replay(settings, chosen, known=known, max_replays=max_replays, dry_run=dry_run)
    report.not_found = sorted(set(ids) - {e.job_id for e in chosen})
    return report


def _produce(dispatcher: Dispatcher, env: envelope.Envelope, now: int) -> Outcome:
    again = envelope.for_replay(env, now)
    outcome = Outcome(again.id)

    def delivered(err: KafkaError | None) -> None:
        outcome.error = None if err is None else delivery_error(err)
        outcome.done = True

    topic = names.queue_topic(dispatcher.settings.kafka.topic_prefix, again.queue)
    hdrs = envelope.headers(again) + [(H_REPLAYS, str(again.replays).encode())]
    key = again.key.encode() if again.key is not None else None
    dispatcher.outbox.send(topic, envelope.encode(again), key, hdrs, delivered)
    return outcome


# --- purging -------------------------------------------------------------------------------


class SharedTopic(DlqError):
    """`purge` of one queue whose dead-letter topic other queues share: Kafka deletes only a
    topic's oldest records, never one queue's."""

    def __init__(self, queue: str, topic: str) -> None:
        self.queue, self.topic = queue, topic
        super().__init__(f"queue {queue!r} shares the dead-letter topic {topic}, and Kafka can only delete "
                         "a topic's oldest records, not one queue's: purge every queue (no --queue), or give this "
                         "queue its own `dead_letter` topic")


def purge_targets(settings: config.Settings, queue: str | None = None) -> list[str]:
    """The dead-letter topics a purge deletes from: every one, or `queue`'s own (UnknownQueue,
    SharedTopic when other queues or the default dead-letter topic use it too)."""
    if queue is None:
        return dead_letter_topics(settings)
    own = settings.queues[known_queue(settings, queue)].dead_letter_topic
    if own == settings.kafka.dead_letter_topic or any(
            q.dead_letter_topic == own for q in settings.queues.values() if q.name != queue):
        raise SharedTopic(queue, own)
    return [own]


def record_count(client: AdminClient, topic: str) -> int:
    """How many records `purge` would delete from `topic` now."""
    return sum(high - low for low, high in admin.watermarks(client, topic).values())


def purge(client: AdminClient, topic: str) -> int:
    """Delete the records of `topic` up to its end offsets measured just before; how many."""
    return admin.clear(client, topic)


# --- the Python API (the facade) ------------------------------------------------------------


def failed_jobs(settings: config.Settings, limit: int = 50, offset: int = 0) -> list[Entry]:
    """Dead-letter entries, newest failure first, `offset` entries skipped, at most `limit`."""
    entries = read_all(settings)
    entries.reverse()
    return entries[max(offset, 0):max(offset, 0) + max(limit, 0)]


def retry(settings: config.Settings, job_id: str, *, max_replays: int = DEFAULT_MAX_REPLAYS) -> bool:
    """Replay one dead-lettered job (its newest record); False if no record has this id.

    Raises DlqError when the job is found but not replayed (replay limit reached, unknown
    queue, delivery failed); True means the broker acknowledged the replayed job.
    """
    known = read_all(settings)
    chosen = [e for e in select(known, ids=[job_id]) if e.envelope is not None]
    if not chosen:
        return False
    newest = max(chosen, key=Entry.recency)
    report = replay(settings, [newest], known=known, max_replays=max_replays)
    if report.replayed:
        return True
    why = "; ".join(reason for _, reason in report.skipped + report.failed)
    raise DlqError(f"job {job_id} was not replayed: {why}")


# --- as data -------------------------------------------------------------------------------


def iso(ms: int) -> str:
    """Epoch ms as ISO 8601 UTC with milliseconds, e.g. 2027-01-01T09:00:00.000Z."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json(e: Entry, full: bool = True) -> dict[str, Any]:
    """The entry as a JSON object; `full` adds the traceback and the raw record text."""
    out: dict[str, Any] = {"id": e.job_id, "queue": e.queue,
                           "dead_letter": {"topic": e.topic, "partition": e.partition, "offset": e.offset}}
    d = e.dead
    if d is None:
        out.update(problem=e.problem, failed_at=e.failed_at, failed_at_iso=iso(e.failed_at))
        return out | ({"value": e.value} if full else {})
    error = {"type": d.error_type, "message": d.error_message} | ({"traceback": d.traceback} if full else {})
    out.update(error=error, attempts=d.attempts, replays=e.replays, failed_at=d.failed_at,
               failed_at_iso=iso(d.failed_at), first_failed_at=d.first_failed_at, reason=d.reason,
               origin={"topic": d.topic, "partition": d.partition, "offset": d.offset}, host=d.host,
               envelope=envelope.to_dict(d.envelope) if d.envelope is not None else None)
    if full or d.envelope is None:
        out["raw"] = d.raw
    if d.truncated:
        out["truncated"] = True
    return out
