"""Facts about a local process by pid, from the OS (stdlib only).

The one definition of these helpers: the health endpoint (`protojobs.observe.health`), the local
Kafka tooling (`protojobs.local`) and the benchmarks all use it.
"""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while `pid` names a running process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


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
