"""The dead-letter record: a failed job (or the raw value that did not decode) and why it
failed, as one JSON object in UTF-8 that any Kafka tool can read. Pure: no I/O.

v1: `v`, `envelope` (the job's envelope object, or null), `raw` (the record value as text when
it was not an envelope, or null), `error` {`type`, `message`, `traceback`}, `attempts`,
`first_failed_at` (or null), `failed_at` (UTC epoch ms), `origin` {`topic`, `partition`,
`offset`; -1 = unknown}, `host`, `reason`. A decoding problem is an EnvelopeError saying why.
"""

from __future__ import annotations

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
    offset: int, host: str, reason: str,
) -> bytes:  # fmt: skip
    """The value of a dead-letter record (a JSON object any Kafka tool can read).

    `original` is the failed job's envelope, or the raw record value when it did not decode
    (raw bytes that do decode are stored as an envelope). The raw value is kept as text, with
    U+FFFD for bytes that are not UTF-8; partition and offset -1 mean unknown. The traceback
    keeps its last `TEXT_LIMIT` bytes and the error message its first, so a record stays small.
    """
    env: Envelope | None
    raw: str | None = None
    if isinstance(original, Envelope) or original is None:
        env = original
    else:
        try:
            env = decode(original)
        except EnvelopeError:
            env, raw = None, bytes(original).decode("utf-8", "replace")
    error = {
        "type": bound_text(error_type, 1024),
        "message": bound_text(error_message),
        "traceback": bound_text(traceback, keep="tail"),
    }
    return dumps({
        "v": 1, "envelope": to_dict(env) if env is not None else None, "raw": raw,
        "error": error, "attempts": attempts, "first_failed_at": first_failed_at,
        "failed_at": failed_at, "origin": {"topic": topic, "partition": partition, "offset": offset},
        "host": host, "reason": reason,
    })  # fmt: skip


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
    )
