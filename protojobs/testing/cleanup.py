"""Kill every broker and toxiproxy process whose pidfile lies under the given folders.

`make test` runs this from a shell `trap`, so no JVM outlives a test run, even one that pytest
did not get to tear down (a killed run, a hard timeout).
Usage: python -m protojobs.testing.cleanup [DIR ...]   (default: ./.protojobs)
"""

from __future__ import annotations

import sys
from pathlib import Path

from protojobs.local.cluster import all_pidfiles, stop_pidfiles


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path(".protojobs")]
    killed = stop_pidfiles(all_pidfiles(roots), timeout=10)
    if killed:
        print(f"cleanup: stopped {len(killed)} leftover process group(s): {killed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
