"""Retry decisions: given a policy, the attempt that failed and its error -> retry when, or
dead-letter why. Pure: no I/O, no clock (the caller passes `now_ms`), randomness only from the
`random.Random` the caller passes.

How an error is routed (first rule that applies wins):
1. `PermanentError` (or a subclass): dead-letter at once.
2. Its type is named in `dead_letter_on`: dead-letter at once.
3. `RetryLater` (or a subclass): retry after exactly its `delay_ms` (neither jittered nor
   capped), unless rule 5 applies.
4. `retry_on` is not empty and does not name its type: dead-letter at once.
5. `attempt >= max_attempts`: dead-letter, the reason saying how many attempts failed.
6. Otherwise retry after `backoff_ms(policy, attempt, rng)`.

A name matches an error if it is the simple name (`ValueError`) or the fully-qualified name
(`builtins.ValueError`, `app.errors.Throttled`) of the error's class or of any of its base
classes, so naming a base class covers its subclasses.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class PolicyLike(Protocol):
    """What `decide` reads of a retry policy (`protojobs.config.RetryPolicy` has exactly this).

    `max_attempts` counts every attempt, the first included; delays are in milliseconds;
    `backoff` is "exponential" (base * multiplier^(attempt-1)), "fixed" (base) or "list"
    (`delays_ms[attempt-1]`, the last one repeating); `jitter` is a fraction in 0..1.
    """

    @property
    def name(self) -> str: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def backoff(self) -> str: ...
    @property
    def delays_ms(self) -> tuple[int, ...]: ...
    @property
    def base_ms(self) -> int: ...
    @property
    def max_ms(self) -> int: ...
    @property
    def multiplier(self) -> float: ...
    @property
    def jitter(self) -> float: ...
    @property
    def dead_letter_on(self) -> tuple[str, ...]: ...
    @property
    def retry_on(self) -> tuple[str, ...]: ...


class PermanentError(Exception):
    """Raised by a handler: this job can never succeed; dead-letter it without retrying."""


class RetryLater(Exception):
    """Raised by a handler: retry after exactly `delay_ms` (still bounded by max_attempts)."""

    def __init__(self, delay_ms: int, message: str = "") -> None:
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, int) or delay_ms < 0:
            raise ValueError(f"RetryLater needs a delay_ms >= 0 (an int), not {delay_ms!r}")
        super().__init__(message or f"retry in {delay_ms} ms")
        self.delay_ms = delay_ms


@dataclass(frozen=True, slots=True)
class Retry:
    """Run the job again: after `delay_ms`, i.e. at `available_at` (epoch ms)."""

    delay_ms: int
    available_at: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: send the job to the dead-letter topic; `reason` says why, for humans."""

    reason: str


Decision = Retry | DeadLetter


_NAMES: dict[type, frozenset[str]] = {}  # cache; cleared if it ever grows past 4096 types


def _names(error_type: type[BaseException]) -> frozenset[str]:
    names = _NAMES.get(error_type)
    if names is None:
        if len(_NAMES) >= 4096:
            _NAMES.clear()
        names = frozenset(
            name
            for cls in error_type.__mro__
            for name in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}")
        )
        _NAMES[error_type] = names
    return names


def type_names(error_type: type[BaseException]) -> frozenset[str]:
    """Every name that matches `error_type`: simple and qualified, of it and its bases."""
    return _names(error_type)


def matches(error: BaseException, names: Iterable[str]) -> str | None:
    """The first of `names` that matches `error` (see the module docstring), or None."""
    own = _names(type(error))
    for name in names:
        if name in own:
            return name
    return None


def _describe(error: BaseException) -> str:
    kind = type(error).__qualname__
    text = str(error)
    return f"{kind}: {text}" if text else kind


def decide(
    policy: PolicyLike,
    attempt: int,
    error: BaseException,
    now_ms: int,
    rng: random.Random | None = None,
) -> Decision:
    """Retry or dead-letter after attempt number `attempt` (1 = the first run) failed.

    The rules are in the module docstring. A `Retry` is never scheduled beyond
    `max_attempts` and its `available_at` is `now_ms + delay_ms`. `rng` supplies the jitter;
    None means no jitter (the nominal delay, deterministic).
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, not {attempt}")
    if isinstance(error, PermanentError):
        return DeadLetter(f"permanent error ({_describe(error)})")
    name = matches(error, policy.dead_letter_on)
    if name is not None:
        return DeadLetter(f"{name} is listed in dead_letter_on of retry policy {policy.name!r}")
    explicit = isinstance(error, RetryLater)  # asked for a retry: retry_on does not apply
    if not explicit and policy.retry_on and matches(error, policy.retry_on) is None:
        return DeadLetter(
            f"{type(error).__qualname__} is not listed in retry_on of retry policy {policy.name!r}"
        )
    if attempt >= policy.max_attempts:
        return DeadLetter(
            f"attempts exhausted: {attempt} of {policy.max_attempts} attempts failed "
            f"(retry policy {policy.name!r})"
        )
    delay = error.delay_ms if isinstance(error, RetryLater) else backoff_ms(policy, attempt, rng)
    return Retry(delay, now_ms + delay)


def nominal_ms(policy: PolicyLike, attempt: int) -> int:
    """The delay after failed attempt `attempt` before jitter, capped at `max_ms`."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, not {attempt}")
    if policy.backoff == "fixed":
        raw: float = policy.base_ms
    elif policy.backoff == "exponential":
        try:
            raw = policy.base_ms * float(policy.multiplier) ** (attempt - 1)
        except OverflowError:
            raw = float("inf")
    elif policy.backoff == "list":
        if not policy.delays_ms:
            raise ValueError(f"retry policy {policy.name!r}: backoff 'list' needs delays")
        raw = policy.delays_ms[min(attempt, len(policy.delays_ms)) - 1]
    else:
        raise ValueError(f"retry policy {policy.name!r}: unknown backoff {policy.backoff!r}")
    return max(0, int(min(raw, policy.max_ms)))


def jitter_bounds(policy: PolicyLike, attempt: int) -> tuple[int, int]:
    """The smallest and largest delay `backoff_ms` can return after failed attempt `attempt`."""
    nominal = nominal_ms(policy, attempt)
    low = max(0, int(nominal * (1 - policy.jitter)))
    high = min(policy.max_ms, int(nominal * (1 + policy.jitter)))
    return low, max(low, high)


def backoff_ms(policy: PolicyLike, attempt: int, rng: random.Random | None = None) -> int:
    """The delay after failed attempt `attempt`: the nominal delay times (1 + u), u uniform in
    [-jitter, +jitter], then bounded to [0, max_ms]. `rng` None: the nominal delay."""
    nominal = nominal_ms(policy, attempt)
    if rng is None or not policy.jitter:
        return nominal
    jittered = int(nominal * (1 + rng.uniform(-policy.jitter, policy.jitter)))
    return max(0, min(policy.max_ms, jittered))


def schedule(policy: PolicyLike) -> list[int]:
    """The nominal delays of a job that keeps failing: element i follows attempt i + 1, so
    the list has max_attempts - 1 elements (the last attempt is followed by dead-lettering)."""
    return [nominal_ms(policy, attempt) for attempt in range(1, policy.max_attempts)]
