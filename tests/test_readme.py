"""The README's code runs as written: every Python block (and the files the Quick start writes).

Blocks starting `# file: X` are files of the Quick start's project: written into a temporary
project directory (toml blocks too), and its tests are run by pytest in a child process (which
starts its own broker: the plugin's fixtures, as a user gets them). Every other Python block
is executed, in order, against this session's broker (environment overrides point the
config at it): Quick start blocks from the project directory, the others from the repository
(whose jobs.toml they use). A block starting `# readme: not standalone` is skipped; there
must stay few of them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from protojobs import Jobs

pytestmark = pytest.mark.broker
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
SKIP = "# readme: not standalone"
QUICK_START = "## Quick start in Python"


def blocks() -> list[tuple[str, str, bool]]:
    """(language, code, in the Quick start) for each python / toml block of the README."""
    text = (ROOT / "README.md").read_text()
    start = text.index(QUICK_START)
    end = text.index("\n## ", start + len(QUICK_START))
    return [(m.group(1), m.group(2), start <= m.start() < end) for m in FENCE.finditer(text)
            if m.group(1) in ("python", "toml")]


def test_few_blocks_are_exempt() -> None:
    python = [code for lang, code, _ in blocks() if lang == "python"]
    skipped = [code for code in python if code.startswith(SKIP)]
    assert len(python) >= 12 and len(skipped) <= 4


@pytest.fixture
def against_broker(protojobs_kafka, protojobs_fresh_prefix, monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("PROTOJOBS_KAFKA__BROKERS", protojobs_kafka.bootstrap)
    monkeypatch.setenv("PROTOJOBS_KAFKA__TOPIC_PREFIX", protojobs_fresh_prefix)
    monkeypatch.setenv("PROTOJOBS_KAFKA__GROUP_ID", f"{protojobs_fresh_prefix}group")
    Jobs.reset()
    yield
    Jobs.reset()
    for name in [m for m in sys.modules if m == "myapp" or m.startswith("myapp.")]:
        del sys.modules[name]


def run_block(code: str, where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(where)
    monkeypatch.syspath_prepend(str(where))
    exec(compile(code, f"README block in {where.name}", "exec"), {"__name__": "__readme__"})  # noqa: S102


def test_the_readme_python_runs(against_broker, tmp_path: Path, monkeypatch, capsys) -> None:
    project = tmp_path / "project"
    project.mkdir()
    ran = 0
    for lang, code, quick in blocks():
        first = code.splitlines()[0]
        if first.startswith("# file: "):
            target = project / first.removeprefix("# file: ").strip()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code)
        elif lang == "python" and not code.startswith(SKIP):
            run_block(code, project if quick else ROOT, monkeypatch)
            ran += 1
    assert ran >= 5
    out = capsys.readouterr().out
    assert "{'job': '" in out and "Hi there" in out


def test_the_quick_start_tests_pass(tmp_path: Path) -> None:
    project = tmp_path / "project"
    for _lang, code, quick in blocks():
        first = code.splitlines()[0]
        if quick and first.startswith("# file: "):
            target = project / first.removeprefix("# file: ").strip()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code)
    base = int(os.environ.get("PROTOJOBS_TEST_PORT_BASE", "29100")) + 500  # its own broker, beside ours
    env = {**os.environ, "PROTOJOBS_TEST_PORT_BASE": str(base), "PROTOJOBS_TEST_STATE": str(tmp_path / "state"),
           "PYTHONPATH": str(project)}
    env.pop("PROTOJOBS_OWNER", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
                           "--rootdir", str(project), "tests"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout + done.stderr
