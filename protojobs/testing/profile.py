"""The client timeout profile for tests and chaos, set in this one place.

librdkafka's defaults (message.timeout 300 s, session.timeout 45 s, max.poll.interval 300 s,
transaction.timeout 60 s) make every black-hole or kill test take minutes. These values make a
fault visible in seconds while staying above the broker's group.min.session.timeout.ms (6 s).
"""

from __future__ import annotations

PRODUCER = {
    "message.timeout.ms": 15000,
    "request.timeout.ms": 5000,
    "transaction.timeout.ms": 20000,
    "socket.connection.setup.timeout.ms": 5000,
    "reconnect.backoff.max.ms": 1000,
}

CONSUMER = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1500,
    "max.poll.interval.ms": 10000,
    "socket.connection.setup.timeout.ms": 5000,
    "reconnect.backoff.max.ms": 1000,
}


def producer(bootstrap: str, **extra: object) -> dict[str, object]:
    return {"bootstrap.servers": bootstrap, **PRODUCER, **extra}


def consumer(bootstrap: str, group: str, **extra: object) -> dict[str, object]:
    return {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, **CONSUMER, **extra}
