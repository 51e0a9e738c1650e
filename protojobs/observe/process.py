"""Facts about a local process by pid, from the OS (stdlib only; /proc on Linux).

The one definition of these helpers: the health endpoint (`protojobs.observe.health`), the local
Kafka tooling (`protojobs.local`) and the benchmarks all use it.
"""

from __future__ import annotations

import os


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """True while `pid` names a running process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)  # a zombie child counts as dead
    return fields is not None and len(fields) > 0 and fields[0] != "Z"


def start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot), or None: with the pid, it names one process
    for good, whereas the OS reuses a pid once its process is gone."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def parent_pid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields and len(fields) > 1 else None


def rss_of(pid: int) -> int:
    """Resident set size of `pid` in bytes (0 when unknown or gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
