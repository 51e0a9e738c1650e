"""The click command line: each command's own options, global options before or after the verb,
completion scripts, --json output, `run --burst` and `dispatch --file -` against a real broker,
and every `protojobs ...` line of the README resolving to a real command."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import engine_jobs
import pytest
from conftest import read_jsonl, settings_tree, wait_for, write_config

from protojobs import config
from protojobs.cli import main
from protojobs.cli.main import cli
from protojobs.engine.dispatch import Dispatcher
from protojobs.kafka import admin
from protojobs.model import names
from protojobs.ops.stats import stats_data
from protojobs.testing import Cluster

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
OPTION = re.compile(r"^\s+(?:-\w, )?(--[\w-]+)")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def commands(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command and group under `command` (itself included), with its words."""
    found = [(path, command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            found += commands(sub, (*path, name))
    return found


# --- parsing and help (no broker) --------------------------------------------------------------


def test_each_help_lists_only_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    tree = commands(cli)
    assert len(tree) > 25
    for path, command in tree:
        code, out, _ = run_cli(capsys, *path, "--help")
        assert code == 0, path
        listed = {m.group(1) for line in out.splitlines() if (m := OPTION.match(line))}
        own = {opt for p in command.params if isinstance(p, click.Option) and not p.hidden
               for opt in p.opts if opt.startswith("--")}
        assert listed == own | {"--help"}, (path, listed ^ (own | {"--help"}))
    code, out, _ = run_cli(capsys, "dlq", "--help")
    assert not {"--yes", "--all", "--limit", "--dry-run"} & set(re.findall(r"--[\w-]+", out))
    code, out, _ = run_cli(capsys, "dlq", "purge", "--help")
    assert "--yes" in out and "--limit" not in out and "--dry-run" not in out


def test_an_option_of_another_action_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "dlq", "list", "--yes")
    assert code == 2 and "No such option" in err and "--yes" in err


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert run_cli(capsys, "--version")[1] == f"protojobs {version('protojobs')}\n"


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F"), ("zsh", "#compdef protojobs"),
                                           ("fish", "complete --no-files --command protojobs")])
def test_completion_scripts(shell: str, marker: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "completion", shell)
    assert code == 0 and marker in out and "_PROTOJOBS_COMPLETE" in out


def test_completion_completes_commands_and_options() -> None:
    def complete(words: str) -> list[str]:
        env = dict(os.environ, _PROTOJOBS_COMPLETE="bash_complete", COMP_WORDS=words,
                   COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)))
        done = subprocess.run([sys.executable, "-m", "protojobs.cli"], env=env, capture_output=True, text=True,
                              timeout=60)
        return [line.split(",", 1)[1] for line in done.stdout.splitlines()]

    assert complete("protojobs dl") == ["dlq"]
    assert set(complete("protojobs dlq ")) == {"list", "show", "replay", "purge"}
    assert "--max-replays" in complete("protojobs dlq replay --m")


@pytest.fixture
def offline_config(tmp_path: Path) -> Path:
    """A valid jobs.toml naming an unreachable broker (commands that need no broker)."""
    tree = settings_tree("127.0.0.1:1", "offline-", {"reports": {"handler": "engine_jobs:record"}},
                         schedules={"nightly": {"queue": "reports", "cron": "0 3 * * *", "data": {}}})
    return write_config(tmp_path / "jobs.toml", tree)


def test_global_options_before_or_after_the_verb(offline_config: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path / "..")  # no jobs.toml here: without --config the commands fail
    monkeypatch.delenv("PROTOJOBS_CONFIG", raising=False)
    path = str(offline_config)
    assert run_cli(capsys, "retry-plan")[0] == 1
    assert run_cli(capsys, "--config", path, "retry-plan")[0] == 0
    assert run_cli(capsys, "retry-plan", "--config", path)[0] == 0
    assert run_cli(capsys, "--config", "missing.toml", "retry-plan", "--config", path)[0] == 0  # nearest wins
    assert run_cli(capsys, "--config", path, "schedules", "next", "nightly", "--count", "2")[0] == 0
    before = run_cli(capsys, "--json", "--config", path, "schedules", "next", "nightly", "--count", "2")
    after = run_cli(capsys, "schedules", "next", "nightly", "--count", "2", "--config", path, "--json")
    middle = run_cli(capsys, "schedules", "--json", "next", "nightly", "--config", path, "--count", "2")
    assert before == after == middle and before[0] == 0
    assert len(json.loads(before[1])["next"]) == 2
    monkeypatch.setenv("PROTOJOBS_CONFIG", path)
    assert run_cli(capsys, "retry-plan")[0] == 0


def test_config_show_and_validate(offline_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(offline_config)
    code, out, _ = run_cli(capsys, "config", "show", "--json", "--config", path)
    assert code == 0 and json.loads(out)["queues"]["reports"]["handler"] == "engine_jobs:record"
    assert run_cli(capsys, "--json", "config", "show", "--config", path)[1] == out
    code, out, _ = run_cli(capsys, "config", "show", "--config", path)
    assert code == 0 and "[queues.reports]" in out
    code, out, _ = run_cli(capsys, "config", "validate", "--no-import", "--config", path)
    assert code == 0 and "valid (1 queue" in out


def test_run_refuses_bad_concurrency_and_placement(offline_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(offline_config)
    assert run_cli(capsys, "run", "--config", path, "--concurrency", "0")[0] == 2
    assert run_cli(capsys, "run", "--config", path, "--concurrency", "x")[0] == 2
    assert run_cli(capsys, "run", "--config", path, "--no-router", "--router-only")[0] == 2
    code, _, err = run_cli(capsys, "run", "--config", path, "--concurrency", "nosuch=2")
    assert code == 1 and "nosuch" in err
    assert run_cli(capsys, "run", "--config", path, "--log-level", "LOUD")[0] == 2


def test_with_concurrency_overrides_queues(offline_config: Path) -> None:
    from protojobs.cli.run import with_concurrency

    settings = config.load(offline_config, import_handlers=False)
    assert settings.queues["reports"].concurrency == 4
    assert with_concurrency(settings, {"*": 9}).queues["reports"].concurrency == 9
    assert with_concurrency(settings, {"*": 9, "reports": 2}).queues["reports"].concurrency == 2


# --- README ------------------------------------------------------------------------------------


COMMAND_LINE = re.compile(r"(?:^(?:\$ )?(?:[A-Z_][A-Z0-9_]*=\S+\s+)*|[|;&]\s*|\$\()(?:\S*/)?protojobs\b([^|;&)>#]*)")


def readme_command_lines() -> list[str]:
    """Every `protojobs ...` command in the README's sh code blocks: at the start of a line
    (after `$ ` and NAME=value words), after a pipe, `;`, `&&` or in `$(...)`; comments and
    redirections cut off."""
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```(?:sh|shell|bash|console)\n(.*?)```", text, re.S):
        for line in block.splitlines():
            lines += [shlex.join(shlex.split(m.group(1))) for m in COMMAND_LINE.finditer(line.strip())]
    return lines


def resolve(argv: list[str]) -> click.Command:
    """The command `argv` names, its options and arguments parsed by click (nothing runs)."""
    assert argv, "no command"
    ctx = cli.make_context("protojobs", list(argv))
    command: click.Command = cli
    args = [*ctx._protected_args, *ctx.args] if hasattr(ctx, "_protected_args") else [*ctx.protected_args, *ctx.args]
    while isinstance(command, click.Group) and args:
        name, found, rest = command.resolve_command(ctx, args)
        assert found is not None and name is not None
        assert rest or not isinstance(found, click.Group), f"{argv}: a group, not a command"
        ctx = found.make_context(name, rest, parent=ctx)
        command = found
        args = ([*ctx._protected_args, *ctx.args] if hasattr(ctx, "_protected_args")
                else [*ctx.protected_args, *ctx.args]) if isinstance(found, click.Group) else []
    assert not isinstance(command, click.Group), f"{argv}: a group, not a command"
    return command


def test_every_readme_command_line_is_a_real_command() -> None:
    lines = readme_command_lines()
    assert len(lines) > 30
    for line in lines:
        try:
            resolve(shlex.split(line))
        except click.exceptions.Exit:
            pass  # --help, --version
        except click.ClickException as err:
            raise AssertionError(f"README: `protojobs {line}`: {err.format_message()}") from None


def test_the_readme_check_catches_a_wrong_line() -> None:
    for wrong in (["dlq", "list", "--yes"], ["stats", "extra"], ["schedules", "frobnicate"], ["dlq"]):
        with pytest.raises((click.ClickException, AssertionError)):
            resolve(wrong)


# --- against a real broker ---------------------------------------------------------------------


@pytest.fixture
def project(kafka: Cluster, fresh_prefix: str, tmp_path: Path) -> tuple[config.Settings, Path]:
    tree = settings_tree(kafka.bootstrap, fresh_prefix, {"work": {"handler": "engine_jobs:record", "retry": "default"},
                                                         "other": {"handler": "engine_jobs:record"}})
    path = write_config(tmp_path / "jobs.toml", tree)
    return config.from_dict(tree, ROOT), path


def cli_process(*argv: str, record: Path | None = None, **kwargs: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    if record is not None:
        env["PROTOJOBS_TEST_RECORD"] = str(record)
    return subprocess.Popen([sys.executable, "-m", "protojobs.cli", *argv], env=env, text=True, **kwargs)


def test_dispatch_streams_stdin_and_run_burst_drains(project: tuple[config.Settings, Path], tmp_path: Path,
                                                      kafka: Cluster) -> None:
    settings, path = project
    client = admin.client(settings)
    topic = names.queue_topic(settings.kafka.topic_prefix, "work")
    proc = cli_process("dispatch", "work", "--file", "-", "--config", str(path), "--progress",
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        proc.stdin.write("".join(json.dumps({"n": n}) + "\n" for n in range(3)))
        proc.stdin.flush()

        def sent() -> int:
            try:
                return sum(high for _, high in admin.watermarks(client, topic).values())
            except Exception:  # noqa: BLE001 - the topic is created by the dispatcher
                return 0

        # streamed: the first lines are on the broker while stdin is still open
        wait_for(lambda: sent() == 3, timeout=60, what="the first three lines dispatched before EOF")
        rest = "not json\n\n" + "".join(json.dumps({"n": n}) + "\n" for n in range(3, 10))
        out, err = proc.communicate(rest, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err  # one line was bad
    assert len(set(out.split())) == len(out.split()) == 10
    assert "<stdin>:4: not JSON" in err
    assert "dispatched 10 of 11 jobs (1 failed) from <stdin>" in err
    assert "jobs/s" in err  # --progress drew the bar

    # the other queue gets a job dispatched before the worker starts: its burst waits for it too
    assert main.main(["dispatch", "other", '{"n": 100}', "--config", str(path)]) == 0
    record = tmp_path / "runs.jsonl"
    worker = cli_process("run", "--burst", "--concurrency", "2", "--log-level", "warning", "--no-scheduler",
                         "--config", str(path), record=record, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = worker.communicate(timeout=180)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, output
    assert {r["n"] for r in read_jsonl(record)} == {*range(10), 100}  # every job queued at start ran
    data = stats_data(settings)
    assert data["queues"]["work"]["depth"] == 0 and data["queues"]["other"]["depth"] == 0, data
    assert " INFO " not in output  # --log-level warning


def test_json_output_parses(project: tuple[config.Settings, Path], capsys: pytest.CaptureFixture[str]) -> None:
    settings, path = project
    assert run_cli(capsys, "topics", "apply", "--config", str(path))[0] == 0
    for argv in (["stats"], ["dlq", "list"], ["schedules", "list"], ["topics", "plan"], ["config", "show"]):
        code, out, err = run_cli(capsys, *argv, "--config", str(path), "--json")
        assert code == 0, (argv, err)
        json.loads(out)
    code, out, _ = run_cli(capsys, "--json", "stats", "--config", str(path))
    assert set(json.loads(out)["queues"]) == {"work", "other"}
    assert json.loads(run_cli(capsys, "--json", "topics", "plan", "--config", str(path))[1]) == \
        {"changes": [], "applied": None}
    code, out, _ = run_cli(capsys, "health", "--json", "--url", "http://127.0.0.1:1", "--timeout", "1")
    assert code == 1 and json.loads(out)["ok"] is False


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_burst_worker_stops_once_drained(delivery: str, make_settings, start_worker) -> None:
    settings = make_settings({"work": {"handler": "engine_jobs:record", "delivery": delivery, "partitions": 2}})
    dispatcher = Dispatcher(settings)
    tag = f"burst-{delivery}"
    assert dispatcher.dispatch_many("work", [{"n": f"{tag}-{i}"} for i in range(20)]).ok
    dispatcher.close()
    running = start_worker(settings, burst=True)
    running.thread.join(120)
    assert not running.thread.is_alive(), "the burst worker did not stop"
    assert running.error is None
    assert {r["n"] for r in engine_jobs.RUNS if str(r["n"]).startswith(tag)} == {f"{tag}-{i}" for i in range(20)}
    assert stats_data(settings)["queues"]["work"]["depth"] == 0
