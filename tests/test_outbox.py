"""The resend queue of kafka/outbox.py, shared by the worker and the delay router: a delivery
that failed for a passing reason is sent again after a backoff that doubles per try."""

from __future__ import annotations

from protojobs.kafka.outbox import Resends, resend_delay


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_resends_come_back_at_their_due_time_soonest_first() -> None:
    clock = Clock()
    resends: Resends[str] = Resends(clock)
    assert resends.later("third try", 3) == resend_delay(3) == 2.0
    assert resends.later("first try", 1) == 0.5
    assert resends.later("first try too", 1) == 0.5
    assert resends.due() == [] and len(resends) == 3
    clock.now += 0.5
    assert resends.due() == ["first try", "first try too"]  # equal due times: in the order queued
    clock.now += 1.4
    assert resends.due() == []
    clock.now += 0.1
    assert resends.due() == ["third try"] and len(resends) == 0


def test_the_backoff_doubles_up_to_thirty_seconds() -> None:
    assert [resend_delay(n) for n in (1, 2, 3, 4, 7, 50)] == [0.5, 1.0, 2.0, 4.0, 30.0, 30.0]
