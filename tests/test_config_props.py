"""Properties of protojobs.config: every valid jobs.toml loads, every broken one is a ConfigError
naming the broken key, and nothing else ever escapes."""

from __future__ import annotations

import copy
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protojobs import config
from protojobs.config import ConfigError
from protojobs.model import names as topics
from protojobs.model.durations import parse_ms

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
FAST = settings(max_examples=50, deadline=None)
NOWHERE = Path("/nonexistent-base-dir")

HANDLERS = st.sampled_from(["os.path:join", "json:dumps", "textwrap:dedent"])
JOB_CLASSES = ["socketserver:BaseRequestHandler", "socketserver:StreamRequestHandler",
               "http.server:BaseHTTPRequestHandler"]
NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,11}", fullmatch=True).filter(
    lambda n: not topics.is_reserved_queue_name(n) and n not in (".", ".."))
EXCEPTIONS = st.lists(st.sampled_from(["ValueError", "KeyError", "TimeoutError", "app.Boom"]), unique=True, max_size=3)


def durations(*choices: str) -> st.SearchStrategy[str]:
    return st.sampled_from(choices)


def kafka_tables() -> st.SearchStrategy[dict[str, Any]]:
    props = st.dictionaries(st.sampled_from(["acks", "linger.ms", "sasl.password", "enable.idempotence",
                                             "security.protocol"]),
                            st.one_of(st.text(max_size=8), st.integers(0, 10**6), st.booleans()), max_size=3)
    return st.fixed_dictionaries({}, optional={
        "brokers": st.one_of(st.just("localhost:9092"), st.lists(st.sampled_from(["a:1", "b:2", "c:3"]),
                                                                  min_size=1, max_size=3)),
        "group_id": st.text(min_size=1, max_size=12),
        "topic_prefix": st.from_regex(r"[a-z0-9._-]{0,8}", fullmatch=True),
        "auto_offset_reset": st.sampled_from(["earliest", "latest"]),
        "enable_auto_commit": st.just(False),  # true is refused (tests/test_config_guards.py)
        "compression": st.sampled_from(["none", "gzip", "snappy", "lz4", "zstd"]),
        "batch_size": st.integers(1, 10**6),
        "timeout_ms": st.integers(1, 60_000),
        "debug": st.sampled_from(["", "all", "broker,topic"]),
        "producer": props,
        "consumer": props,
    })


@st.composite
def tiers(draw: st.DrawFn) -> list[str]:
    first = draw(durations("200ms", "500ms", "1s"))
    rest = draw(st.lists(durations("3s", "5s", "30s", "1m", "5m", "1h"), unique=True, max_size=5))
    return [first, *sorted(rest, key=parse_ms)]


def policies() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={
        "max_attempts": st.integers(1, 10),
        "backoff": st.one_of(st.sampled_from(["exponential", "fixed"]),
                             st.lists(durations("100ms", "1s", "5s", "1m"), min_size=1, max_size=4)),
        "base": durations("100ms", "1s", "5s"),
        "max": durations("10m", "1h"),
        "multiplier": st.floats(1, 5, allow_nan=False),
        "jitter": st.floats(0, 1, allow_nan=False),
        "dead_letter_on": EXCEPTIONS,
        "retry_on": EXCEPTIONS,
    })


@st.composite
def queue_tables(draw: st.DrawFn, policy_names: list[str], need_target: bool) -> dict[str, Any]:
    table: dict[str, Any] = {}
    target = draw(st.sampled_from(["handler", "jobs", None] if not need_target else ["handler", "jobs"]))
    if target == "handler":
        table["handler"] = draw(HANDLERS)
    elif target == "jobs":
        table["jobs"] = draw(st.lists(st.sampled_from(JOB_CLASSES), min_size=1, unique=True))
    ordering = draw(st.sampled_from(["none", "key", "partition", None]))
    if ordering:
        table["ordering"] = ordering
    if ordering == "key" or draw(st.booleans()):
        table["key"] = draw(st.sampled_from(["to", "user_id", "id"]))
    if ordering in ("key", "partition") and draw(st.booleans()):
        table["blocking_retries"] = draw(st.booleans())
    optional = draw(st.fixed_dictionaries({}, optional={
        "retry": st.sampled_from(policy_names),
        "schema": st.sampled_from([str(SCHEMAS / n) for n in ("send_email.json", "resize_image.json", "report.json")]),
        "partitions": st.integers(1, 64),
        "replication_factor": st.integers(1, 5),
        "concurrency": st.integers(1, 128),
        "delivery": st.sampled_from(["at_least_once", "exactly_once"]),
        "timeout": durations("500ms", "30s", "5m"),
        "retention": durations("1d", "7d"),
        "validate_on_consume": st.booleans(),
        "dead_letter": st.from_regex(r"[a-z][a-z0-9._-]{0,15}", fullmatch=True),
    }))
    return {**table, **optional}


@st.composite
def configs(draw: st.DrawFn, min_queues: int = 0) -> dict[str, Any]:
    """A valid jobs.toml tree (queue and policy names of mixed case)."""
    data: dict[str, Any] = {}
    if draw(st.booleans()):
        data["kafka"] = draw(kafka_tables())
    if draw(st.booleans()):
        data["delays"] = {"tiers": draw(tiers())}
    retry = draw(st.dictionaries(NAMES, policies(), max_size=3))
    if retry:
        data["retry"] = retry
    names = ["default", *retry]
    defaults = draw(queue_tables(names, need_target=False))
    defaults.pop("ordering", None), defaults.pop("blocking_retries", None)
    if defaults:
        data["defaults"] = defaults
    # unique as env overrides match them: case-insensitive, "." and "-" read as "_"
    queue_names = draw(st.lists(NAMES, min_size=min_queues, max_size=4,
                                unique_by=lambda n: n.lower().replace(".", "_").replace("-", "_")))
    data["queues"] = {n: draw(queue_tables(names, need_target=True)) for n in queue_names}
    return data


def lines(error: ConfigError) -> list[str]:
    return str(error).splitlines()


def names_path(error: ConfigError, path: str) -> bool:
    return any(line.startswith(f"{path}:") or line.startswith(f"{path}[") for line in lines(error))


# ---------------------------------------------------------------- valid configs


@FAST
@given(configs())
def test_valid_configs_load(data: dict[str, Any]) -> None:
    original = copy.deepcopy(data)
    loaded = config.from_dict(data, NOWHERE, env={})
    assert data == original  # the input is never modified
    assert list(loaded.queues) == (list(data["queues"]) or ["default"])
    assert set(loaded.retry) == {"default", *data.get("retry", {})}
    assert list(loaded.tiers_ms) == sorted(set(loaded.tiers_ms))
    for name, table in data["queues"].items():
        queue = loaded.queues[name]
        expected = table.get("concurrency", data.get("defaults", {}).get("concurrency", 4))
        assert (queue.name, queue.concurrency) == (name, expected)
        assert (queue.handler is None) != (queue.jobs == ())
    shown = config.redacted(loaded)["kafka"]
    for side in ("producer", "consumer"):
        secret = data.get("kafka", {}).get(side, {}).get("sasl.password")
        assert shown[side].get("sasl.password") == (None if secret is None else "***")


@FAST
@given(configs(min_queues=1))
def test_valid_configs_survive_a_round_trip_through_a_file_and_show(data: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.toml"
        path.write_text(config.to_toml(data), encoding="utf-8")
        loaded = config.load(path, env={}, import_handlers=False)
        shown = Path(tmp) / "shown.toml"
        shown.write_text(config.to_toml(config.effective(loaded)), encoding="utf-8")
        again = config.load(shown, env={}, import_handlers=False)
    assert (again.kafka, again.tiers_ms, again.retry, again.queues) == (
        loaded.kafka, loaded.tiers_ms, loaded.retry, loaded.queues)


@FAST
@given(configs(min_queues=1), st.data())
def test_env_overrides_reach_any_queue_whatever_its_case(data: dict[str, Any], draw: st.DataObject) -> None:
    name = draw.draw(st.sampled_from(sorted(data["queues"])))
    concurrency = draw.draw(st.integers(1, 500))
    var = f"PROTOJOBS_QUEUES__{name.upper().replace('.', '_').replace('-', '_')}__CONCURRENCY"
    loaded = config.from_dict(data, NOWHERE, env={var: str(concurrency)}, import_handlers=False)
    assert list(loaded.queues) == list(data["queues"])
    assert loaded.queues[name].concurrency == concurrency


# ---------------------------------------------------------------- mutations


def leaves(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every non-table value."""
    found = []
    for key, value in tree.items():
        if isinstance(value, dict):
            found += leaves(value, (*prefix, key))
        else:
            found.append((*prefix, key))
    return found


def wrong_value(path: tuple[str, ...], value: Any) -> Any:
    if path[:2] in (("kafka", "producer"), ("kafka", "consumer")):
        return [value]
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int | float):
        return "many"
    if isinstance(value, str):
        return 12345
    return 7  # arrays: nothing in jobs.toml takes a bare number where an array goes


def dotted(path: tuple[str, ...]) -> str:
    return config.key_path(path)


def expect_error(data: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.from_dict(data, NOWHERE, env={}, import_handlers=False)
    assert names_path(caught.value, path), (path, lines(caught.value))


@FAST
@given(configs(), st.data())
def test_a_value_of_the_wrong_type_is_named(data: dict[str, Any], draw: st.DataObject) -> None:
    path = draw.draw(st.sampled_from(leaves(data))) if leaves(data) else None
    if path is None:
        data = {"kafka": {"batch_size": 1}}
        path = ("kafka", "batch_size")
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = wrong_value(path, node[path[-1]])
    expect_error(data, dotted(path))


@FAST
@given(configs(), st.data(), st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True))
def test_an_unknown_key_is_named(data: dict[str, Any], draw: st.DataObject, key: str) -> None:
    tables: list[tuple[str, ...]] = [()] + [(s,) for s in ("kafka", "delays", "defaults") if s in data]
    tables += [("retry", n) for n in data.get("retry", {})] + [("queues", n) for n in data["queues"]]
    table = draw.draw(st.sampled_from(tables))
    schema = config.config_schema()
    schema_table = table[:1] if table[:1] == ("retry",) else table
    allowed = {(): schema["properties"], ("kafka",): schema["$defs"]["kafka"]["properties"],
               ("delays",): schema["$defs"]["delays"]["properties"],
               ("retry",): schema["$defs"]["retryPolicy"]["properties"]}.get(schema_table,
                                                                             schema["$defs"]["queueKeys"]["properties"])
    if key in allowed:
        key = f"{key}_x9"
    node = data
    for part in table:
        node = node[part]
    node[key] = 1
    expect_error(data, dotted((*table, key)))


@FAST
@given(configs(), st.data())
def test_a_missing_handler_is_named(data: dict[str, Any], draw: st.DataObject) -> None:
    data["queues"] = data["queues"] or {"q": {}}
    name = draw.draw(st.sampled_from(sorted(data["queues"])))
    for table in (data["queues"][name], data.get("defaults", {})):
        table.pop("handler", None)
        table.pop("jobs", None)
    expect_error(data, dotted(("queues", name, "handler")))


@FAST
@given(configs(), st.data())
def test_tiers_out_of_order_are_named(data: dict[str, Any], draw: st.DataObject) -> None:
    good = draw.draw(tiers().filter(lambda t: len(t) >= 2))
    i = draw.draw(st.integers(0, len(good) - 2))
    if draw.draw(st.booleans()):
        good[i], good[i + 1] = good[i + 1], good[i]
    else:
        good[i + 1] = good[i]
    data["delays"] = {"tiers": good}
    expect_error(data, f"delays.tiers[{i + 1}]")


@FAST
@given(configs(min_queues=1), st.data())
def test_an_unknown_retry_policy_is_named(data: dict[str, Any], draw: st.DataObject) -> None:
    name = draw.draw(st.sampled_from(sorted(data["queues"])))
    data["queues"][name]["retry"] = "no-such-policy"
    expect_error(data, dotted(("queues", name, "retry")))


# ---------------------------------------------------------------- garbage in


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True), st.dates(),
                    st.text(max_size=6), st.sampled_from(["1s", "5m", "a:b", "none", "key", "default"]))
KEYS = st.one_of(st.sampled_from(["kafka", "delays", "tiers", "retry", "default", "defaults", "queues", "q",
                                  "handler", "jobs", "ordering", "key", "brokers", "producer", "backoff",
                                  "base", "max", "retention", "sasl.password", "schema"]), st.text(max_size=5))
TREES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
                     max_leaves=12)


@FAST
@given(st.dictionaries(KEYS, TREES, max_size=5),
       st.dictionaries(st.sampled_from(["PROTOJOBS_KAFKA__BROKERS", "PROTOJOBS_QUEUES__Q__HANDLER",
                                        "PROTOJOBS_DELAYS__TIERS", "PROTOJOBS_RETRY__DEFAULT__BACKOFF",
                                        "PROTOJOBS_X__Y", "PROTOJOBS_KAFKA__PRODUCER__ACKS"]),
                       st.text(max_size=8), max_size=3))
def test_any_tree_either_loads_or_raises_config_error(data: dict[str, Any], env: dict[str, str]) -> None:
    try:
        loaded = config.from_dict(data, NOWHERE, env=env, import_handlers=False)
    except ConfigError as exc:
        assert exc.issues and all(issue.path and issue.message for issue in exc.issues)
    else:
        assert loaded.queues


@FAST
@given(st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode),
                 st.sampled_from(['[kafka]\nbrokers = "a:1"\n', "[queues.q]\nhandler = 'a:b'\n", "[delays]\n"])
                 .flatmap(lambda head: st.text(max_size=30).map(lambda tail: (head + tail).encode()))))
def test_any_file_content_either_loads_or_raises_config_error(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.toml"
        path.write_bytes(content)
        try:
            config.load(path, env={}, import_handlers=False)
        except ConfigError as exc:
            assert exc.issues


TOML_SCALARS = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
                         st.text(max_size=8))
TOML_TABLES = st.recursive(
    st.dictionaries(st.text(max_size=6), TOML_SCALARS | st.lists(TOML_SCALARS, max_size=3), max_size=4),
    lambda inner: st.dictionaries(st.text(max_size=6), inner | TOML_SCALARS, max_size=3), max_leaves=10)


@FAST
@given(TOML_TABLES)
def test_to_toml_round_trips_through_tomllib(tree: dict[str, Any]) -> None:
    assert tomllib.loads(config.to_toml(tree)) == tree
