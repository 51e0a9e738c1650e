"""Topics, stats and clear, read from and applied to the live cluster (AdminClient).

- `topic_specs(settings)`: every topic jobs.toml implies (queues, delay tiers, dead-letter).
- `plan` / `apply`: the diff between those specs and the cluster; apply creates topics, adds
  partitions and alters topic configs (incrementally: keys we do not manage are left alone).
  Fewer partitions or a different replication factor are refused: Kafka cannot do the first,
  and the second needs a reassignment plan we do not guess.
- `stats`: depth per queue from high watermarks and the group's committed offsets.
- `clear`: `delete_records` up to the high watermark of a queue's topic.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ClusterMetadata,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)

from protojobs.config import Settings
from protojobs.kafka.clients import KAFKA_LOG, ErrorWatch
from protojobs.model import names

TIMEOUT = 15.0


class AdminError(RuntimeError):
    """A cluster operation failed or was refused; the message says which topic and why."""


# The ErrorWatch of each client made by `client`: its error_cb runs only inside poll(), so
# `list_topics` polls between short waits and raises ClientError when Kafka refused the client.
_WATCHES: weakref.WeakKeyDictionary[AdminClient, ErrorWatch] = weakref.WeakKeyDictionary()
_CONFS: weakref.WeakKeyDictionary[AdminClient, dict[str, Any]] = weakref.WeakKeyDictionary()


def client(settings: Settings) -> AdminClient:
    """An AdminClient with the security.* / sasl.* / ssl.* properties of [kafka.consumer]."""
    watch = ErrorWatch()
    conf: dict[str, Any] = {k: v for k, v in settings.kafka.consumer.items()
                            if k.startswith(("security.", "sasl.", "ssl."))}
    conf.update({"bootstrap.servers": settings.kafka.brokers, "logger": KAFKA_LOG, "error_cb": watch})
    admin = AdminClient(conf)
    _WATCHES[admin] = watch
    _CONFS[admin] = conf
    return admin


def list_topics(admin: AdminClient, topic: str | None = None, timeout: float = TIMEOUT) -> ClusterMetadata:
    """Cluster metadata. A refused client (wrong password, no authorization) raises ClientError
    within about a second: librdkafka would otherwise retry until `timeout` and then report only
    "Broker transport failure"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin.list_topics(topic, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except KafkaException:
            admin.poll(0)  # serves error_cb
            watch = _WATCHES.get(admin)
            if watch is not None:
                watch.check()
            if time.monotonic() >= deadline:
                raise


def topic_specs(settings: Settings) -> list[names.TopicSpec]:
    """Every topic jobs.toml implies, in a stable order."""
    prefix = settings.kafka.topic_prefix
    queues = list(settings.queues.values())
    parts = max(q.partitions for q in queues)
    rf = max(q.replication_factor for q in queues)
    retention = max(q.retention_ms for q in queues)
    specs = [names.TopicSpec(names.queue_topic(prefix, q.name), q.partitions, q.replication_factor,
                              {"retention.ms": str(q.retention_ms)}) for q in queues]
    for tier in settings.tiers_ms:
        specs.append(names.TopicSpec(names.delay_topic(prefix, tier), parts, rf,
                                      {"retention.ms": str(max(retention, 2 * tier))}))
    dead = sorted({q.dead_letter_topic for q in queues})
    specs += [names.TopicSpec(name, parts, rf, {"retention.ms": str(retention)}) for name in dead]
    specs.append(names.TopicSpec(names.control_topic(prefix), 1, rf, {"cleanup.policy": "compact"}))
    # one partition: whoever the scheduler group assigns it to leads (protojobs.scheduler)
    specs.append(names.TopicSpec(names.schedules_topic(prefix), 1, rf, {"cleanup.policy": "compact"}))
    # worker presence (observe.presence): compacted often, so a reader of its tail sees every live worker
    specs.append(names.TopicSpec(names.workers_topic(prefix), 1, rf, {
        "cleanup.policy": "compact", "segment.ms": "600000", "delete.retention.ms": "600000",
        "min.cleanable.dirty.ratio": "0.1"}))
    return specs


@dataclass(frozen=True)
class Change:
    """One difference between a spec and the cluster. `unsafe` changes are refused by apply."""

    topic: str
    action: str  # create | add-partitions | alter-config | refuse | ok
    detail: str
    spec: names.TopicSpec | None = None
    config: Mapping[str, str] = field(default_factory=dict)

    @property
    def unsafe(self) -> bool:
        return self.action == "refuse"

    def __str__(self) -> str:
        return f"{self.action:15} {self.topic}: {self.detail}"


def plan(admin: AdminClient, specs: Iterable[names.TopicSpec]) -> list[Change]:
    """What `apply` would do (nothing is changed)."""
    specs = list(specs)
    meta = list_topics(admin)
    existing = {s.name: s for s in specs if s.name in meta.topics}
    configs = _describe(admin, list(existing)) if existing else {}
    changes = []
    for spec in specs:
        info = meta.topics.get(spec.name)
        if info is None:
            changes.append(Change(spec.name, "create",
                                  f"{spec.partitions} partitions, RF {spec.replication_factor}", spec))
            continue
        have_parts = len(info.partitions)
        have_rf = len(next(iter(info.partitions.values())).replicas) if info.partitions else 0
        if have_parts > spec.partitions:
            changes.append(Change(spec.name, "refuse", f"has {have_parts} partitions, config asks {spec.partitions}: "
                                  "Kafka cannot remove partitions; raise `partitions` or recreate the topic"))
        elif have_parts < spec.partitions:
            changes.append(Change(spec.name, "add-partitions", f"{have_parts} -> {spec.partitions} (WARNING: keys "
                                  "move to other partitions; per-key order breaks across the change)", spec))
        if have_rf != spec.replication_factor:
            changes.append(Change(spec.name, "refuse", f"replication factor is {have_rf}, config asks "
                                  f"{spec.replication_factor}: reassign replicas with kafka-reassign-partitions"))
        differ = {k: v for k, v in spec.config.items() if configs.get(spec.name, {}).get(k) != v}
        if differ:
            changes.append(Change(spec.name, "alter-config", ", ".join(f"{k}={v}" for k, v in differ.items()),
                                  spec, differ))
    return changes


def _describe(admin: AdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
    out: dict[str, dict[str, str]] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=TIMEOUT).items():
        entries = future.result(timeout=TIMEOUT)
        out[resource.name] = {k: e.value for k, e in entries.items() if e.value is not None}
    return out


def apply(admin: AdminClient, changes: Iterable[Change], allow: Iterable[str] = ("create", "add-partitions",
                                                                              "alter-config")) -> list[Change]:
    """Carry out the safe changes; raise AdminError listing refused ones (after doing the rest)."""
    changes = list(changes)
    allowed = set(allow)
    creates = [c.spec for c in changes if c.action == "create" and "create" in allowed and c.spec]
    if creates:
        futures = admin.create_topics([NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config))
                                       for s in creates], request_timeout=TIMEOUT)
        _wait(futures, ignore="TOPIC_ALREADY_EXISTS")
    grows = [c.spec for c in changes if c.action == "add-partitions" and "add-partitions" in allowed and c.spec]
    if grows:
        _wait(admin.create_partitions([NewPartitions(s.name, s.partitions) for s in grows], request_timeout=TIMEOUT))
    alters = [c for c in changes if c.action == "alter-config" and "alter-config" in allowed]
    if alters:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, c.topic, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in c.config.items()])
            for c in alters]
        _wait(admin.incremental_alter_configs(resources))
    refused = [c for c in changes if c.unsafe]
    if refused:
        raise AdminError("refused unsafe changes:\n" + "\n".join(str(c) for c in refused))
    return [c for c in changes if c.action in allowed]


def _wait(futures: Mapping[Any, Any], ignore: str = "") -> None:
    for name, future in futures.items():
        try:
            future.result(timeout=TIMEOUT)
        except Exception as err:  # noqa: BLE001 - KafkaException and timeouts alike
            if ignore and ignore in str(err):
                continue
            raise AdminError(f"{name}: {err}") from err


_ensured: set[tuple[str, frozenset[str]]] = set()


def ensure_topics(settings: Settings, admin: AdminClient | None = None) -> None:
    """Create the topics jobs.toml implies that do not exist yet (once per process and set of
    topics: settings that imply more topics, e.g. an App that declared a job on a new queue,
    create those too)."""
    specs = topic_specs(settings)
    key = (settings.kafka.brokers, frozenset(spec.name for spec in specs))
    if key in _ensured:
        return
    admin = admin or client(settings)
    apply(admin, [c for c in plan(admin, specs) if c.action == "create"], allow=("create",))
    _ensured.add(key)


# --- stats and clear ----------------------------------------------------------------------------


R = TypeVar("R")
TRANSIENT = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
             KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
             KafkaError.NOT_COORDINATOR, KafkaError.UNKNOWN_TOPIC_OR_PART}


def settled(call: Callable[[], R], seconds: float = 15) -> R:
    """`call()`, repeated on the broker's transient errors (a topic or group created a moment
    ago: no leader yet, coordinator still loading) for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is None or not (err.retriable() or err.code() in TRANSIENT) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def watermarks(admin: AdminClient, topic: str) -> dict[int, tuple[int, int]]:
    """partition -> (low, high) watermark (transient broker errors are waited out)."""
    return settled(lambda: _watermarks(admin, topic))


def _watermarks(admin: AdminClient, topic: str) -> dict[int, tuple[int, int]]:
    meta = list_topics(admin, topic).topics.get(topic)
    if meta is None or meta.error is not None:
        return {}
    parts = [TopicPartition(topic, p) for p in meta.partitions]
    low = admin.list_offsets({tp: OffsetSpec.earliest() for tp in parts}, request_timeout=TIMEOUT)
    high = admin.list_offsets({tp: OffsetSpec.latest() for tp in parts}, request_timeout=TIMEOUT)
    return {tp.partition: (low[tp].result(TIMEOUT).offset, high[tp].result(TIMEOUT).offset) for tp in parts}


def committed(admin: AdminClient, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """partition -> the group's committed offset (absent when the group never committed)."""
    partitions = list(partitions)
    return settled(lambda: _committed(admin, group, topic, partitions))


def _committed(admin: AdminClient, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """Asked through a consumer of `group` that never subscribes (so never joins the group), not
    AdminClient.list_consumer_group_offsets: with librdkafka 2.16 that call crashed the whole
    process (NULL consumer-group handle in rd_kafka_handle_OffsetFetch, seen while the group's
    coordinator was busy). read_uncommitted: an open transaction does not make it wait."""
    conf = {**_CONFS.get(admin, {}), "group.id": group, "enable.auto.commit": False,
            "isolation.level": "read_uncommitted"}
    consumer = Consumer(conf)
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=TIMEOUT)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in got if tp.offset >= 0 and tp.error is None}


def topic_depth(admin: AdminClient, group: str, topic: str) -> dict[int, int]:
    """partition -> records not yet consumed-and-committed by `group`."""
    marks = watermarks(admin, topic)
    done = committed(admin, group, topic, marks) if marks else {}
    return {p: max(0, high - max(low, done.get(p, low))) for p, (low, high) in marks.items()}


def group_members(admin: AdminClient, group: str) -> list[dict[str, Any]]:
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=TIMEOUT)[group].result(TIMEOUT)
    except Exception:  # noqa: BLE001 - a group that does not exist yet has no members
        return []
    return [{"client_id": m.client_id, "host": m.host,
             "assignment": sorted(f"{tp.topic}[{tp.partition}]" for tp in m.assignment.topic_partitions)}
            for m in desc.members]


def clear(admin: AdminClient, topic: str, marks: dict[int, tuple[int, int]] | None = None) -> int:
    """Delete every record of `topic` below `marks` (partition -> (low, high) from `watermarks`;
    default: read now, so up to the current high watermark); return how many were deleted."""
    marks = watermarks(admin, topic) if marks is None else marks
    targets = [TopicPartition(topic, p, high) for p, (low, high) in marks.items() if high > low]
    if targets:
        settled(lambda: [f.result(TIMEOUT) for f in admin.delete_records(targets, request_timeout=TIMEOUT).values()])
    return sum(high - low for low, high in marks.values())
