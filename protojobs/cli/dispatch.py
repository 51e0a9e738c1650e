"""`protojobs dispatch QUEUE [PAYLOAD] | --file PATH|-`: send jobs, print their ids once acknowledged.

`--file` streams a JSON-lines file (or stdin with `-`): one job per line, read as it is sent
(memory stays bounded, `ops.dispatch_json.stream_lines`). Ids go to stdout in input order; a
line that is not JSON, fails its payload schema or is not delivered is reported on stderr as
`FILE:LINE: problem` and skipped (the others are sent); exit 1 if any line failed. On a
terminal stderr shows a progress bar (done, errors, rate; the share read for a regular file),
otherwise one summary line at the end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import click

from protojobs.cli import base
from protojobs.cli.common import load, parse_time_ms
from protojobs.engine.dispatch import Dispatcher, DispatchError
from protojobs.model.durations import delay_ms
from protojobs.ops.dispatch_json import Line, dispatch_payload, stream_lines


def dispatch(path: str | None, queue: str, payload: str | None, file: str | None, key: str | None,
             delay: str | None, at: str | None, job: str | None, job_id: str | None,
             progress: bool | None = None) -> int:
    """Print the job's id (with `file`: each job's id) once the broker acknowledged it;
    `progress` None: a progress bar when stderr is a terminal."""
    if (payload is None) == (file is None):
        print("dispatch: give a JSON payload or --file F.jsonl (not both)", file=sys.stderr)
        return 2
    if delay and at:
        print("dispatch: give --delay or --at, not both", file=sys.stderr)
        return 2
    options: dict[str, Any] = {"key": key, "job": job, "job_id": job_id}
    try:
        if delay:
            delay_ms(delay)  # a bad delay is a usage error (exit 2), before anything is sent
            options["delay"] = delay
        if at:
            options["at_ms"] = parse_time_ms(at)
    except ValueError as err:
        print(f"dispatch: {err}", file=sys.stderr)
        return 2
    settings = load(path)
    if settings is None:
        return 1
    dispatcher = Dispatcher(settings)
    try:
        if file is not None:
            with _opened(file) as (stream, size):
                show = sys.stderr.isatty() if progress is None else progress
                return _stream(dispatcher, queue, file, stream, size, show, options)
        print(dispatch_payload(dispatcher, queue, payload or "", **options))
        return 0
    except OSError as err:
        print(f"dispatch: {err}", file=sys.stderr)
        return 1
    except (DispatchError, ValueError) as err:
        print(f"dispatch: {err}", file=sys.stderr)
        return 1
    finally:
        dispatcher.close()


@contextmanager
def _opened(file: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """The input as bytes and its size when it is a regular file (None: stdin or a pipe)."""
    if file == "-":
        yield sys.stdin.buffer, None
        return
    with open(file, "rb") as stream:
        info = os.fstat(stream.fileno())
        yield stream, info.st_size if os.path.isfile(file) else None


def _stream(dispatcher: Dispatcher, queue: str, file: str, stream: IO[bytes], size: int | None, show: bool,
            options: dict[str, Any]) -> int:
    name = "<stdin>" if file == "-" else file
    bar = Progress(size) if show else None
    done = errors = 0
    for line in stream_lines(dispatcher, queue, stream, **options):
        if bar is not None:
            bar.clear()
        if line.error is None:
            done += 1
            print(line.job_id)
        else:
            errors += 1
            print(f"{name}:{line.number}: {line.error}", file=sys.stderr)
        if bar is not None:
            bar.update(done, errors, line)
    if bar is not None:
        bar.clear()
    print(f"dispatched {done} of {done + errors} jobs" + (f" ({errors} failed)" if errors else "")
          + f" from {name}", file=sys.stderr)
    return 0 if errors == 0 else 1


class Progress:
    """One redrawn stderr line: done, errors, rate, and the share read when the size is known."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.started = time.monotonic()
        self.drawn_at = 0.0
        self.shown = False

    def update(self, done: int, errors: int, line: Line) -> None:
        now = time.monotonic()
        if now - self.drawn_at < 0.1:
            return
        self.drawn_at = now
        rate = (done + errors) / max(now - self.started, 1e-6)
        text = f"{done} done, {errors} errors, {rate:,.0f} jobs/s"
        if self.size:
            share = min(line.read / self.size, 1.0)
            filled = int(share * 30)
            text = f"[{'#' * filled}{'.' * (30 - filled)}] {share:4.0%}  " + text
        sys.stderr.write("\r" + text + "\x1b[K")
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


@base.command("dispatch")
@click.argument("queue")
@click.argument("payload", required=False)
@click.option("--file", metavar="PATH|-", help="JSON lines, one job per line, streamed (`-`: stdin)")
@click.option("--key", help="message key (default: the queue's key field of the payload)")
@click.option("--job", help="job name, for a queue with a jobs list")
@click.option("--id", "job_id", help="your own job id (idempotent re-dispatch; not with --file)")
@click.option("--delay", help="run after this long, e.g. 30s, 5m")
@click.option("--at", help="run at this time: ISO 8601 (UTC if no zone) or epoch seconds")
@click.option("--progress/--no-progress", default=None,
              help="--file: a progress bar on stderr (default: when stderr is a terminal)")
def dispatch_cmd(queue: str, payload: str | None, file: str | None, key: str | None, job: str | None,
                 job_id: str | None, delay: str | None, at: str | None, progress: bool | None) -> int:
    """Dispatch a job to QUEUE (PAYLOAD: its data as JSON); print its id once the broker acknowledged it."""
    return dispatch(base.config_path(), queue, payload, file, key, delay, at, job, job_id, progress)
