"""The dead-letter record: a failed job (or the raw value that did not decode) and why it
failed, as one JSON object in UTF-8 that any Kafka tool can read. Pure: no I/O.

v1: `v`, `envelope` (the job's envelope object, or null), `raw` (the record value as text when
it was not an envelope, or null), `error` {`type`, `message`, `traceback`}, `attempts`,
`first_failed_at` (or null), `failed_at` (UTC epoch ms), `origin` {`topic`, `partition`,
`offset`; -1 = unknown}, `host`, `reason`; `truncated` (true, only when set): the record was
cut to fit its size limit (`raw` keeps its head; the envelope keeps its metadata and its `data`
becomes the head of the payload's JSON text with a marker, so the job cannot be replayed as is).
A decoding problem is an EnvelopeError saying why.

Size: `dead_letter_record` always returns a value within `limit` bytes (the producer's
`message.max.bytes` less the key and headers), cutting in this order: the payload, the raw
text, the error texts. `shrink` makes a smaller copy of a record a topic refused.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protojobs.model.envelope import (
    Envelope,
    EnvelopeError,
    decode,
    dumps,
    from_dict,
    get_field,
    int_field,
    loads,
    str_field,
    to_dict,
)

# Bytes of UTF-8 kept of a traceback (its tail) and of an error message (its head).
TEXT_LIMIT = 8192
RAW_LIMIT = 65536  # bytes of UTF-8 kept of a raw (undecodable) record value: its head
MAX_RECORD = 1_000_000  # librdkafka's default message.max.bytes


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A decoded dead-letter record: the original job (or its raw text) and why it failed."""

    envelope: Envelope | None
    raw: str | None
    error_type: str
    error_message: str
    traceback: str
    attempts: int
    first_failed_at: int | None
    failed_at: int
    topic: str
    partition: int
    offset: int
    host: str
    reason: str
    truncated: bool = False


SMALL_COPY = 16_384  # bytes of the cut-down copy sent when a topic refused the first dead-letter copy


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "replace")  # lone surrogates become '?'


def bound_text(text: str, limit: int = TEXT_LIMIT, *, keep: str = "head") -> str:
    """`text` if its UTF-8 fits in `limit` bytes, else its first (`keep="head"`) or last
    (`keep="tail"`) bytes plus a marker saying how long it was; never over `limit` bytes."""
    raw = _utf8(text)
    if len(raw) <= limit:
        return raw.decode("utf-8")
    marker = f"[... {len(raw)} bytes, {'tail' if keep == 'head' else 'head'} cut ...]"
    room = limit - len(_utf8(marker)) - 1
    if keep == "head":
        return raw[:room].decode("utf-8", "ignore") + " " + marker
    return marker + "\n" + raw[len(raw) - room :].decode("utf-8", "ignore")


def dead_letter_record(
    original: Envelope | bytes | None, *, error_type: str, error_message: str, traceback: str,
    attempts: int, first_failed_at: int | None, failed_at: int, topic: str, partition: int,
    offset: int, host: str, reason: str, limit: int = MAX_RECORD,
) -> bytes:  # fmt: skip
    """The value of a dead-letter record (a JSON object any Kafka tool can read), at most
    `limit` bytes (see the module's Size); never raises.

    `original` is the failed job's envelope, or the raw record value when it did not decode
    (raw bytes that do decode are stored as an envelope). The raw value is kept as text, with
    U+FFFD for bytes that are not UTF-8, its first `RAW_LIMIT` bytes; partition and offset -1
    mean unknown. The traceback keeps its last `TEXT_LIMIT` bytes and the error message its
    first, so a record stays small.
    """
    env: Envelope | None
    raw: str | None = None
    if isinstance(original, Envelope) or original is None:
        env = original
    else:
        try:
            env = decode(original)
        except Exception:  # noqa: BLE001 - EnvelopeError, or anything else: keep it as text
            env, raw = None, bytes(original).decode("utf-8", "replace")
    error = {
        "type": bound_text(error_type, 1024),
        "message": bound_text(error_message),
        "traceback": bound_text(traceback, keep="tail"),
    }
    record: dict[str, Any] = {
        "v": 1, "envelope": to_dict(env) if env is not None else None, "raw": raw,
        "error": error, "attempts": attempts, "first_failed_at": first_failed_at,
        "failed_at": failed_at, "origin": {"topic": topic, "partition": partition, "offset": offset},
        "host": bound_text(host, 1024), "reason": bound_text(reason, 1024),
    }  # fmt: skip
    if raw is not None and len(_utf8(raw)) > RAW_LIMIT:
        record["raw"], record["truncated"] = bound_text(raw, RAW_LIMIT), True
    return _fit(record, limit)


def shrink(value: bytes, limit: int) -> bytes | None:
    """A copy of dead-letter record `value` within `limit` bytes (payload, raw text and error
    texts cut as needed); None if `value` is not a dead-letter record or cannot get that small."""
    try:
        record = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    try:
        out = _fit(record, limit)
    except EnvelopeError:  # not one of ours (NaN...)
        return None
    return out if len(out) <= limit else None


def _fit(record: dict[str, Any], limit: int) -> bytes:
    """`record` as JSON within `limit` bytes if it can be: as is, else with its body (the
    envelope's payload, or the raw text) cut, then also with its error texts cut (`truncated`
    set). Returns the smallest it got."""
    try:
        value = dumps(record)
        if len(value) <= limit:
            return value
    except EnvelopeError:  # a payload too deep to encode: cut below
        pass
    record = {**record, "truncated": True}
    put: Callable[[str], None] | None = None
    env = record.get("envelope")
    if isinstance(env, dict) and "data" in env:
        env = record["envelope"] = dict(env)
        try:
            text = dumps(env["data"]).decode("utf-8")
        except EnvelopeError as exc:
            text = f"[payload not encodable as JSON: {exc}]"
        put = functools.partial(env.__setitem__, "data")
    elif isinstance(record.get("raw"), str):
        text = record["raw"]
        put = functools.partial(record.__setitem__, "raw")
    for cut_errors in (False, True):
        if cut_errors and isinstance(record.get("error"), dict):
            record["error"] = {k: bound_text(v, 256, keep="tail" if k == "traceback" else "head")
                               if isinstance(v, str) else v for k, v in record["error"].items()}
        if put is None:
            value = dumps(record)
            if len(value) <= limit:
                return value
            continue
        fitted = _fit_text(record, put, text, limit)
        if fitted is not None:
            return fitted
        put(_cut_marker(text))
    return dumps(record)


def _cut_marker(text: str) -> str:
    return f"[... {len(_utf8(text))} bytes cut ...]"


def _fit_text(record: dict[str, Any], put: Callable[[str], None], text: str, limit: int) -> bytes | None:
    """Put the longest head of `text` that keeps `record` within `limit` (JSON escaping makes
    text longer: the room is scaled by the growth measured); None if not even 64 bytes fit."""
    put("")
    base = len(dumps(record))
    room = avail = limit - base
    for _ in range(8):
        if room < 64:
            return None
        put(bound_text(text, room))
        value = dumps(record)
        if len(value) <= limit:
            return value
        room = room * avail // max(1, len(value) - base) - 16
    return None


def _text(obj: dict[str, Any], name: str, where: str) -> str:
    value = get_field(obj, name, where)
    if value is None or type(value) is str:
        return value or ""
    raise EnvelopeError(f"{where}field {name!r} must be a string, not {value!r}")


def _obj(obj: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = get_field(obj, name, where)
    if not isinstance(value, dict):
        raise EnvelopeError(f"{where}field {name!r} must be an object, not {value!r}")
    return value


def decode_dead_letter(value: bytes | bytearray | memoryview | None) -> DeadLetterRecord:
    """The dead-letter record in a record value; EnvelopeError (with the reason) if not one."""
    obj = loads(value, "dead-letter record")
    where = "dead-letter record: "
    if int_field(obj, "v", where) > 1:
        raise EnvelopeError(f"{where}version {obj['v']} is newer than this protojobs reads (1)")
    original = get_field(obj, "envelope", where)
    env = None if original is None else from_dict(original, f"{where}envelope: ")
    error, origin = _obj(obj, "error", where), _obj(obj, "origin", where)
    first = get_field(obj, "first_failed_at", where)
    return DeadLetterRecord(
        envelope=env,
        raw=str_field(obj, "raw", where, nullable=True),
        error_type=_text(error, "type", f"{where}error: "),
        error_message=_text(error, "message", f"{where}error: "),
        traceback=_text(error, "traceback", f"{where}error: "),
        attempts=int_field(obj, "attempts", where),
        first_failed_at=None if first is None else int_field(obj, "first_failed_at", where),
        failed_at=int_field(obj, "failed_at", where),
        topic=_text(origin, "topic", f"{where}origin: "),
        partition=int_field(origin, "partition", f"{where}origin: ", -1),
        offset=int_field(origin, "offset", f"{where}origin: ", -1),
        host=_text(obj, "host", where),
        reason=_text(obj, "reason", where),
        truncated=obj.get("truncated") is True,
    )
