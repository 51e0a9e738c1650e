"""`protojobs health`: ask a running `protojobs run --metrics-port` whether it is healthy."""

from __future__ import annotations

import sys

from protojobs.observe.health import probe


def health_command(url: str, ready: bool = False, timeout: float = 5.0) -> int:
    """0 and the endpoint's answer when it says healthy (or ready), else 1 with the reason."""
    answer = probe(url, ready=ready, timeout=timeout)
    if answer.ok:
        print(answer.detail)
        return 0
    print(f"unhealthy: {answer.detail}", file=sys.stderr)
    return 1
