"""Topic, group and transactional.id names (model.names) and TopicSpec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protojobs.model import names as topics
from protojobs.model.names import (
    TopicSpec,
    check_topic_name,
    dead_letter_topic,
    delay_topic,
    queue_topic,
    schedules_topic,
)

PREFIX = "my-app-jobs-"


def test_names_follow_the_documented_layout() -> None:
    assert queue_topic(PREFIX, "emails") == "my-app-jobs-emails"
    assert queue_topic("proto-jobs-", "default") == "proto-jobs-default"
    assert dead_letter_topic(PREFIX) == "my-app-jobs-dead-letter"
    assert schedules_topic(PREFIX) == "my-app-jobs-schedules"
    assert queue_topic("", "emails") == "emails"


@pytest.mark.parametrize(
    ("tier_ms", "suffix"),
    [(200, "200ms"), (1000, "1s"), (3000, "3s"), (1500, "1500ms"), (300_000, "5m"),
     (3_600_000, "1h"), (86_400_000, "1d"), (90_000, "90s")],
)  # fmt: skip
def test_delay_topic_uses_the_shortest_exact_duration(tier_ms: int, suffix: str) -> None:
    assert delay_topic(PREFIX, tier_ms) == f"my-app-jobs-delay-{suffix}"


@pytest.mark.parametrize("tier_ms", [0, -1000, True])
def test_delay_topic_rejects_non_positive_tiers(tier_ms: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        delay_topic(PREFIX, tier_ms)


@given(st.lists(st.integers(1, 10**10), min_size=2, max_size=6, unique=True))
@settings(max_examples=150, deadline=None)
def test_distinct_tiers_get_distinct_topics(tiers: list[int]) -> None:
    names = {delay_topic(PREFIX, tier) for tier in tiers}
    assert len(names) == len(tiers)


@pytest.mark.parametrize("queue", ["dead-letter", "schedules", "delay-1s", "delay-"])
def test_queue_names_that_would_collide_with_internal_topics_are_rejected(queue: str) -> None:
    assert topics.is_reserved_queue_name(queue)
    with pytest.raises(ValueError, match="reserved"):
        queue_topic(PREFIX, queue)


@given(st.from_regex(r"[a-z][a-z0-9._-]{0,30}", fullmatch=True))
@settings(max_examples=150, deadline=None)
def test_no_queue_topic_equals_an_internal_topic(queue: str) -> None:
    internal = {dead_letter_topic(PREFIX), schedules_topic(PREFIX)}
    try:
        name = queue_topic(PREFIX, queue)
    except ValueError:
        assert topics.is_reserved_queue_name(queue)
        return
    assert name not in internal
    assert not name.startswith(PREFIX + "delay-")


@pytest.mark.parametrize("queue", ["", "with space", "slash/queue", "ümlaut", "a" * 250])
def test_illegal_queue_names_are_rejected(queue: str) -> None:
    with pytest.raises(ValueError):
        queue_topic(PREFIX, queue)


@pytest.mark.parametrize("name", [".", "..", "", "a:b", "x" * 250])
def test_check_topic_name_rejects_what_kafka_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="not legal|longer"):
        check_topic_name(name)


def test_check_topic_name_accepts_the_longest_legal_name() -> None:
    assert check_topic_name("x" * 249) == "x" * 249


def test_illegal_prefix_is_rejected_everywhere() -> None:
    for make in (dead_letter_topic, schedules_topic):
        with pytest.raises(ValueError):
            make("bad prefix ")
    with pytest.raises(ValueError):
        delay_topic("bad/", 1000)


def test_topic_spec_is_frozen_and_keeps_a_read_only_copy_of_config() -> None:
    config = {"retention.ms": "604800000"}
    spec = TopicSpec("my-app-jobs-emails", 3, 1, config)
    config["retention.ms"] = "1"
    assert spec.config == {"retention.ms": "604800000"}
    with pytest.raises(TypeError):
        spec.config["cleanup.policy"] = "compact"  # type: ignore[index]
    with pytest.raises(AttributeError):
        spec.partitions = 4  # type: ignore[misc]
    assert spec == TopicSpec("my-app-jobs-emails", 3, 1, {"retention.ms": "604800000"})
    assert TopicSpec("t", 1, 1).config == {}


@pytest.mark.parametrize(
    ("partitions", "replication", "config"),
    [(0, 1, {}), (1, 0, {}), (True, 1, {}), (1, 1, {"retention.ms": 1000})],
)
def test_topic_spec_rejects_bad_values(partitions: int, replication: int, config: dict) -> None:
    with pytest.raises(ValueError, match="topic t:"):
        TopicSpec("t", partitions, replication, config)


def test_topic_spec_rejects_illegal_names() -> None:
    with pytest.raises(ValueError, match="not legal"):
        TopicSpec("bad name", 1, 1)
