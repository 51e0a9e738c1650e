"""Exactly-once queues: a job's Kafka-side effects and its source offset commit in ONE transaction.

Per worker process, one transactional producer whose `transactional.id` is
`{group_id}.{host}.{slot}`: stable for a host and process slot (a restarted worker fences its
zombie) and unique across hosts (two hosts' slot-0 workers never fence each other). Offsets go
through `send_offsets_to_transaction` with the consumer's group metadata (KIP-447), so a
zombie whose partitions moved is fenced by the group generation too.

No transaction is open while handlers run: a finished job's outputs (retry or dead-letter
copy, jobs it dispatched through `ctx.dispatch`) are buffered by source offset. Every
`interval` the loop commits the contiguous finished prefix of each exactly-once partition:
begin, produce the prefix's outputs, send the offsets, commit. Outputs of jobs beyond the prefix
wait for the next transaction, so a crash can never publish a job's outputs without its offset.

A failed commit aborts, and the partitions are rewound to their last committed offsets: their
jobs run again (their earlier outputs were never visible to read_committed consumers). A fenced
producer raises `Fenced`: the process stops and its supervisor starts a fresh one.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from protojobs.config import Settings
from protojobs.kafka.clients import ErrorWatch, producer_config

log = logging.getLogger(__name__)
TIMEOUT = 30.0


class Fenced(RuntimeError):
    """Another producer with our transactional.id (or a newer group generation) took over."""


@dataclass(frozen=True, slots=True)
class Output:
    """A record to publish with the transaction that commits its source offset."""

    source_offset: int
    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]


def transactional_id(settings: Settings, slot: int, role: str = "worker") -> str:
    """`{group_id}.{host}.{slot}` for workers, `{group_id}.{role}.{host}.{slot}` for others."""
    middle = "" if role == "worker" else f"{role}."
    return f"{settings.kafka.group_id}.{middle}{socket.gethostname()}.{slot}"


class Transactions:
    """Buffers outputs of exactly-once partitions and commits them with their offsets."""

    def __init__(self, settings: Settings, consumer: Consumer, slot: int, watch: ErrorWatch,
                 role: str = "worker", **producer_extra: Any) -> None:
        self.consumer = consumer
        conf = producer_config(settings.kafka, watch, **producer_extra)
        conf["transactional.id"] = transactional_id(settings, slot, role)
        self.producer = Producer(conf)
        self.producer.init_transactions(TIMEOUT)
        self.outputs: dict[tuple[str, int], list[Output]] = {}
        self.committed = 0
        self.aborted = 0

    def add(self, topic: str, partition: int, output: Output) -> None:
        self.outputs.setdefault((topic, partition), []).append(output)

    def drop(self, topic: str, partition: int) -> None:
        self.outputs.pop((topic, partition), None)

    def commit(self, points: list[tuple[str, int, int]], rewind: Callable[[list[tuple[str, int]]], None]) -> bool:
        """Publish the outputs below each commit point and commit the points, atomically.
        True when committed; False after an abort (the partitions were rewound)."""
        if not points:
            return True
        batch = []
        for topic, partition, point in points:
            pending = self.outputs.get((topic, partition), [])
            batch += [o for o in pending if o.source_offset < point]
            self.outputs[(topic, partition)] = [o for o in pending if o.source_offset >= point]
        try:
            self.producer.begin_transaction()
            for out in batch:
                self._produce(out)
            self.producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for t, p, o in points], self.consumer.consumer_group_metadata(), TIMEOUT)
            self.producer.commit_transaction(TIMEOUT)
        except KafkaException as exc:
            self._failed(exc, points, rewind)
            return False
        self.committed += 1
        return True

    def _produce(self, out: Output) -> None:
        while True:
            try:
                self.producer.produce(out.topic, out.value, out.key, headers=cast(Any, out.headers))
                return
            except BufferError:
                self.producer.poll(0.05)

    def _failed(self, exc: KafkaException, points: list[tuple[str, int, int]],
                rewind: Callable[[list[tuple[str, int]]], None]) -> None:
        err: KafkaError = exc.args[0]
        if err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                         KafkaError.INVALID_PRODUCER_EPOCH):
            raise Fenced(f"transactional producer fenced: {err.str()}") from exc
        log.warning("transaction failed, aborting and rewinding: %s", err.str())
        try:
            self.producer.abort_transaction(TIMEOUT)
        except KafkaException as abort_exc:
            if abort_exc.args[0].fatal():
                raise Fenced(f"abort failed: {abort_exc.args[0].str()}") from abort_exc
        self.aborted += 1
        keys = [(t, p) for t, p, _ in points]
        for key in keys:
            self.outputs.pop(key, None)
        rewind(keys)

    def close(self) -> None:
        self.producer.flush(5)


def rewind_to_committed(consumer: Consumer, keys: list[tuple[str, int]]) -> None:
    """Seek each partition back to the group's committed offset (the beginning if none)."""
    committed = consumer.committed([TopicPartition(t, p) for t, p in keys], timeout=TIMEOUT)
    for tp in committed:
        consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
