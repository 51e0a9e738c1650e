"""The job envelope, its headers and the dead-letter record."""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protojobs.model import dead_letter as D
from protojobs.model import envelope as E
from protojobs.model.envelope import Envelope, EnvelopeError, replace

SETTINGS = settings(max_examples=150, deadline=None)
NOW = 1_760_000_000_000
ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False)
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
names = st.text(min_size=1, max_size=30)
times = st.integers(0, 2**48 - 1)
envelopes = st.builds(
    Envelope,
    v=st.just(1),
    id=names,
    queue=names,
    job=names,
    data=json_values,
    attempt=st.integers(1, 1000),
    dispatched_at=times,
    available_at=times,
    key=st.none() | st.text(max_size=30),
    replays=st.integers(0, 100),
    trace=st.none() | st.text(max_size=60),
    first_failed_at=st.none() | times,
)


def sample(**changes: Any) -> Envelope:
    env = E.new_envelope(
        "emails", "app.jobs:send_email", {"to": "a@example.com", "n": 1}, now_ms=NOW,
        available_at=NOW + 5000, key="a@example.com", id="job-1",
    )  # fmt: skip
    return replace(env, **changes)


def sample_dict(**changes: Any) -> dict[str, Any]:
    obj = E.to_dict(sample())
    obj.update(changes)
    return obj


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# --- ids ------------------------------------------------------------------------------------


def test_new_id_is_a_26_character_crockford_ulid() -> None:
    for _ in range(200):
        assert ULID.match(E.new_id(NOW))


def test_new_id_encodes_the_time_in_its_first_10_characters() -> None:
    ms = NOW
    prefix = E.new_id(ms)[:10]
    value = 0
    for char in prefix:
        value = value * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(char)
    assert value == ms


@given(times, times)
@SETTINGS
def test_new_id_sorts_by_time(a: int, b: int) -> None:
    first, second = E.new_id(a), E.new_id(b)
    if a < b:
        assert first < second
    elif a > b:
        assert first > second
    else:
        assert first[:10] == second[:10]


def test_new_id_is_unique_within_one_millisecond() -> None:
    ids = {E.new_id(NOW) for _ in range(20_000)}
    assert len(ids) == 20_000


def test_new_id_random_part_uses_every_character_in_every_position() -> None:
    ids = [E.new_id(NOW + ms) for ms in range(3000)]  # 80 new random bits per millisecond
    for position in range(10, 26):
        assert len({i[position] for i in ids}) == 32, position


def test_new_ids_of_one_thread_in_one_millisecond_count_up_in_creation_order() -> None:
    ids = [E.new_id(NOW + 7) for _ in range(5000)]
    prefixes = {i[:22] for i in ids}
    assert len(prefixes) <= 2  # a counter that ran out draws new random bits once
    if len(prefixes) == 1:
        assert ids == sorted(ids)


def test_new_ids_of_other_threads_and_forked_children_draw_their_own_random_bits() -> None:
    mine = E.new_id(NOW + 11)
    theirs: list[str] = []
    thread = threading.Thread(target=lambda: theirs.append(E.new_id(NOW + 11)))
    thread.start()
    thread.join()
    assert theirs[0][:10] == mine[:10] and theirs[0][10:22] != mine[10:22]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: an id of the same millisecond, to the parent through the pipe
        os.write(write, E.new_id(NOW + 11).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child[:10] == mine[:10] and child[10:22] != mine[10:22]


def test_new_id_rejects_times_outside_48_bits() -> None:
    with pytest.raises(ValueError, match="48 bits"):
        E.new_id(2**48)
    with pytest.raises(ValueError, match="48 bits"):
        E.new_id(-1)


# --- encode / decode ------------------------------------------------------------------------


@given(envelopes)
@SETTINGS
def test_roundtrip(env: Envelope) -> None:
    value = E.encode(env)
    assert E.decode(value) == env
    assert json.loads(value.decode("utf-8"))["v"] == 1  # any JSON tool reads it


def test_encoding_is_compact_utf8_json_with_routing_fields_first() -> None:
    env = sample(data={"name": "Zoë ✓"})
    value = E.encode(env)
    assert b": " not in value and b", " not in value
    assert "Zoë ✓".encode() in value  # readable, not \\u-escaped
    keys = list(json.loads(value))
    assert keys[:8] == [
        "v",
        "id",
        "queue",
        "job",
        "attempt",
        "dispatched_at",
        "available_at",
        "key",
    ]
    assert keys[-1] == "data"


def test_optional_fields_are_written_only_when_set() -> None:
    plain = json.loads(E.encode(sample()))
    assert not {"replays", "trace", "first_failed_at"} & set(plain)
    full = json.loads(E.encode(sample(replays=2, trace="00-ab-cd-01", first_failed_at=NOW)))
    assert (full["replays"], full["trace"], full["first_failed_at"]) == (2, "00-ab-cd-01", NOW)


@pytest.mark.parametrize(
    "data", [float("nan"), {1, 2}, object(), {"x": float("inf")}],
    ids=["nan", "set", "object", "inf"],
)  # fmt: skip
def test_encode_rejects_data_that_is_not_plain_json(data: Any) -> None:
    with pytest.raises(EnvelopeError, match="not encodable"):
        E.encode(sample(data=data))


def test_lone_surrogates_are_escaped_and_round_trip() -> None:
    """Valid JSON from a JavaScript producer ("\\ud800") decodes to a lone surrogate, which has
    no UTF-8 form: encoding escapes it, so copies of such a job never fail to encode."""
    env = sample(data={"s": "a\ud800b", "\udcff": "é"}, id="id-\ud800", key="k\udc00")
    value = E.encode(env)
    assert b"\\ud800" in value and "é".encode() in value
    assert E.decode(value) == env
    assert dict(E.headers(env))["pj-id"] == b"id-\\ud800"


def test_decode_ignores_unknown_fields() -> None:
    assert E.decode(raw(sample_dict(extra={"future": True}))) == sample()


def test_decode_fills_optional_fields() -> None:
    obj = sample_dict()
    for name in ("replays", "trace", "first_failed_at"):
        obj.pop(name, None)
    env = E.decode(raw(obj))
    assert (env.replays, env.trace, env.first_failed_at) == (0, None, None)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "no value"),
        (b"", "not JSON"),
        (b"\xff\xfe{}", "not JSON in UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (b'"text"', "JSON str"),
        (b"null", "JSON NoneType"),
        (b'{"v": NaN}', "NaN is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b'{"a": 1} trailing', "not JSON"),
    ],
)
def test_decode_rejects_garbage_with_a_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=re.escape(reason)):
        E.decode(value)


@given(st.binary(max_size=200))
@SETTINGS
def test_decode_of_arbitrary_bytes_raises_only_envelope_error(value: bytes) -> None:
    try:
        env = E.decode(value)
    except EnvelopeError:
        return
    assert isinstance(env, Envelope)  # pragma: no cover - random bytes are never an envelope


@pytest.mark.parametrize("name", ["id", "queue", "job", "data", "attempt", "dispatched_at",
                                  "available_at", "key"])  # fmt: skip
def test_decode_names_a_missing_field(name: str) -> None:
    obj = sample_dict()
    del obj[name]
    with pytest.raises(EnvelopeError, match=f"missing field '{name}'"):
        E.decode(raw(obj))


@pytest.mark.parametrize(
    ("name", "value"),
    [("id", ""), ("id", 7), ("queue", None), ("job", ["x"]), ("attempt", 0), ("attempt", "1"),
     ("attempt", True), ("attempt", 1.0), ("dispatched_at", -1), ("available_at", "soon"),
     ("key", 5), ("replays", -1), ("replays", None), ("trace", 3), ("first_failed_at", "x"),
     ("v", "1"), ("v", -1), ("v", True)],
)  # fmt: skip
def test_decode_names_an_ill_typed_field(name: str, value: Any) -> None:
    with pytest.raises(EnvelopeError, match=f"field '{name}'"):
        E.decode(raw(sample_dict(**{name: value})))


def test_decode_rejects_a_newer_version() -> None:
    with pytest.raises(EnvelopeError, match="version 2 is newer"):
        E.decode(raw(sample_dict(v=2)))


def test_decode_accepts_memoryview_and_bytearray() -> None:
    value = E.encode(sample())
    assert E.decode(memoryview(value)) == E.decode(bytearray(value)) == sample()


# --- older versions -------------------------------------------------------------------------


def v0_dict(attempts: int, **extra: Any) -> dict[str, Any]:
    obj = sample_dict()
    del obj["v"], obj["attempt"]
    obj["attempts"] = attempts
    obj.update(extra)
    return obj


@pytest.mark.parametrize(("attempts", "attempt"), [(0, 1), (1, 2), (4, 5)])
def test_v0_attempts_made_becomes_the_current_attempt(attempts: int, attempt: int) -> None:
    env = E.decode(raw(v0_dict(attempts)))
    assert env == sample(attempt=attempt)
    assert env.v == 1


def test_v0_with_an_explicit_version_zero_decodes_too() -> None:
    assert E.decode(raw(v0_dict(2, v=0))).attempt == 3


def test_v0_upgrade_reencodes_as_the_current_version() -> None:
    env = E.decode(raw(v0_dict(0)))
    again = json.loads(E.encode(env))
    assert again["v"] == E.VERSION and again["attempt"] == 1 and "attempts" not in again


@pytest.mark.parametrize("attempts", [None, -1, "0", True])
def test_v0_with_bad_attempts_is_rejected(attempts: Any) -> None:
    obj = v0_dict(0)
    obj["attempts"] = attempts
    with pytest.raises(EnvelopeError, match="v0: field 'attempts'"):
        E.decode(raw(obj))
    del obj["attempts"]
    with pytest.raises(EnvelopeError, match="v0: missing field 'attempts'"):
        E.decode(raw(obj))


def test_v0_input_dict_is_not_modified() -> None:
    obj = v0_dict(1)
    E.from_dict(obj)
    assert obj == v0_dict(1)


# --- building -------------------------------------------------------------------------------


def test_new_envelope_defaults() -> None:
    env = E.new_envelope("q", "job", {"a": 1}, now_ms=NOW)
    assert (env.v, env.attempt, env.dispatched_at, env.available_at, env.key) == (
        1,
        1,
        NOW,
        NOW,
        None,
    )
    assert ULID.match(env.id) and env.id[:10] == E.new_id(NOW)[:10]
    assert E.new_envelope("q", "job", {}, now_ms=NOW, id="mine").id == "mine"


def test_with_attempt_keeps_the_job_and_the_first_failure_time() -> None:
    env = sample()
    second = E.with_attempt(env, 2, NOW + 1000, failed_at=NOW + 10)
    third = E.with_attempt(second, 3, NOW + 5000, failed_at=NOW + 2000)
    assert (third.attempt, third.available_at, third.first_failed_at) == (3, NOW + 5000, NOW + 10)
    assert replace(third, attempt=1, available_at=env.available_at, first_failed_at=None) == env
    assert E.with_attempt(env, 2, NOW).first_failed_at is None


def test_for_replay_restarts_the_job_and_counts_replays() -> None:
    failed = E.with_attempt(sample(replays=1), 5, NOW, failed_at=NOW)
    again = E.for_replay(failed, NOW + 99)
    assert (again.attempt, again.available_at, again.replays) == (1, NOW + 99, 2)
    assert again.dispatched_at == NOW + 99  # a replay is a new dispatch: a clear before it keeps it
    assert again.first_failed_at is None and again.id == failed.id and again.data == failed.data


# --- headers --------------------------------------------------------------------------------


def test_headers_repeat_the_routing_fields() -> None:
    env = sample(attempt=3, trace="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    hdrs = E.headers(env, "sha256:abc")
    assert dict(hdrs) == {
        "pj-id": b"job-1", "pj-queue": b"emails", "pj-attempt": b"3",
        "pj-available-at": str(NOW + 5000).encode(), "pj-dispatched-at": str(NOW).encode(),
        "pj-schema": b"sha256:abc",
        "traceparent": env.trace.encode(),  # type: ignore[union-attr]
    }  # fmt: skip
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in hdrs)


def test_headers_leave_out_schema_and_traceparent_when_absent() -> None:
    assert [k for k, _ in E.headers(sample())] == [
        "pj-id",
        "pj-queue",
        "pj-attempt",
        "pj-available-at",
        "pj-dispatched-at",
    ]


@given(envelopes, st.none() | st.text(max_size=20))
@SETTINGS
def test_header_value_reads_back_what_headers_wrote(env: Envelope, schema: str | None) -> None:
    hdrs = E.headers(env, schema)
    assert E.header_value(hdrs, E.H_ID) == env.id
    assert E.header_value(hdrs, E.H_QUEUE) == env.queue
    assert int(E.header_value(hdrs, E.H_ATTEMPT) or "") == env.attempt
    assert int(E.header_value(hdrs, E.H_AVAILABLE_AT) or "") == env.available_at
    assert E.header_value(hdrs, E.H_SCHEMA) == schema
    assert E.header_value(hdrs, E.H_TRACEPARENT) == env.trace


def test_header_value_edge_cases() -> None:
    assert E.header_value(None, "pj-id") is None
    assert E.header_value([], "pj-id") is None
    assert E.header_value([("pj-id", None)], "pj-id") is None
    assert E.header_value([("pj-id", b"a"), ("pj-id", b"b")], "pj-id") == "b"
    assert E.header_value([("pj-id", "text")], "pj-id") == "text"
    assert E.header_value([("pj-id", b"\xff")], "pj-id") == "\ufffd"
    assert E.header_value([("PJ-ID", b"a")], "pj-id") is None


# --- dead-letter record ---------------------------------------------------------------------

FAILURE: dict[str, Any] = dict(
    error_type="builtins.ValueError", error_message="bad address", traceback="Traceback...\n",
    attempts=5, first_failed_at=NOW, failed_at=NOW + 60_000, topic="my-app-jobs-emails",
    partition=2, offset=1234, host="worker-1", reason="attempts exhausted",
)  # fmt: skip


def test_dead_letter_record_keeps_the_envelope_and_the_failure() -> None:
    env = sample(attempt=5)
    value = D.dead_letter_record(env, **FAILURE)
    obj = json.loads(value)
    assert set(obj) == {"v", "envelope", "raw", "error", "attempts", "first_failed_at",
                        "failed_at", "origin", "host", "reason"}  # fmt: skip
    assert obj["envelope"] == E.to_dict(env) and obj["raw"] is None
    assert obj["envelope"]["data"] == {"to": "a@example.com", "n": 1}  # not double-encoded
    assert obj["error"] == {"type": "builtins.ValueError", "message": "bad address",
                            "traceback": "Traceback...\n"}  # fmt: skip
    assert obj["origin"] == {"topic": "my-app-jobs-emails", "partition": 2, "offset": 1234}
    dead = D.decode_dead_letter(value)
    assert dead == D.DeadLetterRecord(envelope=env, raw=None, **FAILURE)


def test_dead_letter_record_of_an_undecodable_value_keeps_it_as_text() -> None:
    value = b'{"half": "json \xff'
    dead = D.decode_dead_letter(D.dead_letter_record(value, **FAILURE))
    assert dead.envelope is None
    assert dead.raw == '{"half": "json \ufffd'


def test_dead_letter_record_of_raw_bytes_that_decode_stores_the_envelope() -> None:
    dead = D.decode_dead_letter(D.dead_letter_record(E.encode(sample()), **FAILURE))
    assert dead.envelope == sample() and dead.raw is None


def test_dead_letter_record_of_a_missing_value() -> None:
    dead = D.decode_dead_letter(D.dead_letter_record(None, **FAILURE))
    assert dead.envelope is None and dead.raw is None


def test_dead_letter_traceback_is_bounded_keeping_its_tail() -> None:
    tb = "".join(f"  File 'x.py', line {i}\n" for i in range(2000)) + "ValueError: the end"
    dead = D.decode_dead_letter(D.dead_letter_record(sample(), **{**FAILURE, "traceback": tb}))
    assert len(dead.traceback.encode()) <= 8192 < len(tb.encode())
    assert dead.traceback.endswith("ValueError: the end")
    assert f"{len(tb.encode())} bytes" in dead.traceback


def test_dead_letter_message_is_bounded_keeping_its_head() -> None:
    message = "START " + "x" * 50_000
    dead = D.decode_dead_letter(
        D.dead_letter_record(sample(), **{**FAILURE, "error_message": message})
    )
    assert dead.error_message.startswith("START ") and len(dead.error_message.encode()) <= 8192


@given(st.text(max_size=3000), st.integers(64, 2000), st.sampled_from(["head", "tail"]))
@SETTINGS
def test_bound_text_never_exceeds_the_limit(text: str, limit: int, keep: str) -> None:
    bounded = D.bound_text(text, limit, keep=keep)
    assert len(bounded.encode()) <= limit
    if len(text.encode()) <= limit:
        assert bounded == text
    else:
        kept = bounded.split("...]", 1)[1][1:] if keep == "tail" else bounded.rsplit(" [...", 1)[0]
        assert text.endswith(kept) if keep == "tail" else text.startswith(kept)
        assert len(kept.encode()) >= limit - 64  # nearly all the room is used


def test_dead_letter_text_with_lone_surrogates_is_still_encodable() -> None:
    value = D.dead_letter_record(sample(), **{**FAILURE, "error_message": "bad \udcff byte"})
    assert D.decode_dead_letter(value).error_message == "bad ? byte"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": 2}, "newer"),
        ({"attempts": "5"}, "field 'attempts'"),
        ({"error": "boom"}, "field 'error' must be an object"),
        ({"origin": {"topic": "t", "partition": 0}}, "origin: missing field 'offset'"),
        ({"envelope": {"v": 1}}, "envelope: missing field"),
        ({"envelope": {"v": 9}}, "envelope: envelope version 9"),
        ({"raw": 5}, "field 'raw'"),
        ({"failed_at": None}, "field 'failed_at'"),
    ],
)
def test_decode_dead_letter_rejects_malformed_records(change: dict[str, Any], reason: str) -> None:
    obj = json.loads(D.dead_letter_record(sample(), **FAILURE))
    obj.update(change)
    with pytest.raises(EnvelopeError, match=re.escape(reason)):
        D.decode_dead_letter(raw(obj))
    with pytest.raises(EnvelopeError, match="dead-letter record"):
        D.decode_dead_letter(b"[]")


def _nested(depth: int) -> Any:
    out: Any = 0
    for _ in range(depth):
        out = [out]
    return out


@pytest.mark.parametrize("limit", [4_000, 20_000, 200_000])
@pytest.mark.parametrize(
    "original",
    [b"\x00\xff" * 150_000, sample(data={"blob": "x" * 300_000}), sample(data={"q": '"' * 100_000}),
     sample(data=_nested(5000)), sample(data={"s": "\ud800" * 50_000})],
    ids=["raw-900k-as-json", "big-payload", "escaped-payload", "too-deep", "lone-surrogates"],
)  # fmt: skip
def test_dead_letter_record_always_fits_its_limit(original: Any, limit: int) -> None:
    value = D.dead_letter_record(original, **{**FAILURE, "traceback": "t" * 20_000}, limit=limit)
    dead = D.decode_dead_letter(value)
    assert len(value) <= limit and dead.truncated
    if isinstance(original, Envelope):  # the metadata stays; the payload is its cut JSON text
        assert dead.envelope is not None and dead.envelope.id == original.id
        assert isinstance(dead.envelope.data, str)
        assert "cut" in dead.envelope.data or dead.envelope.data.startswith("[payload not encodable")
    else:
        assert dead.raw is not None and dead.raw.startswith("\x00\ufffd")


def test_dead_letter_record_that_fits_is_not_cut() -> None:
    dead = D.decode_dead_letter(D.dead_letter_record(sample(), **FAILURE, limit=10_000))
    assert not dead.truncated and dead.envelope == sample()


def test_shrink_cuts_a_dead_letter_record_down() -> None:
    value = D.dead_letter_record(sample(data={"blob": "y" * 50_000}), **FAILURE)
    small = D.shrink(value, 4096)
    assert small is not None and len(small) <= 4096
    dead = D.decode_dead_letter(small)
    assert dead.truncated and dead.envelope is not None and dead.envelope.id == "job-1"
    assert D.shrink(b"not json", 4096) is None


def test_dead_letter_unknown_origin_is_minus_one() -> None:
    value = D.dead_letter_record(b"\x00", **{**FAILURE, "partition": -1, "offset": -1})
    dead = D.decode_dead_letter(value)
    assert (dead.partition, dead.offset, dead.raw) == (-1, -1, "\x00")


# --- the compiled codec against the records written before it --------------------------------

# Record values exactly as protojobs wrote them with the stdlib json codec (before msgspec):
# each must decode, through the compiled path or the stdlib one, to the same envelope.
RECORDED = [
    (b'{"v":1,"id":"01K6ZR5Q8W4B7N2M3P5R7T9VXY","queue":"emails","job":"app.jobs:send_email","attempt":3,'
     b'"dispatched_at":1760000000000,"available_at":1760000005000,"key":"a@example.com","replays":2,'
     b'"trace":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","first_failed_at":1760000001000,'
     b'"data":{"to":"a@example.com","n":1,"tiny":1e-07,"big":1e+16,"huge":123456789012345678901234567890,'
     b'"text":"\xc3\xa9 \xe2\x9c\x93 \\ud800 \\u0000"}}',
     dict(v=1, id="01K6ZR5Q8W4B7N2M3P5R7T9VXY", queue="emails", job="app.jobs:send_email", attempt=3,
          dispatched_at=1760000000000, available_at=1760000005000, key="a@example.com", replays=2,
          trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", first_failed_at=1760000001000,
          data={"to": "a@example.com", "n": 1, "tiny": 1e-07, "big": 1e16, "huge": 123456789012345678901234567890,
                "text": "\u00e9 \u2713 \ud800 \u0000"})),
    (b'{"v":1,"id":"01K6ZR5Q8W4B7N2M3P5R7T9VXZ","queue":"jobs","job":"noop","attempt":1,'
     b'"dispatched_at":1760000000000,"available_at":1760000000000,"key":null,"data":[1,2.5,null,true,"x"]}',
     dict(v=1, id="01K6ZR5Q8W4B7N2M3P5R7T9VXZ", queue="jobs", job="noop", attempt=1, dispatched_at=1760000000000,
          available_at=1760000000000, key=None, data=[1, 2.5, None, True, "x"])),
    (b'{"id": "job-0", "queue": "jobs", "job": "noop", "attempts": 0, "dispatched_at": 5, "available_at": 6, '
     b'"key": "k", "data": {"a": 1e400}}',  # v0 (no "v"), spaced, a number beyond a double (inf)
     dict(v=1, id="job-0", queue="jobs", job="noop", attempt=1, dispatched_at=5, available_at=6, key="k",
          data={"a": float("inf")})),
]


@pytest.mark.parametrize("value, fields", RECORDED, ids=["v1-full", "v1-minimal", "v0"])
def test_records_written_before_the_compiled_codec_still_decode(value: bytes, fields: dict[str, Any]) -> None:
    assert E.decode(value) == Envelope(**fields)
    assert E.decode(value) == E.from_dict(E.loads(value, "job envelope"))


@SETTINGS
@given(envelopes)
def test_compiled_and_stdlib_codecs_agree(env: Envelope) -> None:
    old = E.dumps(E.to_dict(env))  # what the stdlib codec writes
    new = E.encode(env)
    assert json.loads(new) == json.loads(old)  # the same JSON document (floats may be spelled otherwise)
    assert E.decode(old) == E.decode(new) == E.from_dict(E.loads(old, "job envelope")) == env


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_compiled_encode_still_refuses_non_finite_numbers_anywhere(value: float) -> None:
    for data in (value, [1, value], {"a": {"b": [value]}}):
        with pytest.raises(EnvelopeError, match="not encodable"):
            E.encode(sample(data=data))


def test_compiled_encode_writes_no_types_json_lacks() -> None:
    import datetime
    import uuid

    for data in (datetime.datetime(2026, 1, 1), uuid.UUID(int=1), b"bytes", frozenset({1}), {"a": {1, 2}}):
        with pytest.raises(EnvelopeError, match="not encodable"):
            E.encode(sample(data=data))
    assert json.loads(E.encode(sample(data={"t": (1, 2), 3: "int key"})))["data"] == {"t": [1, 2], "3": "int key"}

