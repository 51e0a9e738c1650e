"""The checker: a pure function of a `History` and a healed `Drain` (no I/O, no clock).

In the spirit of Jepsen's Kafka queue checker. The drain is every queue, delay-tier and
dead-letter topic read from the beginning over the DIRECT listeners with read_committed, after
every fault was healed and the workers were stopped. Checks (README.md explains each):

- lost:      a job that must settle (acked, or indefinite but seen stored or run) neither ran to
             success nor is in the dead-letter topic (a poison job: is not dead-lettered);
- phantom:   an execution, a stored record or a dead-letter record of a job never dispatched,
             or whose dispatch failed definitely;
- duplicate: successful executions per job (a distribution); at_least_once may exceed 1;
             executions of a job's attempt beyond its first, and per worker SIGKILL, are
             reported (the cost of a crash: what was run but not committed runs again);
             exactly_once needs exactly one Kafka-side result per job (one record per job id
             and attempt in its queue topic, at most one dead-letter record);
- order:     in `ordering = "key"` queues with blocking retries, the first successful
             executions of a key's (not delayed, acknowledged) jobs follow dispatch order;
- early:     an execution before its available_at (the envelope's, and the dispatch's for the
             first attempt), or a retry that started before its previous attempt failed;
- dead-letter exactness: exactly the poison jobs are dead-lettered, with the right metadata
             (id, queue, key, error type, attempts = max_attempts, origin topic, reason, times);
             healthy jobs never; at_least_once tolerates a repeated dead-letter record of a
             poison job (reported), exactly_once does not;
- hostile:   every record a raw producer wrote (bad UTF-8, lone surrogate, oversize, deep
             nesting, wrong envelope version, malformed header, control-topic garbage) ended
             in exactly one state: dead-lettered with a reason, parked (the log line), run to
             success (a decodable job of a normal kind), or cleared (its queue was cleared
             after it was written);
- crash:     no worker exited on its own 3 times or more (a crash loop);
- clear and replay: a job of a cleared queue dispatched before the clear epoch may stay
             unrun (counted as cleared); every job `dlq replay` sent again runs again.
- recovery:  seconds from healing the last fault until the last job settled.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from chaos.history import ACKED, FAILED, INDEFINITE, Dispatch, Execution, History

CHECKS = ("lost", "phantom", "duplicate", "order", "early", "dead_letter", "drain", "hostile", "crash")
CRASH_LOOP = 3  # exits on its own by one worker slot in one example


@dataclass
class Record:
    """A job record found in a queue or delay-tier topic."""

    topic: str
    partition: int
    offset: int
    job_id: str | None
    attempt: int | None
    timestamp: int = 0  # ms


@dataclass
class DeadRecord:
    """A record of a dead-letter topic, decoded (`job_id` None: not a dead-letter record of a job)."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms
    job_id: str | None
    queue: str | None = None
    key: str | None = None
    error_type: str = ""
    attempts: int = 0
    reason: str = ""
    origin_topic: str = ""
    first_failed_at: int | None = None
    failed_at: int = 0
    problem: str | None = None
    origin_partition: int = -1
    origin_offset: int = -1


@dataclass
class Drain:
    queue_records: list[Record] = field(default_factory=list)
    tier_records: list[Record] = field(default_factory=list)
    dead: list[DeadRecord] = field(default_factory=list)
    complete: bool = True  # every topic was read up to its end offset
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Drain:
        return cls([Record(**r) for r in obj.get("queue_records", [])],
                   [Record(**r) for r in obj.get("tier_records", [])],
                   [DeadRecord(**r) for r in obj.get("dead", [])], obj.get("complete", True), obj.get("note", ""))


@dataclass
class Violation:
    check: str
    job_id: str | None
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.job_id or '-'}: {self.detail}"


@dataclass
class Result:
    mode: str
    jobs: int = 0
    acked: int = 0
    failed: int = 0
    indefinite: int = 0
    executions: int = 0
    dead_lettered: int = 0
    must_settle: int = 0
    lost: int = 0
    phantom: int = 0
    duplicates: dict[int, int] = field(default_factory=dict)  # successful runs per job -> jobs
    extra_executions: int = 0  # executions of a (job, attempt) beyond its first
    crashes: int = 0  # worker processes SIGKILLed (`worker:kill` faults)
    dead_letter_duplicates: int = 0
    order_violations: int = 0
    early: int = 0
    dead_letter_violations: int = 0
    exactly_once_violations: int = 0
    hostile: int = 0  # records written by the raw producer
    hostile_states: dict[str, int] = field(default_factory=dict)  # dead_lettered / parked / ran / cleared
    hostile_violations: int = 0
    cleared: int = 0  # jobs left unrun because their queue was cleared
    replayed: int = 0  # jobs `dlq replay` sent again
    worker_exits: int = 0  # exits the harness did not cause
    crash_loops: int = 0
    recovery_s: float | None = None
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def max_duplicates(self) -> int:
        return max(self.duplicates, default=0)

    @property
    def duplicates_per_crash(self) -> float | None:
        """Executions beyond the first per worker SIGKILL (None without one)."""
        return round(self.extra_executions / self.crashes, 2) if self.crashes else None

    def flagged(self, check: str) -> list[Violation]:
        return [v for v in self.violations if v.check == check]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["duplicates"] = {str(k): v for k, v in sorted(self.duplicates.items())}
        out["max_duplicates"] = self.max_duplicates
        out["duplicates_per_crash"] = self.duplicates_per_crash
        out["violations"] = [str(v) for v in self.violations]
        return out


def check(history: History, drain: Drain) -> Result:
    c = _Check(history, drain)
    c.phantoms()
    c.settlement()
    c.duplicates()
    c.order()
    c.early()
    c.dead_letters()
    c.hostile()
    c.crashes()
    if not drain.complete:
        c.flag("drain", None, f"the healed drain did not read every topic to its end: {drain.note}")
    return c.result


class _Check:
    def __init__(self, history: History, drain: Drain) -> None:
        self.h, self.d = history, drain
        self.by_id: dict[str, Dispatch] = {}
        for d in history.dispatches:
            self.by_id.setdefault(d.job_id, d)
        self.runs: dict[str, list[Execution]] = defaultdict(list)
        for e in sorted(history.executions, key=lambda e: (e.t, e.attempt)):
            self.runs[e.job_id].append(e)
        self.dead: dict[str | None, list[DeadRecord]] = defaultdict(list)
        for r in drain.dead:
            self.dead[r.job_id].append(r)
        self.stored = {r.job_id for r in drain.queue_records + drain.tier_records if r.job_id is not None}
        self.hostile_ids = {h.job_id for h in history.hostile if h.job_id}
        self.hostile_at = {(h.topic, h.partition, h.offset) for h in history.hostile}
        # clear_replay faults: queue -> clear epochs (ms); job id -> when dlq replay sent it again
        self.cleared_at: dict[str, list[int]] = defaultdict(list)
        self.replayed: dict[str, list[int]] = defaultdict(list)
        for f in history.faults:
            if f.kind == "clear_replay":
                self.cleared_at[f.detail["queue"]].append(int(f.detail["cleared_at"]))
                for job_id in f.detail.get("replayed", []):
                    self.replayed[job_id].append(int(f.detail["replayed_at"]))
        counts = Counter(d.outcome for d in history.dispatches)
        self.result = Result(mode=history.mode, jobs=len(history.dispatches), acked=counts[ACKED],
                             failed=counts[FAILED], indefinite=counts[INDEFINITE],
                             executions=len(history.executions), dead_lettered=len(drain.dead))

    def flag(self, check: str, job_id: str | None, detail: str) -> None:
        self.result.violations.append(Violation(check, job_id, detail))
        attr = {"lost": "lost", "phantom": "phantom", "order": "order_violations", "early": "early",
                "dead_letter": "dead_letter_violations", "exactly_once": "exactly_once_violations",
                "hostile": "hostile_violations", "crash": "crash_loops"}.get(check)
        if attr:
            setattr(self.result, attr, getattr(self.result, attr) + 1)

    def seen(self, job_id: str) -> bool:
        return job_id in self.runs or job_id in self.stored or job_id in self.dead

    def must_settle(self) -> list[Dispatch]:
        return [d for d in self.by_id.values()
                if d.outcome == ACKED or (d.outcome == INDEFINITE and self.seen(d.job_id))]

    def may_be_cleared(self, d: Dispatch) -> bool:
        """Dispatched to a queue before it was cleared (the clear drops it, unrun)."""
        return any((d.dispatched_at or d.sent_at) < at for at in self.cleared_at.get(d.queue, []))

    def allowed(self, job_id: str) -> int:
        """How many Kafka-side results a job may have: one, plus one per dlq replay of it."""
        return 1 + len(self.replayed.get(job_id, []))

    # --- checks ---------------------------------------------------------------------------

    def judge(self, job_id: str | None, what: str) -> None:
        d = self.by_id.get(job_id) if job_id is not None else None
        if d is None:
            self.flag("phantom", job_id, f"{what}, but it was never dispatched")
        elif d.outcome == FAILED:
            self.flag("phantom", job_id, f"{what}, but its dispatch failed definitely ({d.error})")

    def phantoms(self) -> None:
        judge = self.judge
        for job_id, runs in self.runs.items():
            if job_id not in self.hostile_ids:
                judge(job_id, f"executed {len(runs)} time(s)")
        seen_stored = set(self.hostile_ids)
        for r in self.d.queue_records + self.d.tier_records:
            if r.job_id is None and (r.topic, r.partition, r.offset) in self.hostile_at:
                continue  # written by the raw producer on purpose
            if r.job_id is None:
                self.flag("phantom", None, f"{r.topic}[{r.partition}]@{r.offset} is not a job envelope")
            elif r.job_id not in seen_stored and r.job_id not in self.runs:
                seen_stored.add(r.job_id)
                judge(r.job_id, f"stored in {r.topic}")
        for job_id in self.dead:
            if job_id is not None and job_id not in self.runs and job_id not in self.hostile_ids:
                judge(job_id, "dead-lettered")
        for r in self.dead.get(None, []):
            if (r.origin_topic, r.origin_partition, r.origin_offset) not in self.hostile_at:
                self.flag("phantom", None, f"{r.topic}@{r.offset} is not a dead-lettered job: {r.problem}")

    def settlement(self) -> None:
        settle_times = []
        must = self.must_settle()
        self.result.must_settle = len(must)
        for d in must:
            for at in self.replayed.get(d.job_id, []):
                if not any(e.attempt == 1 and e.t * 1000 >= at - 5 for e in self.runs.get(d.job_id, [])):
                    self.flag("lost", d.job_id, "sent again by dlq replay but never ran again")
            if d.kind == "poison":
                records = self.dead.get(d.job_id)
                if not records and self.may_be_cleared(d):
                    self.result.cleared += 1
                    continue
                if not records:
                    self.flag("lost", d.job_id, f"{d.outcome} poison job was never dead-lettered "
                              f"({len(self.runs.get(d.job_id, []))} execution(s))")
                    continue
                settle_times.append(min(r.timestamp for r in records) / 1000)
                continue
            ok = [e for e in self.runs.get(d.job_id, []) if e.ok]
            if ok:
                settle_times.append(min(e.end or e.t for e in ok))
            elif d.job_id in self.dead:
                settle_times.append(min(r.timestamp for r in self.dead[d.job_id]) / 1000)
            elif self.may_be_cleared(d):
                self.result.cleared += 1
            else:
                runs = self.runs.get(d.job_id, [])
                self.flag("lost", d.job_id, f"{d.outcome} {d.kind} job in {d.queue} never succeeded and is not "
                          f"dead-lettered ({len(runs)} failed execution(s), attempts {[e.attempt for e in runs]})")
        if settle_times and self.h.healed_at is not None:
            self.result.recovery_s = round(max(0.0, max(settle_times) - self.h.healed_at), 3)
        elif settle_times:
            self.result.recovery_s = 0.0

    def duplicates(self) -> None:
        dist: Counter[int] = Counter()
        for d in self.must_settle():
            if d.kind != "poison":
                dist[sum(1 for e in self.runs.get(d.job_id, []) if e.ok)] += 1
        self.result.duplicates = dict(dist)
        per_attempt = Counter((e.job_id, e.attempt) for e in self.h.executions)
        self.result.extra_executions = sum(n - 1 for n in per_attempt.values())
        self.result.crashes = sum(1 for f in self.h.faults if f.kind == "worker:kill")
        if self.h.mode != "exactly_once":
            return
        per_record: Counter[tuple[str, str, int | None]] = Counter(
            (r.topic, r.job_id, r.attempt) for r in self.d.queue_records if r.job_id)
        for (topic, job_id, attempt), n in per_record.items():
            if n > self.allowed(job_id) and job_id not in self.hostile_ids:
                self.flag("exactly_once", job_id, f"attempt {attempt} is stored {n} times in {topic} "
                          "(exactly_once: one Kafka-side result per job)")

    def order(self) -> None:
        for q in self.h.queues.values():
            if q.ordering != "key" or not q.blocking_retries:
                continue
            by_key: dict[str | None, list[Dispatch]] = defaultdict(list)
            for d in self.by_id.values():
                if d.queue == q.name and d.outcome == ACKED and not d.delayed and d.kind != "poison":
                    by_key[d.key].append(d)
            for key, jobs in by_key.items():
                latest: tuple[float, Dispatch] | None = None
                for d in sorted(jobs, key=lambda d: d.seq):
                    ok = [e.t for e in self.runs.get(d.job_id, []) if e.ok]
                    if not ok:
                        continue  # lost: flagged by settlement
                    first = min(ok)
                    if latest is not None and first < latest[0]:
                        self.flag("order", d.job_id, f"key {key!r}: dispatched #{d.seq} after #{latest[1].seq} "
                                  f"({latest[1].job_id}) but first succeeded {latest[0] - first:.3f}s before it")
                    elif latest is None or first > latest[0]:
                        latest = (first, d)

    def early(self) -> None:
        for job_id, runs in self.runs.items():
            d = self.by_id.get(job_id)
            failed: dict[int, float] = {}  # attempt -> when its first execution failed
            for e in runs:
                if not e.ok:
                    failed[e.attempt] = min(failed.get(e.attempt, e.end or e.t), e.end or e.t)
            for e in runs:
                if e.t < e.due:
                    self.flag("early", job_id, f"attempt {e.attempt} started {e.due - e.t:.3f}s before its due time")
                elif e.attempt == 1 and d is not None and e.t * 1000 < d.available_at:
                    self.flag("early", job_id, f"attempt 1 started {d.available_at / 1000 - e.t:.3f}s before the "
                              "dispatched available_at")
                if e.attempt > 1:
                    before = failed.get(e.attempt - 1)
                    if before is None or e.t < before:
                        self.flag("early", job_id, f"attempt {e.attempt} started before attempt {e.attempt - 1} failed")

    def dead_letters(self) -> None:
        for job_id, records in self.dead.items():
            d = self.by_id.get(job_id) if job_id is not None else None
            if d is None or d.outcome == FAILED or job_id in self.hostile_ids:
                continue  # phantom, flagged already; or hostile, judged by hostile()
            if d.kind != "poison":
                self.flag("dead_letter", job_id, f"healthy {d.kind} job dead-lettered {len(records)} time(s): "
                          f"{records[0].error_type}: {records[0].reason}")
                continue
            if len(records) > self.allowed(d.job_id):
                self.result.dead_letter_duplicates += len(records) - self.allowed(d.job_id)
                if self.h.mode == "exactly_once":
                    self.flag("exactly_once", job_id, f"dead-lettered {len(records)} times")
            for r in records:
                for problem in self._metadata(d, r):
                    self.flag("dead_letter", job_id, f"{r.topic}@{r.offset}: {problem}")

    def _metadata(self, d: Dispatch, r: DeadRecord) -> list[str]:
        q = self.h.queues.get(d.queue)
        problems = []
        if r.queue != d.queue:
            problems.append(f"queue {r.queue!r}, dispatched to {d.queue!r}")
        if r.key != d.key:
            problems.append(f"key {r.key!r}, dispatched with {d.key!r}")
        if r.error_type != "ValueError":
            problems.append(f"error type {r.error_type!r}, the handler raised ValueError")
        if r.attempts != self.h.max_attempts:
            problems.append(f"attempts {r.attempts}, the policy allows {self.h.max_attempts}")
        if q is not None and r.origin_topic != q.topic:
            problems.append(f"origin topic {r.origin_topic!r}, the queue's is {q.topic!r}")
        if q is not None and q.dead_letter_topic and r.topic != q.dead_letter_topic:
            problems.append(f"in {r.topic}, the queue's dead-letter topic is {q.dead_letter_topic}")
        if not r.reason:
            problems.append("no reason")
        if r.first_failed_at is None or r.first_failed_at > r.failed_at:
            problems.append(f"first_failed_at {r.first_failed_at} after failed_at {r.failed_at}")
        return problems

    def hostile(self) -> None:
        """Each raw record ended in exactly one state (a control record: parked, i.e. skipped)."""
        self.result.hostile = len(self.h.hostile)
        self.result.replayed = len(self.replayed)
        at_job = {(r.topic, r.partition, r.offset): r.job_id for r in self.d.queue_records + self.d.tier_records}
        parked = set(self.h.parked)
        parked_jobs = {at_job.get(p) for p in parked} - {None}
        states: Counter[str] = Counter()
        for h in self.h.hostile:
            where = (h.topic, h.partition, h.offset)
            dead = [r for r in self.d.dead if (r.origin_topic, r.origin_partition, r.origin_offset) == where
                    or (h.job_id is not None and r.job_id == h.job_id)]
            ended = {"dead_lettered": bool(dead), "parked": where in parked or h.job_id in parked_jobs,
                     "ran": h.may_run and any(e.ok for e in self.runs.get(h.job_id or "", []))}
            found = [state for state, yes in ended.items() if yes]
            what = f"{h.shape} record {h.topic}[{h.partition}]@{h.offset}"
            if not found and h.queue is not None and any(h.at < at for at in self.cleared_at.get(h.queue, [])):
                found = ["cleared"]
            states.update(found)
            if not found:
                self.flag("hostile", h.job_id, f"{what} never ended: not dead-lettered, not parked, not run")
            elif len(found) > 1 and "parked" in found and h.shape != "control":
                self.flag("hostile", h.job_id, f"{what} ended in {len(found)} states: {', '.join(found)}")
            elif "ran" in found and "dead_lettered" in found:
                self.flag("hostile", h.job_id, f"{what} ran to success and was dead-lettered")
            for r in dead:
                if not r.reason:
                    self.flag("hostile", h.job_id, f"{what}: dead-letter record {r.topic}@{r.offset} has no reason")
            if self.h.mode == "exactly_once" and len(dead) > 1:
                self.flag("exactly_once", h.job_id, f"{what} dead-lettered {len(dead)} times")
        self.result.hostile_states = dict(states)

    def crashes(self) -> None:
        self.result.worker_exits = len(self.h.worker_exits)
        per_slot = Counter(e.slot for e in self.h.worker_exits)
        for slot, n in per_slot.items():
            if n >= CRASH_LOOP:
                codes = [e.code for e in self.h.worker_exits if e.slot == slot]
                self.flag("crash", None, f"worker {slot} exited on its own {n} times (codes {codes}): a crash loop")
