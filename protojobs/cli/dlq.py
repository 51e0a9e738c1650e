"""`protojobs dlq list | show | replay | purge`: print what protojobs.ops.dlq found or did.

Exit codes: 0 success, 1 failure (invalid config, unreachable cluster, a failed replay, an
unknown job id), 2 usage (a bad --since, replay without a filter, purge without --yes).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaException

from protojobs import config
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
