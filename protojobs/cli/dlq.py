"""`protojobs dlq list | show | replay | purge`: print what protojobs.ops.dlq found or did.

Exit codes: 0 success, 1 failure (invalid config, unreachable cluster, a failed replay, an
unknown job id), 2 usage (a bad --since, replay without a filter, purge without --yes).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

import click
from confluent_kafka import KafkaException

from protojobs import config
from protojobs.cli import base
from protojobs.cli.common import load, parse_since
from protojobs.kafka import admin
from protojobs.kafka.clients import ClientError
from protojobs.ops import dlq
from protojobs.ops.dlq import Entry, ReplayReport, iso
from protojobs.ops.errors import UnknownQueue


def line(e: Entry) -> str:
    """One line of `dlq list`: id, queue, error type, attempts, replays, failed_at, reason."""
    if e.dead is None:
        return f"{e.job_id or '-'}  {e.queue or '-'}  (undecodable at {e.where}: {e.problem})"
    ident = e.job_id or f"raw@{e.where}"
    return (f"{ident}  {e.queue or '-'}  {e.error_type}  attempts={e.dead.attempts}  replays={e.replays}  "
            f"{iso(e.failed_at)}  {e.dead.reason}")


def _row(e: Entry) -> tuple[object, ...]:
    if e.dead is None:
        return (e.job_id, e.queue, "(undecodable)", None, None, None, f"at {e.where}: {e.problem}")
    return (e.job_id or f"raw@{e.where}", e.queue, e.error_type, e.dead.attempts, e.replays, iso(e.failed_at),
            e.dead.reason)


def _command(name: str, path: str | None, act: Callable[[config.Settings], int]) -> int:
    """Load the config (1 if invalid) and run `act`; a failure to reach the cluster exits 1."""
    settings = load(path)
    if settings is None:
        return 1
    try:
        return act(settings)
    except (dlq.DlqError, admin.AdminError, ClientError, KafkaException) as err:
        print(f"dlq {name}: {err}", file=sys.stderr)
        return 1


def _since(name: str, since: str | None) -> tuple[int | None, bool]:
    """(--since as epoch ms or None, ok); prints the problem when not ok."""
    try:
        return (None if since is None else parse_since(since)), True
    except ValueError as err:
        print(f"dlq {name}: {err}", file=sys.stderr)
        return None, False


def list_command(path: str | None, queue: str | None, error: str | None, since: str | None,
                 limit: int | None, as_json: bool) -> int:
    """`dlq list`: one line per dead-letter record, oldest first (`--limit N`: the N newest)."""
    since_ms, ok = _since("list", since)
    if not ok:
        return 2

    def act(settings: config.Settings) -> int:
        if queue is not None and queue not in settings.queues:
            print(f"dlq list: note: queue {queue!r} is not in jobs.toml", file=sys.stderr)
        entries = dlq.read(settings, queue=queue, error=error, since_ms=since_ms, limit=limit)
        if as_json:
            print(json.dumps([dlq.to_json(e, full=False) for e in entries], indent=2, ensure_ascii=False))
            return 0
        if base.tty():
            base.print_table(("ID", "QUEUE", "ERROR", "ATTEMPTS", "REPLAYS", "FAILED AT", "REASON"),
                             [_row(e) for e in entries])
        else:
            for e in entries:
                print(line(e))
        print(f"{len(entries)} dead-lettered job(s)", file=sys.stderr)
        return 0

    return _command("list", path, act)


def show_command(path: str | None, job_id: str) -> int:
    """`dlq show ID`: the newest dead-letter record of the job as JSON; 1 if there is none."""

    def act(settings: config.Settings) -> int:
        found = dlq.read(settings, ids=[job_id])
        if not found:
            print(f"dlq show: no dead-lettered job has id {job_id!r}", file=sys.stderr)
            return 1
        print(json.dumps(dlq.to_json(found[-1]), indent=2, ensure_ascii=False))
        if len(found) > 1:
            older = ", ".join(e.where for e in found[:-1])
            print(f"dlq show: {len(found) - 1} older record(s) of this job: {older}", file=sys.stderr)
        return 0

    return _command("show", path, act)


def replay_command(path: str | None, queue: str | None, ids: Sequence[str], error: str | None,
                   since: str | None, everything: bool, dry_run: bool, max_replays: int) -> int:
    """`dlq replay`: 0 when nothing failed and every `--id` was found, else 1 (2: usage)."""
    if not (queue or ids or error or since or everything):
        print("dlq replay: say which jobs: --queue, --id, --error, --since, or --all", file=sys.stderr)
        return 2
    since_ms, ok = _since("replay", since)
    if not ok:
        return 2

    def act(settings: config.Settings) -> int:
        report = dlq.replay_matching(settings, queue=queue, error=error, since_ms=since_ms, ids=ids,
                                     max_replays=max_replays, dry_run=dry_run)
        _print_replay(report, dry_run)
        return 1 if report.failed or report.not_found else 0

    return _command("replay", path, act)


def _print_replay(report: ReplayReport, dry_run: bool) -> None:
    verb = "would replay" if dry_run else "replayed"
    for e in report.replayed:
        print(f"{verb} {e.job_id} to queue {e.queue} (replay {e.replays + 1})")
    for label, items in (("skipped", report.skipped), ("not replayable", report.unreplayable),
                         ("failed", report.failed)):
        for e, why in items:
            print(f"{label} {e.job_id or e.where}: {why}")
    for job_id in report.not_found:
        print(f"not found {job_id}: no dead-lettered job has this id", file=sys.stderr)
    print(f"{'dry run: ' if dry_run else ''}{verb} {len(report.replayed)}, skipped {len(report.skipped)}, "
          f"not replayable {len(report.unreplayable)}, failed {len(report.failed)}")


def purge_command(path: str | None, queue: str | None, yes: bool) -> int:
    """`dlq purge`: delete dead-letter records (every topic, or a queue's own); 2 without --yes."""

    def act(settings: config.Settings) -> int:
        try:
            targets = dlq.purge_targets(settings, queue)
        except UnknownQueue as err:
            print(f"dlq purge: {err}", file=sys.stderr)
            return 1
        except dlq.SharedTopic as err:
            print(f"dlq purge: {err}", file=sys.stderr)
            return 2
        client = admin.client(settings)
        for topic in targets:
            if yes:
                print(f"purged {dlq.purge(client, topic)} record(s) from {topic}")
            else:
                print(f"dlq purge: would delete {dlq.record_count(client, topic)} record(s) of {topic}",
                      file=sys.stderr)
        if not yes:
            print("dlq purge: nothing deleted; add --yes to do it", file=sys.stderr)
        return 0 if yes else 2

    return _command("purge", path, act)


@base.group("dlq")
def dlq_group() -> None:
    """Inspect, replay and purge dead-lettered jobs."""


_queue = click.option("--queue", help="only jobs of this queue")
_error = click.option("--error", help="only jobs that failed with this error type (exact class name)")
_since_opt = click.option("--since", help="only jobs that failed since: a duration (1h: the last hour) or a time")


@base.command("list", parent=dlq_group, json=True)
@_queue
@_error
@_since_opt
@click.option("--limit", type=base.COUNT, help="only the N most recent")
def list_cmd(queue: str | None, error: str | None, since: str | None, limit: int | None) -> int:
    """One line per dead-letter record, oldest first (a table on a terminal; --json for scripts)."""
    return list_command(base.config_path(), queue, error, since, limit, base.as_json())


@base.command("show", parent=dlq_group, json=True)
@click.argument("job_id")
def show_cmd(job_id: str) -> int:
    """The newest dead-letter record of JOB_ID as JSON (exit 1 if there is none)."""
    return show_command(base.config_path(), job_id)


@base.command("replay", parent=dlq_group)
@_queue
@click.option("--id", "ids", multiple=True, help="replay this job id (repeatable)")
@_error
@_since_opt
@click.option("--all", "everything", is_flag=True, help="every dead-lettered job")
@click.option("--dry-run", is_flag=True, help="show what would be replayed, send nothing")
@click.option("--max-replays", type=base.COUNT, default=3, show_default=True,
              help="skip jobs already replayed this many times")
def replay_cmd(queue: str | None, ids: tuple[str, ...], error: str | None, since: str | None, everything: bool,
               dry_run: bool, max_replays: int) -> int:
    """Send dead-lettered jobs back to their queue (say which: --queue, --id, --error, --since or --all)."""
    return replay_command(base.config_path(), queue, list(ids), error, since, everything, dry_run, max_replays)


@base.command("purge", parent=dlq_group)
@click.option("--queue", help="only this queue's own dead-letter topic")
@click.option("--yes", is_flag=True, help="really delete (without it: say how many, exit 2)")
def purge_cmd(queue: str | None, yes: bool) -> int:
    """Delete dead-letter records (every dead-letter topic, or a queue's own)."""
    return purge_command(base.config_path(), queue, yes)
