"""Lane staffing without a broker: cheap jobs run on one thread, jobs that wait run side by side,
and one slow job in a cheap lane holds the others back for one loop pass at most."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from conftest import settings_tree, wait_for

from protojobs import config
from protojobs.engine.attempt import Attempt, Handler, JobRun
from protojobs.engine.hooks import HookSet
from protojobs.engine.lanes import Lane
from protojobs.model import envelope

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "lanes.work"


class Recorder:
    """A handler that notes which thread ran each job, and how many ran at once."""

    def __init__(self, sleep: float = 0.0, hold: threading.Event | None = None) -> None:
        self.sleep = sleep
        self.hold = hold  # jobs with {"slow": true} wait for it
        self.lock = threading.Lock()
        self.threads: list[str] = []
        self.running = self.most = 0

    def __call__(self, data: dict[str, Any]) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        if data.get("slow") and self.hold is not None:
            self.hold.wait(30)
        elif self.sleep:
            time.sleep(self.sleep)
        with self.lock:
            self.running -= 1
            self.threads.append(threading.current_thread().name)


def lane(handler: Recorder, concurrency: int = 4) -> tuple[Lane, SimpleQueue[Any]]:
    tree = settings_tree("127.0.0.1:9", "lanes.", {"work": {"handler": "engine_jobs:record",
                                                            "concurrency": concurrency}})
    settings = config.from_dict(tree, ROOT)
    queue = settings.queues["work"]
    attempt = Attempt(settings, {TOPIC: queue}, HookSet(), lambda: None,  # type: ignore[arg-type,return-value]
                      lambda: None, lambda _topic: False, 1_000_000)  # type: ignore[arg-type,return-value]
    done: SimpleQueue[Any] = SimpleQueue()
    return Lane(queue, {"*": Handler(handler)}, done, lambda _job: True, attempt), done


def jobs(first: int, n: int, **data: Any) -> list[JobRun]:
    return [JobRun(TOPIC, 0, offset, envelope.new_envelope("work", "record", {"n": offset, **data}, now_ms=1), 1, None)
            for offset in range(first, first + n)]


def finished(lane: Lane, done: SimpleQueue[Any], results: list[Any]) -> int:
    """Collect what the lane finished (as the consume loop does); how many so far."""
    results.extend(lane.collect())
    while not done.empty():
        item = done.get()
        results.extend(item if isinstance(item, list) else [item])
    return len(results)


def test_cheap_jobs_end_up_on_one_thread() -> None:
    handler = Recorder()
    work, done = lane(handler, concurrency=4)
    results: list[Any] = []
    work.submit_many(jobs(0, 20_000))
    wait_for(lambda: finished(work, done, results) == 20_000, what="20,000 jobs")
    work.close()
    assert work.cheap
    assert len(set(handler.threads[10_000:])) == 1  # the second half: one thread, no hand-offs
    assert all(r.error is None for r in results)


def test_jobs_that_wait_run_side_by_side_up_to_the_concurrency() -> None:
    handler = Recorder(sleep=0.05)
    work, done = lane(handler, concurrency=4)
    results: list[Any] = []
    work.submit_many(jobs(0, 40))
    wait_for(lambda: finished(work, done, results) == 40, what="40 jobs")
    work.close()
    assert not work.cheap
    assert handler.most == 4  # never more than the concurrency, and all of it used


def test_one_slow_job_holds_a_cheap_lane_back_for_one_loop_pass_at_most() -> None:
    hold = threading.Event()
    handler = Recorder(hold=hold)
    work, done = lane(handler, concurrency=4)
    results: list[Any] = []
    work.submit_many(jobs(0, 2_000))
    wait_for(lambda: finished(work, done, results) == 2_000 and work.cheap, what="a cheap lane")
    work.submit_many(jobs(2_000, 1, slow=True) + jobs(2_001, 500))

    def passes() -> bool:  # the consume loop calls `staff` on every pass
        work.staff(time.monotonic())
        return finished(work, done, results) == 2_500

    try:
        wait_for(passes, what="the cheap jobs behind the slow one")
        assert handler.running == 1  # the slow one still runs: the others went past it
    finally:
        hold.set()
    wait_for(lambda: finished(work, done, results) == 2_501, what="the slow job")
    work.close()


def test_an_attempt_that_returns_after_its_deadline_failed_even_if_the_loop_never_expired_it() -> None:
    # The loop declares overdue jobs timed out on each pass; a pass that waits on the broker (an
    # exactly-once transaction's commit) can come after the handler already returned, late.
    tree = settings_tree("127.0.0.1:9", "lanes.", {"work": {"handler": "engine_jobs:record", "timeout": "1s"}})
    settings = config.from_dict(tree, ROOT)
    attempt = Attempt(settings, {TOPIC: settings.queues["work"]}, HookSet(), lambda: None,  # type: ignore[arg-type,return-value]
                      lambda: None, lambda _topic: False, 1_000_000)  # type: ignore[arg-type,return-value]

    class Timer:
        waits_in_place = False

        def hold(self, _job: JobRun) -> bool:
            return True  # the loop never noticed: the job is still running

        def rearm(self, _job: JobRun) -> None:
            raise AssertionError("no blocking retries here")

    late, on_time = jobs(0, 2)
    late.deadline = time.monotonic() + 0.05
    on_time.deadline = time.monotonic() + 30
    handler = Handler(lambda data: time.sleep(0.1))
    result = attempt.run(late, handler, Timer())
    assert isinstance(result.error, TimeoutError) and result.move is not None  # its retry or dead-letter copy
    assert attempt.run(on_time, handler, Timer()).error is None
