"""The history of one chaos example: what was dispatched, what ran, which faults were injected.

- `Dispatch`: one job as the test's producer sent it (job id, queue, key, available_at, kind,
  dispatch sequence number) and its outcome: "acked" (the broker acknowledged it), "failed"
  (a definite DispatchError: not stored) or "indefinite" (DeliveryUncertain: maybe stored).
- `Execution`: one handler run, read back from the record files the workers' handler
  (`chaos.jobs:run`) appends to: job id, attempt, worker pid, start time, due time, ok.
- `FaultEvent`: one injected fault with its start and end (epoch seconds); `healed_at` is when
  the last one ended. A `clear_replay` fault's detail holds the clear epoch (`cleared_at`, ms),
  the queue, and the job ids `dlq replay` sent again (`replayed`, with `replayed_at`).
- `Hostile`: one record a raw producer wrote straight onto a queue, delay-tier or control topic
  (bad UTF-8, a lone surrogate, oversize, deep nesting, a wrong envelope version, a malformed
  header, garbage on the control topic): its shape, where it landed, its job id if it has one.
- `parked`: (topic, partition, offset) of every "parked" / "control record skipped" line the
  workers logged; `worker_exits`: every worker exit the harness did not cause (a crash).

`Recorder` collects dispatches from the dispatch thread (thread-safe) and turns it all into a
`History`, which is plain data (JSON round-trip) so the checker stays pure and testable.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ACKED, FAILED, INDEFINITE = "acked", "failed", "indefinite"
KINDS = ("normal", "flaky", "poison", "hang")


@dataclass
class Dispatch:
    job_id: str
    queue: str
    key: str | None
    available_at: int  # epoch ms
    kind: str  # normal | flaky | poison
    outcome: str  # acked | failed | indefinite
    seq: int  # dispatch order (one dispatch thread per example)
    fail: int = 0  # flaky: attempts that fail
    delayed: bool = False
    sent_at: int = 0  # epoch ms
    error: str | None = None
    dispatched_at: int = 0  # the envelope's, epoch ms


@dataclass
class Execution:
    job_id: str
    attempt: int
    pid: int
    t: float  # start, epoch s
    due: float  # the envelope's available_at, epoch s
    ok: bool
    key: str | None = None
    queue: str | None = None
    end: float | None = None


@dataclass
class FaultEvent:
    kind: str
    target: str
    start: float
    end: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Hostile:
    """A record written by a raw producer that protojobs would never write."""

    shape: str  # bad_utf8 | lone_surrogate | oversize | deep | bad_version | bad_header | control
    topic: str
    partition: int
    offset: int
    at: int  # epoch ms, when it was produced
    job_id: str | None = None  # when its envelope carries one
    may_run: bool = False  # a decodable job of a normal kind: running to success settles it
    queue: str | None = None  # the queue it belongs to (a queue or tier record)


@dataclass
class WorkerExit:
    slot: int
    code: int | None
    at: float  # epoch s, when the harness noticed it


@dataclass
class QueueInfo:
    """What the checker needs to know of a queue's settings."""

    name: str
    topic: str
    ordering: str = "none"
    blocking_retries: bool = False
    dead_letter_topic: str = ""


@dataclass
class History:
    mode: str  # at_least_once | exactly_once
    max_attempts: int
    queues: dict[str, QueueInfo]
    dispatches: list[Dispatch] = field(default_factory=list)
    executions: list[Execution] = field(default_factory=list)
    faults: list[FaultEvent] = field(default_factory=list)
    healed_at: float | None = None  # when the last fault was healed (epoch s)
    hostile: list[Hostile] = field(default_factory=list)
    parked: list[tuple[str, int, int]] = field(default_factory=list)
    worker_exits: list[WorkerExit] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> History:
        return cls(mode=obj["mode"], max_attempts=obj["max_attempts"],
                   queues={k: QueueInfo(**v) for k, v in obj["queues"].items()},
                   dispatches=[Dispatch(**d) for d in obj.get("dispatches", [])],
                   executions=[Execution(**e) for e in obj.get("executions", [])],
                   faults=[FaultEvent(**f) for f in obj.get("faults", [])],
                   healed_at=obj.get("healed_at"),
                   hostile=[Hostile(**h) for h in obj.get("hostile", [])],
                   parked=[(str(t), int(p), int(o)) for t, p, o in obj.get("parked", [])],
                   worker_exits=[WorkerExit(**w) for w in obj.get("worker_exits", [])])


def read_executions(paths: list[Path]) -> list[Execution]:
    """Every execution line of the record files (a torn last line of a killed worker is skipped)."""
    out = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            out.append(Execution(job_id=row["id"], attempt=row["attempt"], pid=row["pid"], t=row["t"],
                                 due=row["due"], ok=row["ok"], key=row.get("key"), queue=row.get("queue"),
                                 end=row.get("end")))
    return out


# what a worker or its delay router logs when it parks a record, or skips a control record
PARKED = re.compile(r"(?:record|control record) ([\w.-]+)\[(\d+)\]@(-?\d+) (?:parked|skipped)")


def read_parked(paths: list[Path]) -> list[tuple[str, int, int]]:
    """(topic, partition, offset) of every parked or skipped record the worker logs name."""
    out = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        out += [(m[1], int(m[2]), int(m[3])) for m in PARKED.finditer(text)]
    return out


class Recorder:
    """Thread-safe collector of one example's dispatches and faults."""

    def __init__(self, mode: str, max_attempts: int, queues: dict[str, QueueInfo], record_files: list[Path]) -> None:
        self.mode = mode
        self.max_attempts = max_attempts
        self.queues = queues
        self.record_files = record_files
        self.dispatches: list[Dispatch] = []
        self.faults: list[FaultEvent] = []
        self.hostile: list[Hostile] = []
        self.worker_exits: list[WorkerExit] = []
        self.parked_reader: Callable[[], list[tuple[str, int, int]]] = list
        self._lock = threading.Lock()
        self._seq = 0

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def dispatched(self, d: Dispatch) -> None:
        with self._lock:
            self.dispatches.append(d)

    def fault(self, event: FaultEvent) -> FaultEvent:
        with self._lock:
            self.faults.append(event)
        return event

    def wrote_hostile(self, h: Hostile) -> None:
        with self._lock:
            self.hostile.append(h)

    def worker_exited(self, e: WorkerExit) -> None:
        with self._lock:
            self.worker_exits.append(e)

    def healed_at(self) -> float | None:
        ends = [f.end for f in self.faults if f.end is not None and not f.kind.startswith("handler:")]
        return max(ends) if ends else None

    def history(self) -> History:
        with self._lock:
            dispatches = sorted(self.dispatches, key=lambda d: d.seq)
            faults = list(self.faults)
            hostile, exits = list(self.hostile), list(self.worker_exits)
        return History(mode=self.mode, max_attempts=self.max_attempts, queues=self.queues,
                       dispatches=dispatches, executions=read_executions(self.record_files),
                       faults=faults, healed_at=self.healed_at(), hostile=hostile,
                       parked=self.parked_reader(), worker_exits=exits)
