"""Retry decisions: backoff sequences, jitter, caps, and how errors are routed."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protojobs.model import retry
from protojobs.model.retry import DeadLetter, PermanentError, Retry, RetryLater

SETTINGS = settings(max_examples=150, deadline=None)
NOW = 1_760_000_000_000


@dataclass(frozen=True)
class Policy:
    """The shape of protojobs.config.RetryPolicy, for tests."""

    name: str = "default"
    max_attempts: int = 5
    backoff: str = "exponential"
    delays_ms: tuple[int, ...] = ()
    base_ms: int = 1000
    max_ms: int = 600_000
    multiplier: float = 2.0
    jitter: float = 0.0
    dead_letter_on: tuple[str, ...] = ()
    retry_on: tuple[str, ...] = ()


def _conforms(policy: retry.PolicyLike) -> None:  # mypy checks Policy against the Protocol
    pass


_conforms(Policy())


class AppError(Exception):
    pass


class Throttled(AppError):
    pass


class Outer:
    class Nested(Exception):
        pass


class Unrecoverable(PermanentError):
    pass


class SlowDown(RetryLater):
    pass


# --- backoff sequences ----------------------------------------------------------------------


def test_exponential_doubles_from_base_and_is_capped() -> None:
    policy = Policy(max_attempts=8, base_ms=1000, max_ms=20_000)
    assert retry.schedule(policy) == [1000, 2000, 4000, 8000, 16000, 20000, 20000]


def test_exponential_with_another_multiplier() -> None:
    policy = Policy(max_attempts=4, base_ms=100, multiplier=3.0)
    assert retry.schedule(policy) == [100, 300, 900]


def test_fixed_backoff_repeats_base() -> None:
    assert retry.schedule(Policy(backoff="fixed", base_ms=250)) == [250, 250, 250, 250]
    assert retry.schedule(Policy(backoff="fixed", base_ms=10_000, max_ms=3000)) == [3000] * 4


def test_list_backoff_follows_the_list_and_repeats_its_last_delay() -> None:
    policy = Policy(max_attempts=6, backoff="list", delays_ms=(200, 1000, 3000))
    assert retry.schedule(policy) == [200, 1000, 3000, 3000, 3000]
    capped = replace(policy, max_ms=500)
    assert retry.schedule(capped) == [200, 500, 500, 500, 500]


def test_schedule_has_one_delay_between_each_pair_of_attempts() -> None:
    assert retry.schedule(Policy(max_attempts=1)) == []
    assert len(retry.schedule(Policy(max_attempts=10))) == 9


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert retry.nominal_ms(Policy(max_ms=600_000), 100_000) == 600_000


@pytest.mark.parametrize(
    "policy",
    [Policy(backoff="list", delays_ms=()), Policy(backoff="linear")],
    ids=["empty-list", "unknown"],
)
def test_bad_backoff_is_reported(policy: Policy) -> None:
    with pytest.raises(ValueError, match="backoff"):
        retry.nominal_ms(policy, 1)


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        retry.nominal_ms(Policy(), 0)
    with pytest.raises(ValueError, match="start at 1"):
        retry.decide(Policy(), 0, AppError(), NOW, None)


policies = st.builds(
    Policy,
    max_attempts=st.integers(1, 30),
    backoff=st.sampled_from(["exponential", "fixed", "list"]),
    delays_ms=st.lists(st.integers(0, 10**7), min_size=1, max_size=6).map(tuple),
    base_ms=st.integers(0, 10**6),
    max_ms=st.integers(0, 10**8),
    multiplier=st.floats(1.0, 10.0),
    jitter=st.floats(0.0, 1.0),
)


@given(policies, st.integers(1, 60), st.integers(0, 2**32))
@SETTINGS
def test_jittered_delay_stays_within_its_bounds(policy: Policy, attempt: int, seed: int) -> None:
    rng = random.Random(seed)
    low, high = retry.jitter_bounds(policy, attempt)
    nominal = retry.nominal_ms(policy, attempt)
    assert 0 <= low <= high <= policy.max_ms
    assert low >= nominal * (1 - policy.jitter) - 1 and high <= nominal * (1 + policy.jitter)
    for _ in range(20):
        delay = retry.backoff_ms(policy, attempt, rng)
        assert low <= delay <= high


@given(policies, st.integers(1, 60))
@SETTINGS
def test_without_rng_the_delay_is_the_nominal_one(policy: Policy, attempt: int) -> None:
    assert retry.backoff_ms(policy, attempt, None) == retry.nominal_ms(policy, attempt)
    assert 0 <= retry.nominal_ms(policy, attempt) <= policy.max_ms


@given(policies.filter(lambda p: p.backoff == "exponential"), st.integers(1, 60))
@SETTINGS
def test_exponential_never_shrinks(policy: Policy, attempt: int) -> None:
    assert retry.nominal_ms(policy, attempt) <= retry.nominal_ms(policy, attempt + 1)


def test_jitter_actually_spreads_delays_both_ways() -> None:
    policy = Policy(base_ms=10_000, jitter=0.2)
    rng = random.Random(7)
    delays = [retry.backoff_ms(policy, 1, rng) for _ in range(500)]
    assert min(delays) < 9000 and max(delays) > 11000
    assert min(delays) >= 8000 and max(delays) <= 12000


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    policy = Policy(jitter=0.5)
    first = [retry.backoff_ms(policy, a, random.Random(1)) for a in range(1, 5)]
    again = [retry.backoff_ms(policy, a, random.Random(1)) for a in range(1, 5)]
    assert first == again


def test_jitter_never_exceeds_the_cap() -> None:
    policy = Policy(base_ms=1000, max_ms=1000, jitter=1.0)
    rng = random.Random(3)
    delays = [retry.backoff_ms(policy, 4, rng) for _ in range(300)]
    assert max(delays) <= 1000 and min(delays) >= 0 and min(delays) < 500


# --- routing errors -------------------------------------------------------------------------


def test_an_ordinary_error_is_retried_after_the_backoff() -> None:
    decision = retry.decide(Policy(), 1, AppError("x"), NOW, None)
    assert decision == Retry(1000, NOW + 1000)
    assert retry.decide(Policy(), 3, AppError("x"), NOW, None) == Retry(4000, NOW + 4000)


def test_the_decision_uses_the_jittered_delay() -> None:
    policy = Policy(jitter=0.5)
    decision = retry.decide(policy, 2, AppError(), NOW, random.Random(5))
    assert isinstance(decision, Retry)
    assert decision.delay_ms == retry.backoff_ms(policy, 2, random.Random(5))
    assert decision.available_at == NOW + decision.delay_ms


def test_exhausted_attempts_dead_letter_saying_so() -> None:
    policy = Policy(max_attempts=3)
    assert isinstance(retry.decide(policy, 2, AppError(), NOW, None), Retry)
    decision = retry.decide(policy, 3, AppError(), NOW, None)
    assert isinstance(decision, DeadLetter)
    assert "attempts exhausted" in decision.reason and "3 of 3 attempts" in decision.reason


def test_max_attempts_one_never_retries() -> None:
    assert isinstance(retry.decide(Policy(max_attempts=1), 1, AppError(), NOW, None), DeadLetter)


@given(st.integers(1, 20), st.integers(1, 40))
@SETTINGS
def test_a_failing_job_runs_exactly_max_attempts_times(max_attempts: int, extra: int) -> None:
    policy = Policy(max_attempts=max_attempts)
    runs = 0
    for attempt in range(1, max_attempts + extra):
        runs += 1
        if isinstance(retry.decide(policy, attempt, AppError(), NOW, None), DeadLetter):
            break
    assert runs == max_attempts


@pytest.mark.parametrize("error", [PermanentError("no"), Unrecoverable("gone")])
def test_permanent_errors_dead_letter_at_once(error: Exception) -> None:
    decision = retry.decide(Policy(), 1, error, NOW, None)
    assert isinstance(decision, DeadLetter) and "permanent" in decision.reason
    assert type(error).__name__ in decision.reason


@pytest.mark.parametrize(
    "name",
    ["ValueError", "builtins.ValueError", "ArithmeticError", "Exception",
     "builtins.ZeroDivisionError"],
)  # fmt: skip
def test_dead_letter_on_matches_by_simple_or_qualified_name_and_base(name: str) -> None:
    error = ValueError("x") if "ValueError" in name else ZeroDivisionError()
    decision = retry.decide(Policy(dead_letter_on=(name,)), 1, error, NOW, None)
    assert isinstance(decision, DeadLetter) and name in decision.reason


def test_subclasses_match_their_base_class_names() -> None:
    policy = Policy(dead_letter_on=(f"{__name__}.AppError",))
    assert isinstance(retry.decide(policy, 1, Throttled(), NOW, None), DeadLetter)
    assert isinstance(retry.decide(policy, 1, KeyError(), NOW, None), Retry)


def test_a_name_matches_only_whole_names() -> None:
    policy = Policy(dead_letter_on=("Error", "Value", "errors.ValueError"))
    assert isinstance(retry.decide(policy, 1, ValueError(), NOW, None), Retry)


def test_nested_classes_match_by_qualified_name() -> None:
    names = retry.type_names(Outer.Nested)
    assert "Nested" in names and f"{__name__}.Outer.Nested" in names
    assert (
        retry.matches(Outer.Nested(), ["x", f"{__name__}.Outer.Nested"])
        == f"{__name__}.Outer.Nested"
    )


def test_dead_letter_on_wins_over_retry_on() -> None:
    policy = Policy(dead_letter_on=("Throttled",), retry_on=("AppError",))
    assert isinstance(retry.decide(policy, 1, Throttled(), NOW, None), DeadLetter)
    assert isinstance(retry.decide(policy, 1, AppError(), NOW, None), Retry)


def test_non_empty_retry_on_dead_letters_everything_else() -> None:
    policy = Policy(retry_on=("ConnectionError", "TimeoutError"))
    assert isinstance(retry.decide(policy, 1, ConnectionResetError(), NOW, None), Retry)
    decision = retry.decide(policy, 1, KeyError("k"), NOW, None)
    assert isinstance(decision, DeadLetter) and "not listed in retry_on" in decision.reason


def test_empty_retry_on_retries_everything() -> None:
    for error in (KeyError(), OSError(), RuntimeError(), KeyboardInterrupt()):
        assert isinstance(retry.decide(Policy(), 1, error, NOW, None), Retry)


def test_retry_later_uses_exactly_its_delay() -> None:
    policy = Policy(max_ms=1000, jitter=1.0, retry_on=("OSError",))
    decision = retry.decide(policy, 1, RetryLater(90_000), NOW, random.Random(1))
    assert decision == Retry(90_000, NOW + 90_000)
    assert retry.decide(policy, 2, SlowDown(0), NOW, None) == Retry(0, NOW)


def test_retry_later_is_still_bounded_by_max_attempts() -> None:
    decision = retry.decide(Policy(max_attempts=2), 2, RetryLater(10), NOW, None)
    assert isinstance(decision, DeadLetter) and "attempts exhausted" in decision.reason


def test_retry_later_listed_in_dead_letter_on_dead_letters() -> None:
    decision = retry.decide(Policy(dead_letter_on=("SlowDown",)), 1, SlowDown(5), NOW, None)
    assert isinstance(decision, DeadLetter)


@pytest.mark.parametrize("delay", [-1, 1.5, True, "10"])
def test_retry_later_rejects_bad_delays(delay: object) -> None:
    with pytest.raises(ValueError, match="delay_ms"):
        RetryLater(delay)  # type: ignore[arg-type]


def test_retry_later_message() -> None:
    assert str(RetryLater(500)) == "retry in 500 ms"
    assert str(RetryLater(500, "rate limited")) == "rate limited"
    assert RetryLater(500, "rate limited").delay_ms == 500


@given(policies, st.integers(1, 40), st.integers(0, 2**40))
@SETTINGS
def test_decide_agrees_with_the_rules(policy: Policy, attempt: int, now: int) -> None:
    decision = retry.decide(policy, attempt, Throttled(), now, random.Random(attempt))
    if attempt >= policy.max_attempts:
        assert isinstance(decision, DeadLetter) and "exhausted" in decision.reason
    else:
        assert isinstance(decision, Retry)
        low, high = retry.jitter_bounds(policy, attempt)
        assert low <= decision.delay_ms <= high
        assert decision.available_at == now + decision.delay_ms
