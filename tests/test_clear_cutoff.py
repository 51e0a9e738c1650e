"""One clear, one meaning (ops.clear): `protojobs clear` and `Jobs.clear` record the clear epoch T;
jobs dispatched before T are deleted or dropped, a job dispatched after T survives and runs."""

from __future__ import annotations

from typing import Any

import engine_jobs
import pytest
from conftest import wait_for
from test_engine import read_all

from protojobs import Jobs
from protojobs.engine.dispatch import Dispatcher
from protojobs.kafka import admin
from protojobs.kafka.clients import ErrorWatch
from protojobs.kafka.control import ClearEpochs
from protojobs.model import envelope
from protojobs.model import names as topics
from protojobs.ops import clear as clearing

pytestmark = pytest.mark.broker


@pytest.fixture(autouse=True)
def _no_runs_yet() -> None:
    engine_jobs.RUNS.clear()


def epochs_of(settings: Any) -> dict[str, int]:
    reader = ClearEpochs(settings, ErrorWatch())
    try:
        reader.catch_up()
        return dict(reader.epochs)
    finally:
        reader.close()


def test_jobs_clear_records_the_clear_epoch_like_the_cli(make_settings) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record"}, "other": {"handler": "engine_jobs:record"}})
    assert Dispatcher(settings).dispatch_many("work", [{"n": i} for i in range(3)]).ok
    jobs = Jobs(settings)
    assert jobs.clear("work") == 3
    epochs = epochs_of(settings)
    assert set(epochs) == {"work"}  # jobs of `work` still in delay tiers or retries are dropped too


def test_clear_keeps_a_job_dispatched_after_its_cut_off(make_settings, start_worker,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record"}})
    dispatcher = Dispatcher(settings)
    assert dispatcher.dispatch_many("work", [{"n": i} for i in range(5)]).ok
    late: list[str] = []
    record = clearing.record_clear

    def record_then_dispatch(*args: Any) -> None:
        record(*args)  # the clear epoch T is recorded...
        late.append(dispatcher.dispatch("work", {"n": 99}))  # ...and a job is dispatched right after it

    monkeypatch.setattr(clearing, "record_clear", record_then_dispatch)
    done = clearing.clear(settings, "work")
    assert done.records == 5 and len(late) == 1
    topic = topics.queue_topic(settings.kafka.topic_prefix, "work")
    assert sum(high - low for low, high in admin.watermarks(admin.client(settings), topic).values()) == 1
    left = [envelope.decode(v) for v in read_all(settings.kafka.brokers, topic, 1)]
    assert [(e.id, e.data) for e in left] == [(late[0], {"n": 99})]  # deleted: only what came before T
    worker = start_worker(settings)
    wait_for(lambda: any(r["id"] == late[0] for r in engine_jobs.RUNS), what="the late job ran")
    worker.stop()
    assert [r["n"] for r in engine_jobs.RUNS] == [99]  # and not dropped as cleared
