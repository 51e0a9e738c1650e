"""The pytest plugin stops only processes it started (protojobs.testing.plugin, "Whose processes").

An inner pytest session runs a small project in a temporary directory, with a state directory
that already holds pidfiles of `sleep` processes started by others: a killed earlier session of
the same project, a live session of the same project, a session of another project, a pidfile
without owner, and a pidfile whose pid was reused by another process. No Kafka: the inner test
uses the `toxiproxy_server` fixture, the first process every broker fixture starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protojobs.local.pidfiles import OWNER_ENV, Owner, write_pidfile
from protojobs.observe.process import pid_alive

INNER_PORT_BASE = int(os.environ.get("PROTOJOBS_TEST_PORT_BASE", "29100")) + 550  # toxiproxy: +300

INNER_CONFTEST = '''
import json, os, subprocess, sys
from pathlib import Path

from protojobs.local.pidfiles import write_pidfile


def started(state: Path) -> dict:
    """Two processes of this session that it does not stop itself: a child with a bare pidfile
    (as chaos/harness.py writes them) and a grandchild whose pidfile records this session."""
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (state / "own-child").mkdir(parents=True)
    (state / "own-child" / "x.pid").write_text(str(child.pid))
    out = subprocess.run(["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    grandchild = int(out.stdout)
    (state / "own-grandchild").mkdir(parents=True)
    write_pidfile(state / "own-grandchild" / "x.pid", grandchild)
    return {"child": child.pid, "grandchild": grandchild}
'''

INNER_TESTS = {
    "test_none.py": "def test_uses_no_fixture():\n    pass\n",
    "test_fixtures.py": '''
import json, os
from pathlib import Path

from conftest import started


def test_uses_toxiproxy(protojobs_toxiproxy_server):
    state = Path(os.environ["PROTOJOBS_TEST_STATE"])
    pids = started(state) | {"toxiproxy": int(protojobs_toxiproxy_server.pidfile.read_text())}
    Path(os.environ["INNER_REPORT"]).write_text(json.dumps(pids))
''',
}


class Others:
    """`sleep` processes of others, each with a pidfile under the inner session's state dir."""

    def __init__(self, state: Path, project: Path) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        dead_session = Owner(os.getpid(), "0", str(project))  # start time 0: a session long gone
        live_session = Owner.current(project)  # this process: alive
        other_project = Owner(os.getpid(), "0", str(project.parent / "another-project"))
        for name, owner in [("killed-session", dead_session), ("live-session", live_session),
                            ("other-project", other_project), ("no-owner", None), ("reused-pid", None)]:
            proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
            self.procs[name] = proc
            pidfile = state / name / "x.pid"
            pidfile.parent.mkdir(parents=True)
            if owner is None:
                pidfile.write_text(str(proc.pid))
            else:
                os.environ[OWNER_ENV], saved = owner.token(), os.environ.get(OWNER_ENV, "")
                try:
                    write_pidfile(pidfile, proc.pid)
                finally:
                    os.environ[OWNER_ENV] = saved
        # a pidfile of the killed session whose pid the OS has since given to another process
        reused = state / "reused-pid" / "x.pid"
        reused.with_name("x.pid.owner").write_text(json.dumps(
            {"pid": self.procs["reused-pid"].pid, "start": "1", "owner": dead_session.token()}))

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(10)


@pytest.fixture
def inner(tmp_path: Path) -> Iterator[tuple[Path, Path, Others]]:
    project, state = (tmp_path / "project").resolve(), (tmp_path / "state").resolve()
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "conftest.py").write_text(INNER_CONFTEST)
    for name, text in INNER_TESTS.items():
        (project / name).write_text(text)
    others = Others(state, project)
    try:
        yield project, state, others
    finally:
        others.stop()


def run_inner(project: Path, state: Path, test_file: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PROTOJOBS_TEST_STATE=str(state), PROTOJOBS_TEST_PORT_BASE=str(INNER_PORT_BASE),
               INNER_REPORT=str(project / "report.json"))
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                          cwd=project, env=env, capture_output=True, text=True, timeout=90)


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_session_without_fixtures_signals_nothing(inner: tuple[Path, Path, Others]) -> None:
    project, state, others = inner
    done = run_inner(project, state, "test_none.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(others.alive().values()), others.alive()


def test_a_session_stops_its_own_and_a_killed_sessions_processes_only(inner: tuple[Path, Path, Others]) -> None:
    project, state, others = inner
    done = run_inner(project, state, "test_fixtures.py")
    assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + 10
    while others.alive()["killed-session"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert others.alive() == {"killed-session": False, "live-session": True, "other-project": True,
                              "no-owner": True, "reused-pid": True}
    own = json.loads((project / "report.json").read_text())
    assert {name: gone(pid) for name, pid in own.items()} == {"child": True, "grandchild": True, "toxiproxy": True}
    assert not (state / "own-child" / "x.pid").exists() and not (state / "own-grandchild" / "x.pid").exists()
    assert (state / "live-session" / "x.pid").exists() and (state / "no-owner" / "x.pid").exists()
