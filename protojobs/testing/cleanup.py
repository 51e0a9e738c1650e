"""Kill the broker and toxiproxy processes whose pidfiles lie under the given folders.

`make test` runs this from a shell `trap`, once pytest has ended, so no JVM outlives a test run,
even one that pytest did not get to tear down (a killed run, a hard timeout). A process whose
pidfile names a pytest session that is still running (`protojobs.local.pidfiles`) is left to it.
Usage: python -m protojobs.testing.cleanup [DIR ...]   (default: ./.protojobs)
"""

from __future__ import annotations

import sys
from pathlib import Path

from protojobs.local.pidfiles import all_pidfiles, pidfile_owner, stop_pidfiles


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path(".protojobs")]
    pidfiles = [p for p in all_pidfiles(roots) if not ((owner := pidfile_owner(p)) and owner.alive())]
    killed = stop_pidfiles(pidfiles, timeout=10)
    if killed:
        print(f"cleanup: stopped {len(killed)} leftover process group(s): {killed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
