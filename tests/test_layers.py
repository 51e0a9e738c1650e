"""The import contracts of `make lint` (pyproject.toml, [tool.importlinter]) hold, and can fail.

Each failing case copies the package and pyproject.toml to a temporary directory, adds one
forbidden import there and runs `lint-imports` on the copy with the same contracts: it must exit
non-zero and name the broken contract and the import. No broker; about a second in all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` with the contracts of `cwd/pyproject.toml`, on the `protojobs` found in `cwd`."""
    env = dict(os.environ, PYTHONPATH=str(cwd), COLUMNS="200", NO_COLOR="1")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "protojobs", tmp_path / "protojobs",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_contracts_hold_on_the_tree() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_unchanged_copy_passes(copy: Path) -> None:
    """The copy is analysed as the real tree is (the failures below come from the added import)."""
    done = lint_imports(copy)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("module", "imports", "contract", "message"), [
    ("model/xyz.py", "from protojobs.engine import dispatch",
     "protojobs layers:", "protojobs.model is not allowed to import protojobs.engine"),
    ("kafka/xyz.py", "from protojobs.ops import stats",
     "protojobs layers:", "protojobs.kafka is not allowed to import protojobs.ops"),
    ("config/xyz.py", "import protojobs.cli.main",
     "protojobs layers:", "protojobs.config is not allowed to import protojobs.cli"),
    ("engine/xyz.py", "from protojobs.testing import profile",
     "protojobs.testing (the pytest plugin) is imported by no other protojobs module",
     "protojobs.engine.xyz -> protojobs.testing.profile"),
    ("observe/xyz.py", "from protojobs.local.cluster import Cluster",
     "protojobs.local (local Kafka and toxiproxy) is imported only by",
     "protojobs.observe.xyz -> protojobs.local.cluster"),
    ("model/xyz.py", "import protojobs.demo",
     "protojobs.model imports nothing else from protojobs", "protojobs.model.xyz -> protojobs.demo"),
])
def test_a_forbidden_import_fails(copy: Path, module: str, imports: str, contract: str, message: str) -> None:
    (copy / "protojobs" / module).write_text(f'"""A forbidden import (tests/test_layers.py)."""\n\n{imports}\n')
    done = lint_imports(copy)
    out = " ".join(done.stdout.split())  # rich wraps long lines
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{contract}" in out and "BROKEN" in out, done.stdout
    assert message in out, done.stdout


def test_a_stale_ignore_fails(copy: Path) -> None:
    """An `ignore_imports` entry whose import is gone fails the run: delete it then."""
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        "ignore_imports = [\n",
        'ignore_imports = [\n  "protojobs.model.names -> protojobs.engine.worker",\n', 1))
    done = lint_imports(copy)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "protojobs.model.names -> protojobs.engine.worker" in done.stdout + done.stderr
