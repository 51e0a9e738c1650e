"""Pidfiles of the processes protojobs.local starts (Kafka nodes, toxiproxy), and who started them.

A pidfile holds the pid only (`kafka.pid`: "12345"), so any tool can read it. Beside it,
`<pidfile>.owner` (JSON) records
- the process's start time: a pid the OS has since given to another process is never signalled;
- its owner: $PROTOJOBS_OWNER of the process that started it. The pytest plugin sets it to its
  session, `<pid>:<start time>:<project dir>` (`Owner`), so a test session stops only what it
  started, or what a killed earlier session of the same project left behind.
Each long-running child is started in its own process group (session), so stopping one stops
everything it spawned.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from protojobs.observe.process import parent_pid, pid_alive, start_time

OWNER_ENV = "PROTOJOBS_OWNER"

# Popen objects of the long-running children we started: kept so they are reaped with poll()
# (and not garbage-collected while running, which Python reports as a ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def track(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    _CHILDREN[proc.pid] = proc
    return proc


@dataclass(frozen=True)
class Owner:
    """A process that starts brokers (a pytest session), named so that it can be told apart from
    a later process with the same pid, and the project (directory) it runs for."""

    pid: int
    start: str
    project: str

    @classmethod
    def current(cls, project: str | Path) -> Owner:
        return cls(os.getpid(), start_time(os.getpid()) or "", str(project))

    @classmethod
    def parse(cls, token: str) -> Owner | None:
        pid, _, rest = token.partition(":")
        start, _, project = rest.partition(":")
        if not pid.isdigit() or not project:
            return None
        return cls(int(pid), start, project)

    def token(self) -> str:
        return f"{self.pid}:{self.start}:{self.project}"

    def alive(self) -> bool:
        return pid_alive(self.pid) and (start_time(self.pid) or "") == self.start


def _meta_path(pidfile: Path) -> Path:
    return pidfile.with_name(pidfile.name + ".owner")


def write_pidfile(pidfile: Path, pid: int) -> None:
    """Record `pid`, its start time and its owner ($PROTOJOBS_OWNER, empty when unset)."""
    pidfile.write_text(str(pid))
    meta = {"pid": pid, "start": start_time(pid), "owner": os.environ.get(OWNER_ENV, "")}
    _meta_path(pidfile).write_text(json.dumps(meta))


def _meta(pidfile: Path) -> dict[str, object]:
    try:
        meta = json.loads(_meta_path(pidfile).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _read_pid(pidfile: Path) -> int | None:
    """The pid of `pidfile`, or None when there is none, or when the process it names has ended
    and the OS gave its pid to another process (the recorded start time differs)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    meta = _meta(pidfile)
    if meta.get("pid") == pid and meta.get("start"):
        now = start_time(pid)
        if now is not None and now != meta["start"]:
            return None
    return pid


def pidfile_owner(pidfile: Path) -> Owner | None:
    """Who started the process of `pidfile` (None: unrecorded, or started outside a session)."""
    owner = _meta(pidfile).get("owner")
    return Owner.parse(owner) if isinstance(owner, str) else None


def started_by(pidfile: Path, owner: Owner) -> bool:
    """True when `owner` started the process of `pidfile`: its pidfile says so, or it is a child
    of `owner` (a pidfile without owner, written by a test's own helper)."""
    if pidfile_owner(pidfile) == owner:
        return True
    pid = _read_pid(pidfile)
    return pid is not None and pid_alive(pid) and parent_pid(pid) == owner.pid and owner.alive()


def left_behind(pidfile: Path, project: str) -> bool:
    """True when a session of `project` started the process of `pidfile` and is gone (killed)."""
    owner = pidfile_owner(pidfile)
    return owner is not None and owner.project == project and not owner.alive()


def stop_pidfiles(pidfiles: Iterable[Path], timeout: float = 15.0) -> list[int]:
    """Terminate the process group named by each pidfile; return the pids that were alive."""
    pidfiles = list(pidfiles)
    pids = []
    for pidfile in pidfiles:
        pid = _read_pid(pidfile)
        if pid is not None and pid_alive(pid):
            pids.append(pid)
            _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        if not _wait_dead(pid, max(0.0, deadline - time.monotonic())):
            _signal_group(pid, signal.SIGKILL)
            _wait_dead(pid, 5)
        _CHILDREN.pop(pid, None)
    for pidfile in pidfiles:
        pidfile.unlink(missing_ok=True)
        _meta_path(pidfile).unlink(missing_ok=True)
    return pids


def all_pidfiles(roots: Sequence[Path]) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*.pid")]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_dead(pid: int, timeout: float) -> bool:
    """Wait for `pid` to end. Our own children are reaped with wait(): a JVM's main thread shows
    as a zombie in /proc while its other threads still run, so /proc alone says "dead" too early."""
    child = _CHILDREN.get(pid)
    if child is not None:
        try:
            child.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
