"""The cross-checks of a jobs.toml tree: run only on a tree the schema accepted, on the built
Settings, each problem a ConfigIssue at its key path.

- tiers: longer than 0, strictly ascending (so unique), each tier's topic name legal;
- retry policies: base <= max; a policy that a queue uses and that retries must not have a first
  delay more than 10x shorter than the smallest tier (it would wait for the whole tier). Longer
  delays are always expressible: the delay router chains tiers, largest first;
- queues: the retry policy exists ("did you mean"), handler or jobs is set, key is set when
  ordering = "key", blocking_retries only with key / partition ordering, timeout and retention
  longer than 0, retention at least the largest tier, topic name legal and not reserved;
- handlers (import_handlers=True): each handler / jobs entry imports and is callable (a Job class
  is duck-typed: a class with a `handle` method). A Job class whose own `queue` differs from the
  queue it is declared on, or whose `max_retries` (total attempts, as the seed counts them)
  differs from an explicit `max_attempts` of its policy, is a conflict; attributes inherited
  from protojobs' own base classes are defaults, not declarations, and never conflict;
- schedules: the queue exists, `job` is one of the queue's jobs, `data` passes the queue's
  payload schema and has the ordering key, a jitter has delay tiers to wait in;
- kafka.enable_auto_commit (the seed's key) is false; [kafka.consumer]: no property that the
  commit rule or the engine depends on is overridden
  (`enable.auto.commit`, `enable.auto.offset.store`, `isolation.level`, `group.id`,
  `partition.assignment.strategy`: `CONSUMER_OWNED`).
A key a queue inherits from [defaults] is reported once, at `defaults.<key>` (`origin`).
`validate --cluster` compares replication factors with the live cluster (protojobs.ops.validate,
which locates and finishes its issues with `queue_key_path` and `finish_loaded`).
Payload schema files are checked when the Settings are built (protojobs.config.payloads).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from protojobs.config.handlers import declared_attr, import_target, is_job_class
from protojobs.config.issues import ConfigIssue, finish, suggest
from protojobs.config.payloads import PayloadError, payload_validator
from protojobs.config.secrets import secret_values
from protojobs.config.toml import key_path
from protojobs.model import names
from protojobs.model.durations import format_ms

if TYPE_CHECKING:
    from protojobs.config.settings import QueueSettings, Settings
    from protojobs.model.schedules import Schedule


# ---------------------------------------------------------------- cross-checks


def origin(data: Mapping[str, Any], queue: str, key: str) -> str:
    """Where a queue's key comes from: its own table, else [defaults], else its own path."""
    if key not in data.get("queues", {}).get(queue, {}) and key in data.get("defaults", {}):
        return key_path(["defaults", key])
    return key_path(["queues", queue, key])


def check(settings: Settings, data: Mapping[str, Any], *, import_handlers: bool,
          from_code: frozenset[str] = frozenset()) -> list[ConfigIssue]:
    """Every cross-check, on a tree the schema accepted and the Settings built from it. Queues
    in `from_code` get their handlers from code (decorated jobs): no handler key is required."""
    issues = _check_tiers(settings, data) + _check_policies(settings, data)
    for queue in settings.queues.values():
        issues += _check_queue(queue, settings, data, queue.name in from_code)
        if import_handlers:
            issues += _check_handlers(queue, settings, data)
    return issues + _check_schedules(settings, data) + _check_consumer(settings)


def _check_tiers(settings: Settings, data: Mapping[str, Any]) -> list[ConfigIssue]:
    written = data.get("delays", {}).get("tiers") or [format_ms(t) for t in settings.tiers_ms]
    prefix = settings.kafka.topic_prefix
    issues = []
    for i, ms in enumerate(settings.tiers_ms):
        path = f"delays.tiers[{i}]"
        if ms <= 0:
            issues.append(ConfigIssue(path, "a delay tier must be longer than 0"))
        elif i and ms <= settings.tiers_ms[i - 1]:
            issues.append(ConfigIssue(path, f"{written[i]!r} is not longer than the tier before it "
                                            f"({written[i - 1]!r}): tiers must be unique and ascending"))
        else:
            issues += _topic_issue(path, functools.partial(names.delay_topic, prefix, ms))
    if not data.get("kafka", {}).get("dead_letter_topic"):
        issues += _topic_issue("kafka.topic_prefix", lambda: names.dead_letter_topic(prefix))
    return issues


def _topic_issue(path: str, make: Callable[[], str]) -> list[ConfigIssue]:
    try:
        make()
    except ValueError as exc:
        return [ConfigIssue(path, str(exc))]
    return []


def _check_policies(settings: Settings, data: Mapping[str, Any]) -> list[ConfigIssue]:
    issues = []
    used = {q.retry for q in settings.queues.values() if not q.blocking_retries}
    smallest = min(settings.tiers_ms, default=0)
    for p in settings.retry.values():
        where = key_path(["retry", p.name])
        if p.backoff == "exponential" and p.base_ms > p.max_ms:
            issues.append(ConfigIssue(f"{where}.base", f"{format_ms(p.base_ms)} is longer than max "
                                                       f"({format_ms(p.max_ms)})"))
        first = min(p.delays_ms) if p.delays_ms else p.base_ms
        if p.name in used and p.max_attempts > 1 and smallest > 10 * first:
            builtin = "" if p.name in data.get("retry", {}) else " (the built-in default policy)"
            issues.append(ConfigIssue(f"{where}.{'backoff' if p.delays_ms else 'base'}", (
                f"a {format_ms(first)} retry delay is far shorter than the smallest delay tier "
                f"({format_ms(smallest)}, delays.tiers[0]), so retries would wait up to "
                f"{format_ms(smallest)}: add a shorter tier or lengthen the delay{builtin}")))
    return issues


def _check_queue(q: QueueSettings, settings: Settings, data: Mapping[str, Any],
                 from_code: bool = False) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    at = key_path(["queues", q.name])
    if q.retry not in settings.retry:
        issues.append(ConfigIssue(origin(data, q.name, "retry"),
                                  f"no retry policy named {q.retry!r}{suggest(q.retry, settings.retry)}"))
    if q.handler is None and not q.jobs and data.get("queues") and not from_code:
        issues.append(ConfigIssue(f"{at}.handler", (
            "required key is missing: set handler (module:callable) "
            "or jobs (an array of module:Class), here or in [defaults] "
            "(jobs declared in code with @app.job need none: give the App, e.g. run --app module:app)")))
    if q.ordering == "key" and q.key is None:
        issues.append(ConfigIssue(origin(data, q.name, "key"), 'required when ordering = "key"'))
    if q.blocking_retries and q.ordering == "none":
        issues.append(ConfigIssue(origin(data, q.name, "blocking_retries"),
                                  'only allowed when ordering is "key" or "partition" (here "none")'))
    for key, ms in (("timeout", q.timeout_ms), ("retention", q.retention_ms)):
        if ms <= 0:
            issues.append(ConfigIssue(origin(data, q.name, key), "must be longer than 0"))
    largest = max(settings.tiers_ms, default=0)
    if 0 < q.retention_ms < largest:
        issues.append(ConfigIssue(origin(data, q.name, "retention"), (
            f"{format_ms(q.retention_ms)} is shorter than the largest delay tier ({format_ms(largest)}): "
            "a job may wait that long, so the topic must keep records at least as long")))
    issues += _topic_issue(at, lambda: names.queue_topic(settings.kafka.topic_prefix, q.name))
    return issues


def _check_handlers(q: QueueSettings, settings: Settings, data: Mapping[str, Any]) -> list[ConfigIssue]:
    if q.handler:
        entries = [(origin(data, q.name, "handler"), q.handler)]
    else:
        entries = [(f"{origin(data, q.name, 'jobs')}[{i}]", job) for i, job in enumerate(q.jobs)]
    issues = []
    for path, target in entries:
        obj, problem = import_target(target)
        if problem is None and q.jobs and not is_job_class(obj):
            problem = f"{target} is not a Job class (a class with a handle method)"
        elif problem is None and not callable(obj):
            problem = f"{target} is not callable"
        if problem:
            issues.append(ConfigIssue(path, problem))
        elif is_job_class(obj):
            conflict_path = key_path(["queues", q.name, "handler"]) if q.handler else path
            issues += [ConfigIssue(conflict_path, c) for c in _conflicts(obj, q, settings)]
    return issues


def _conflicts(cls: type, q: QueueSettings, settings: Settings) -> list[str]:
    found = []
    queue = declared_attr(cls, "queue")
    if queue is not None and queue != q.name:
        found.append(f"conflict: {cls.__name__}.queue = {queue!r} but jobs.toml declares it on queue "
                     f"{q.name!r} (jobs.toml wins; remove one)")
    retries = declared_attr(cls, "max_retries")
    policy = settings.retry.get(q.retry)
    if policy and policy.max_attempts_declared and retries is not None and retries != policy.max_attempts:
        found.append(f"conflict: {cls.__name__}.max_retries = {retries!r} but "
                     f"{key_path(['retry', q.retry, 'max_attempts'])} = {policy.max_attempts} "
                     "(jobs.toml wins; remove one)")
    return found


# ---------------------------------------------------------------- [kafka.consumer]

# librdkafka consumer properties protojobs sets itself: property -> (the only value allowed, or
# None for none, and why). librdkafka reads booleans written as true/false or "true"/"false".
CONSUMER_OWNED: dict[str, tuple[str | None, str]] = {
    "enable.auto.commit": ("false", "protojobs commits an offset only once its job and every earlier job of its "
                                    "partition are finished (the commit rule); auto commit would commit jobs that "
                                    "never ran"),
    "enable.auto.offset.store": ("false", "protojobs stores offsets itself, only those of finished jobs "
                                          "(the commit rule)"),
    "isolation.level": ("read_committed", "exactly-once queues, the delay router and the scheduler publish in "
                                          "Kafka transactions; read_uncommitted would run the jobs of aborted "
                                          "transactions"),
    "group.id": (None, "protojobs names its consumer groups after kafka.group_id (workers, delay router, "
                       "scheduler): set kafka.group_id instead"),
    "partition.assignment.strategy": ("cooperative-sticky", "the worker takes and gives up partitions "
                                                            "incrementally (cooperative rebalancing)"),
}


def _check_consumer(settings: Settings) -> list[ConfigIssue]:
    issues = []
    if settings.kafka.enable_auto_commit:
        issues.append(ConfigIssue("kafka.enable_auto_commit", (
            "true is not supported: protojobs commits an offset only once its job is finished (the commit rule), "
            "and auto commit would commit jobs that never ran; remove the key or set it to false")))
    for prop, value in settings.kafka.consumer.items():
        if prop not in CONSUMER_OWNED:
            continue
        allowed, why = CONSUMER_OWNED[prop]
        written = str(value).lower() if isinstance(value, bool) else str(value).strip()
        if allowed is not None and written == allowed:
            continue
        must = f"must be {allowed} (or left out)" if allowed is not None else "cannot be set here"
        issues.append(ConfigIssue(key_path(["kafka", "consumer", prop]), f"{must}: {why}"))
    return issues


# ---------------------------------------------------------------- schedules


def _check_schedules(settings: Settings, data: Mapping[str, Any]) -> list[ConfigIssue]:
    """[schedules.*]; a schedule whose rule is unusable is not in `settings.schedules` (its rule
    was reported when the Settings were built), but its queue is still checked."""
    issues: list[ConfigIssue] = []
    for name, table in (data.get("schedules") or {}).items():
        if table.get("queue") not in settings.queues:
            issues.append(ConfigIssue(key_path(["schedules", name, "queue"]), f"no queue named "
                                      f"{table.get('queue')!r}{suggest(str(table.get('queue')), settings.queues)}"))
        sched = settings.schedules.get(name)
        queue = settings.queues.get(sched.queue) if sched is not None else None
        if sched is not None and queue is not None:
            issues += _check_schedule(sched, queue, settings)
    return issues


def _check_schedule(sched: Schedule, queue: QueueSettings, settings: Settings) -> list[ConfigIssue]:
    """One schedule against its queue: job, payload schema, ordering key, jitter."""
    at = ["schedules", sched.name]
    issues: list[ConfigIssue] = []
    jobs = [j.rsplit(":", 1)[-1] for j in queue.jobs]
    if sched.job is not None and jobs and sched.job not in jobs:
        issues.append(ConfigIssue(key_path([*at, "job"]), f"{sched.job!r} is not on queue {queue.name!r}'s jobs "
                                  f"({', '.join(jobs)})"))
    try:
        payload_validator(queue)(sched.data)
    except PayloadError as exc:
        for error in exc.errors:  # "data.to: ..." -> schedules.<name>.data.to
            where, _, message = error.partition(": ")
            issues.append(ConfigIssue(f"{key_path(at)}.{where}", message))
    if queue.ordering == "key" and queue.key is not None and sched.data.get(queue.key) is None:
        issues.append(ConfigIssue(key_path([*at, "data"]), f"queue {queue.name!r} orders by key "
                                  f"{queue.key!r}: the data must have it"))
    if sched.jitter_ms and not settings.tiers_ms:
        issues.append(ConfigIssue(key_path([*at, "jitter"]), "a jitter delays the job: it needs [delays] tiers"))
    return issues


# ---------------------------------------------------------------- checks made after loading


def queue_key_path(settings: Settings, queue: str, key: str) -> str:
    """`origin` for loaded Settings: where the queue's `key` is set in the merged tree."""
    return origin(settings.raw, queue, key)


def finish_loaded(settings: Settings, issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """`finish` for issues found on loaded Settings: deduplicated, the config's secrets scrubbed."""
    return finish(issues, {}, secret_values(settings.raw))
