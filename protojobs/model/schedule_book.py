"""The `{prefix}schedules` topic's records (compacted), folded into a `Book`. Pure: no I/O.

- `state/<name>` -> {"last_tick": ms}: written by the leader in the transaction that fires
  (`"baseline": true` when it is the first sight of a schedule, not a fired tick);
- `def/<id>` -> a dynamic schedule's definition (Jobs.schedule_*), tombstone = removed;
- `ctl/<name>` -> {"paused": bool, "at": ms}: `protojobs schedules pause|resume`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protojobs.model.schedules import Schedule

STATE, DEF, CTL = "state/", "def/", "ctl/"


@dataclass
class Control:
    paused: bool
    at_ms: int


@dataclass
class Book:
    """The schedules topic folded: last ticks, dynamic definitions, pause/resume controls.
    Records at an offset below `position` are ignored, so two overlapping reads are harmless."""

    last: dict[str, int] = field(default_factory=dict)
    defs: dict[str, Schedule] = field(default_factory=dict)
    controls: dict[str, Control] = field(default_factory=dict)
    baseline: set[str] = field(default_factory=set)  # last_tick is a first sight, nothing fired yet
    position: int = 0

    def apply(self, key: bytes | None, value: bytes | None, offset: int = -1) -> bool:
        """Fold one record in; False (nothing changed but the position) for a malformed one."""
        if offset >= 0:
            if offset < self.position:
                return True
            self.position = offset + 1
        if not key:
            return True
        text = key.decode("utf-8", "replace")
        try:
            body = json.loads(value) if value else None
        except (ValueError, RecursionError):
            return False
        try:
            self._apply(text, body)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            return False
        return True

    def _apply(self, text: str, body: Any) -> None:
        if body is not None and not isinstance(body, dict):
            raise TypeError("a schedules record is a JSON object")
        if text.startswith(STATE):
            name = text[len(STATE):]
            tick = None if body is None else int(body["last_tick"])  # first: a malformed record changes nothing
            self.baseline.discard(name)
            if tick is None or body is None:
                self.last.pop(name, None)
            else:
                self.last[name] = max(tick, self.last.get(name, tick))
                if body.get("baseline"):
                    self.baseline.add(name)
        elif text.startswith(DEF):
            name = text[len(DEF):]
            if body is None:
                self.defs.pop(name, None)
            else:
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    self.defs[name] = Schedule.from_def(body)
        elif text.startswith(CTL):
            name = text[len(CTL):]
            if body is None:
                self.controls.pop(name, None)
            else:
                self.controls[name] = Control(bool(body.get("paused")), int(body.get("at", 0)))

    def schedules(self, config: Mapping[str, Schedule]) -> dict[str, Schedule]:
        """jobs.toml's schedules and the dynamic ones (jobs.toml wins on a name clash)."""
        return {**self.defs, **config}

    def paused(self, sched: Schedule) -> bool:
        ctl = self.controls.get(sched.name)
        return sched.paused or (ctl is not None and ctl.paused)

    def floor(self, name: str) -> int | None:
        """Ticks at or before this (the last resume) are never fired."""
        ctl = self.controls.get(name)
        return ctl.at_ms if ctl is not None and not ctl.paused else None


def state_record(name: str, last_tick: int | None, baseline: bool = False) -> tuple[bytes, bytes | None]:
    """`baseline`: the first sight of a schedule (ticks count from then on), not a fired tick."""
    if last_tick is None:
        return f"{STATE}{name}".encode(), None
    body: dict[str, Any] = {"last_tick": last_tick, **({"baseline": True} if baseline else {})}
    return f"{STATE}{name}".encode(), json.dumps(body).encode()


def def_record(sched: Schedule | str) -> tuple[bytes, bytes | None]:
    if isinstance(sched, str):
        return f"{DEF}{sched}".encode(), None
    return f"{DEF}{sched.name}".encode(), json.dumps(sched.to_def()).encode()


def control_record(name: str, paused: bool | None, at_ms: int) -> tuple[bytes, bytes | None]:
    if paused is None:
        return f"{CTL}{name}".encode(), None
    return f"{CTL}{name}".encode(), json.dumps({"paused": paused, "at": at_ms}).encode()
