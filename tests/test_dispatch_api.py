"""One delay vocabulary (model.durations, no broker) and async / future dispatch (real broker)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import KafkaError, KafkaException
from conftest import ROOT, settings_tree, write_config
from test_engine import read_all

from protojobs import Jobs, config
from protojobs.engine.dispatch import Batch, Dispatcher, DispatchError, build
from protojobs.model import envelope
from protojobs.model.durations import delay_ms, due_ms, epoch_ms

NOW = 1_700_000_000_000


@pytest.mark.parametrize(("given", "ms"), [
    ("5m", 300_000), ("1h30m", 5_400_000), ("250ms", 250), ("1m30s", 90_000), ("2d", 172_800_000),
    (5, 5000), (0.25, 250), (timedelta(minutes=1, seconds=2), 62_000), (None, 0), ("1.5s", 1500),
])  # fmt: skip
def test_every_spelling_of_a_delay(given: object, ms: int) -> None:
    assert delay_ms(given) == ms  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["5", "m5", "1h 30x", "5m5m", "", "-1s", -1, True, [1], float("nan")])
def test_what_is_not_a_delay_is_refused(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        delay_ms(bad)  # type: ignore[arg-type]


def test_at_takes_aware_datetimes_only() -> None:
    at = datetime(2026, 1, 1, 9, tzinfo=UTC)
    assert epoch_ms(at) == int(at.timestamp() * 1000)
    assert due_ms(NOW, at=at) == epoch_ms(at)
    assert due_ms(NOW, delay="1s") == NOW + 1000
    with pytest.raises(ValueError, match="naive"):
        epoch_ms(datetime(2026, 1, 1, 9))  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="not both"):
        due_ms(NOW, delay=1, at=at)


def _settings(tiers: list[str] | None = None) -> config.Settings:
    tree = settings_tree("127.0.0.1:1", "t-", {"work": {"handler": "engine_jobs:record"}})
    tree["delays"] = {"tiers": tiers or ["1s", "5s"]}
    return config.from_dict(tree, ROOT)


def test_dispatcher_build_speaks_the_vocabulary_and_deprecates_delay_ms() -> None:
    settings = _settings()
    assert build(settings, "work", {}, delay="1h30m", now=NOW).available_at == NOW + 5_400_000
    assert build(settings, "work", {}, delay=timedelta(seconds=2), now=NOW).available_at == NOW + 2000
    at = datetime.fromtimestamp((NOW + 7000) / 1000, UTC)
    assert build(settings, "work", {}, at=at, now=NOW).available_at == NOW + 7000
    with pytest.raises(ValueError, match="naive"):
        build(settings, "work", {}, at=datetime(2030, 1, 1), now=NOW)  # noqa: DTZ001
    with pytest.warns(DeprecationWarning, match="delay_ms"):
        assert build(settings, "work", {}, delay_ms=1500, now=NOW).available_at == NOW + 1500
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(settings, "work", {}, delay=3, now=NOW)


@pytest.mark.broker
def test_await_and_futures_share_the_producer(kafka, fresh_prefix) -> None:
    tree = settings_tree(kafka.bootstrap, fresh_prefix, {"work": {"handler": "engine_jobs:record"}})
    settings = config.from_dict(tree, ROOT)
    dispatcher = Dispatcher(settings)

    async def main() -> tuple[list[str], list[str], int]:
        ticks = 0

        async def ticker() -> None:  # proves the loop keeps running while acks are awaited
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        tick = asyncio.create_task(ticker())
        single = await asyncio.gather(*(dispatcher.dispatch_async("work", {"n": i}) for i in range(20)))
        many = await dispatcher.dispatch_many_async("work", [{"n": 100 + i} for i in range(50)])
        tick.cancel()
        assert many.ok
        return list(single), many.ids, ticks

    jobs = Jobs(settings)

    async def facade() -> list[str]:
        one = await jobs.dispatch_async("record", {"n": 1000}, queue="work")
        bulk = await jobs.dispatch_many_async("record", [{"n": 1001}, {"n": 1002}], queue="work")
        return [one, *bulk.ids]

    try:
        single, many, ticks = asyncio.run(main())
        future = dispatcher.submit("work", {"n": 999})
        last = future.result(timeout=60)
        via_jobs = asyncio.run(facade())
    finally:
        assert dispatcher.close() == 0
        jobs.reset()
    assert ticks > 0
    assert len(single) == 20 and len(many) == 50 and len(via_jobs) == 3
    stored = [envelope.decode(value).id for value in read_all(kafka.bootstrap, f"{fresh_prefix}work", 74)]
    assert sorted(stored) == sorted([*single, *many, last, *via_jobs])


@pytest.mark.broker
def test_cli_dispatch_speaks_the_vocabulary(kafka, fresh_prefix, tmp_path) -> None:
    tree = settings_tree(kafka.bootstrap, fresh_prefix, {"work": {"handler": "protojobs.demo:send_email"}})
    tree["delays"] = {"tiers": ["1s", "1h"]}
    path = write_config(tmp_path / "jobs.toml", tree)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "protojobs.cli", "dispatch", "--config", str(path), *args],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)

    done = cli("work", '{"n": 1}', "--delay", "1h30m")
    assert done.returncode == 0, done.stderr
    assert cli("work", '{"n": 2}', "--delay", "soon").returncode == 2  # a usage error, nothing sent
    held = [envelope.decode(v) for v in read_all(kafka.bootstrap, f"{fresh_prefix}delay-1h", 1)]
    assert [e.id for e in held] == [done.stdout.strip()]
    assert held[0].available_at - held[0].dispatched_at == 5_400_000


@pytest.mark.broker
def test_a_job_refused_before_it_is_queued_raises_at_once(kafka, fresh_prefix) -> None:
    tree = settings_tree(kafka.bootstrap, fresh_prefix, {"work": {"handler": "engine_jobs:record"}})
    tree["kafka"]["producer"] = {**tree["kafka"]["producer"], "message.max.bytes": 2000}
    dispatcher = Dispatcher(config.from_dict(tree, ROOT))
    try:
        with pytest.raises(KafkaException):
            dispatcher.submit("work", {"blob": "x" * 5000})
        assert dispatcher.submit("work", {"n": 1}).result(timeout=60)  # the next one goes through
    finally:
        assert dispatcher.close() == 0
    assert dispatcher._unreported == 0 and not dispatcher._awaited and not dispatcher._batches


@pytest.mark.broker
def test_dispatch_many_reports_a_refused_record_by_index_and_sends_the_rest(kafka, fresh_prefix) -> None:
    tree = settings_tree(kafka.bootstrap, fresh_prefix, {"work": {"handler": "engine_jobs:record"}})
    tree["kafka"]["producer"] = {**tree["kafka"]["producer"], "message.max.bytes": 2000}
    dispatcher = Dispatcher(config.from_dict(tree, ROOT))
    items = [{"n": 0}, {"n": 1}, {"blob": "x" * 5000}, {"n": 3}]
    try:
        bulk = dispatcher.dispatch_many("work", items)
        awaited = asyncio.run(dispatcher.dispatch_many_async("work", items))
    finally:
        assert dispatcher.close() == 0
    for result in (bulk, awaited):
        assert list(result.errors) == [2] and "refused" in str(result.errors[2])
        assert len(result.ids) == 3
    assert dispatcher._unreported == 0 and not dispatcher._awaited and not dispatcher._batches
    stored = [envelope.decode(v) for v in read_all(kafka.bootstrap, f"{fresh_prefix}work", 6)]
    assert sorted(e.id for e in stored) == sorted([*bulk.ids, *awaited.ids])


def test_a_batch_matches_each_refused_delivery_to_its_input_index() -> None:
    batch = Batch()
    envs = [envelope.new_envelope("work", "record", {"n": n}, now_ms=NOW) for n in range(4)]
    for index, env in zip((0, 2, 3, 5), envs, strict=True):  # inputs 1 and 4 were invalid
        batch.ids.append(env.id)
        batch.indexes.append(index)
        batch.sent += 1
    batch.errors[1] = DispatchError("invalid")

    class Refused:
        def __init__(self, env: envelope.Envelope) -> None:
            self.env = env

        def value(self) -> bytes:
            return envelope.encode(self.env)

    error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    batch.delivered(None)
    batch.delivered(error, Refused(envs[3]))
    batch.delivered(None)
    assert not batch.outcome.done
    batch.seal()
    assert not batch.outcome.done  # one report still to come
    batch.delivered(error, Refused(envs[1]))
    assert batch.outcome.done
    result = batch.result()
    assert result.ids == [envs[0].id, envs[2].id]
    assert sorted(result.errors) == [1, 2, 5]


def test_a_refusal_that_cannot_be_matched_to_its_job_fails_every_job_it_may_be() -> None:
    batch = Batch()
    envs = [envelope.new_envelope("work", "record", {"n": n}, now_ms=NOW) for n in range(3)]
    for index, env in enumerate(envs):
        batch.ids.append(env.id)
        batch.indexes.append(index)
        batch.sent += 1

    class Unreadable:
        def value(self) -> bytes:
            return b"not an envelope"

    batch.delivered(None)
    batch.delivered(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), Unreadable())
    batch.delivered(None)
    batch.seal()
    result = batch.result()
    assert result.ids == [] and sorted(result.errors) == [0, 1, 2]  # never counted as acknowledged
    assert all("could not be matched" in str(error) for error in result.errors.values())


class _Offline:
    """A Dispatcher's producer that takes records and never reports: batches without a broker."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, **_kw: object) -> None:
        self.records.append((topic, value))

    def poll(self, _timeout: float = 0) -> int:
        return 0


def _offline(hooks: tuple = ()) -> tuple[Dispatcher, _Offline]:
    tree = settings_tree("127.0.0.1:9", "off.", {"work": {"handler": "engine_jobs:record"}})
    tree["delays"] = {"tiers": ["1s", "1m"]}
    producer = _Offline()
    return Dispatcher(config.from_dict(tree, ROOT), producer=producer, ensure_topics=False,  # type: ignore[arg-type]
                      hooks=hooks), producer


def test_a_batch_counts_as_one_outstanding_delivery_until_its_last_report() -> None:
    dispatcher, producer = _offline()
    batch = dispatcher.send_many("work", [{"n": n} for n in range(3)], {})
    assert batch.sent == 3 and dispatcher._batches == {batch} and dispatcher._unreported == 0
    for _ in range(3):
        batch.delivered(None)
    assert batch.outcome.done and not dispatcher._batches
    assert [envelope.decode(value).data for _topic, value in producer.records] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_a_batch_whose_loop_raises_is_still_sealed() -> None:
    dispatcher, _producer = _offline()
    with pytest.raises(TypeError, match="bogus"):
        dispatcher.send_many("work", [{"n": 1}], {"bogus": 1})
    assert not dispatcher._batches  # nothing left outstanding: the report thread would poll forever


def test_hooks_may_change_each_jobs_options_in_a_batch() -> None:
    from protojobs.engine.hooks import Hooks

    class DelayOdd(Hooks):
        def before_dispatch(self, queue: str, data: object, options: dict) -> None:
            if data["n"] % 2:  # type: ignore[index]
                options["delay"] = 60

    dispatcher, producer = _offline((DelayOdd(),))
    batch = dispatcher.send_many("work", [{"n": n} for n in range(4)], {})
    assert batch.sent == 4 and not batch.errors
    assert [topic for topic, _value in producer.records] == ["off.work", "off.delay-1m", "off.work", "off.delay-1m"]
