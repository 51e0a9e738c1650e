"""Command line: argument parsing only; each command calls one function of the command modules
(protojobs.cli.broker, config, dlq, health, queues, schedules), which print and return the exit code.

Exit codes: 0 success, 1 failure (invalid config, failed command), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Command = Callable[[argparse.Namespace], int]


def _config_default() -> str:
    return os.environ.get("PROTOJOBS_CONFIG", "jobs.toml")


def _cmd_broker(args: argparse.Namespace) -> int:
    from protojobs.cli import broker
    from protojobs.local import devbroker
    state = Path(args.state)
    if args.action == "start":
        if args.if_needed and not devbroker.needed(args.config):
            return 0
        return broker.start(nodes=args.nodes, port=args.port, fresh=args.fresh, toxiproxy=args.toxiproxy,
                            state=state)
    if args.action == "stop":
        return broker.stop(state)
    return broker.status(state)


def _cmd_run(args: argparse.Namespace) -> int:
    from protojobs.cli import run as runner
    from protojobs.observe import logs
    logs.configure(args.log_format)  # and $PROTOJOBS_LOG_FORMAT for the spawned workers
    router = "off" if args.no_router else "only" if args.router_only else "on"
    limits = {"max_uncommitted": args.max_uncommitted, "commit_every": args.commit_every,
              "max_hung": args.max_hung, "shutdown_timeout": args.shutdown_timeout}
    return runner.run(args.config, queues=args.queue or None, max_jobs=args.max_jobs, processes=args.processes,
                      router=router, slot=args.slot, metrics_port=args.metrics_port,
                      scheduler=not args.no_scheduler, limits=limits, metrics_host=args.metrics_host)


def _cmd_health(args: argparse.Namespace) -> int:
    from protojobs.cli import health
    return health.health_command(args.url, ready=args.ready, timeout=args.timeout)


def _cmd_validate(args: argparse.Namespace) -> int:
    from protojobs.cli import config
    return config.validate_command(args.config, cluster=args.cluster, import_handlers=not args.no_import)


def _cmd_config(args: argparse.Namespace) -> int:
    from protojobs.cli import config
    return config.show_command(args.config, fmt=args.format)


def _cmd_dispatch(args: argparse.Namespace) -> int:
    from protojobs.cli import queues
    if (args.payload is None) == (args.file is None):
        print("dispatch: give a JSON payload or --file F.jsonl (not both)", file=sys.stderr)
        return 2
    return queues.dispatch(args.config, args.queue, args.payload, args.file, args.key, args.delay,
                           args.at, args.job, args.id)


def _cmd_stats(args: argparse.Namespace) -> int:
    from protojobs.cli import queues
    return queues.stats(args.config, args.queue, args.json)


def _cmd_clear(args: argparse.Namespace) -> int:
    from protojobs.cli import queues
    return queues.clear(args.config, args.queue, args.yes)


def _cmd_retry_plan(args: argparse.Namespace) -> int:
    from protojobs.cli import queues
    return queues.retry_plan(args.config, args.queue)


def _cmd_topics(args: argparse.Namespace) -> int:
    from protojobs.cli import queues
    return queues.topics_command(args.config, args.action)


def _cmd_schedules(args: argparse.Namespace) -> int:
    from protojobs.cli import schedules
    if (args.action == "list") != (args.name is None):
        print("schedules: `list` takes no name; pause, resume, remove and next take one", file=sys.stderr)
        return 2
    if args.action == "list":
        return schedules.list_command(args.config, args.json)
    if args.action == "next":
        return schedules.next_command(args.config, args.name, args.count)
    return schedules.control_command(args.config, args.action, args.name)


def _cmd_dlq(args: argparse.Namespace) -> int:
    from protojobs.cli import dlq
    if (args.action == "show") != (args.job_id is not None):
        print("dlq: `show` takes one job id (`dlq show ID`); the other actions take none", file=sys.stderr)
        return 2
    if args.action == "list":
        return dlq.list_command(args.config, args.queue, args.error, args.since, args.limit, args.json)
    if args.action == "show":
        return dlq.show_command(args.config, args.job_id)
    if args.action == "replay":
        return dlq.replay_command(args.config, args.queue, args.id or [], args.error, args.since, args.all,
                                  args.dry_run, args.max_replays)
    return dlq.purge_command(args.config, args.queue, args.yes)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from protojobs.cli.common import load
    try:
        from protojobs import dashboard
    except ImportError as exc:
        print(f"dashboard: {exc}; install the extra: pip install 'protojobs[dashboard]'", file=sys.stderr)
        return 1
    from protojobs.observe import logs
    logs.configure("text")  # the action log: who did what
    settings = load(args.config, import_handlers=False)
    if settings is None:
        return 1
    try:
        dashboard.serve(settings, host=args.host, port=args.port, read_only=args.read_only, token=args.token,
                        sample_every=args.sample_every)
    except (dashboard.BindRefused, ValueError) as exc:
        print(f"dashboard: {exc}", file=sys.stderr)
        return 1
    return 0


Add = Callable[[str, Command, str], argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protojobs", description="Declarative job engine on Apache Kafka")
    parser.add_argument("--version", action="version", version="protojobs 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--config", default=_config_default(),
                         help="jobs.toml (default: ./jobs.toml or $PROTOJOBS_CONFIG)")
        cmd.set_defaults(func=func)
        return cmd

    for add_commands in (_add_broker, _add_run, _add_config, _add_dispatch, _add_queues, _add_schedules, _add_dlq,
                         _add_dashboard):
        add_commands(add)
    return parser


def _add_broker(add: Add) -> None:
    broker = add("broker", _cmd_broker, "the local development Kafka that the project fetches and runs")
    broker.add_argument("action", choices=["start", "stop", "status"])
    broker.add_argument("--nodes", type=int, default=1, choices=[1, 3])
    broker.add_argument("--port", type=int, default=9092, help="first node's client port (default 9092)")
    broker.add_argument("--fresh", action="store_true", help="format anew, dropping queued data")
    broker.add_argument("--toxiproxy", action="store_true", help="also run toxiproxy in front of each node")
    broker.add_argument("--if-needed", action="store_true",
                        help="start only when --config points at a loopback broker that is not listening")
    broker.add_argument("--state", default=".protojobs/broker", help=argparse.SUPPRESS)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite, non-negative number of seconds")
    return value


def _add_run(add: Add) -> None:
    run = add("run", _cmd_run, "run workers for the queues of jobs.toml")
    run.add_argument("--queue", action="append", help="only this queue (repeatable)")
    run.add_argument("--max-jobs", type=_count, default=0,
                     help="run exactly N jobs, commit them and stop; the rest stay queued (0: run until stopped)")
    run.add_argument("--processes", type=int, default=1, help="worker processes in the group (default 1)")
    run.add_argument("--slot", type=int, default=0,
                     help="process slot on this host (exactly-once transactional.id); --processes numbers its own")
    placement = run.add_mutually_exclusive_group()
    placement.add_argument("--no-router", action="store_true", help="do not run the delay-tier router here")
    placement.add_argument("--router-only", action="store_true", help="run only the delay-tier router")
    run.add_argument("--no-scheduler", action="store_true",
                     help="do not take part in leading the periodic schedules in this process")
    run.add_argument("--metrics-port", type=int,
                     help="serve /metrics, /healthz and /readyz for all processes on this port")
    run.add_argument("--metrics-host", default="127.0.0.1",
                     help="the address --metrics-port listens on (default %(default)s: this host only; "
                          "0.0.0.0 for every interface)")
    run.add_argument("--log-format", choices=["text", "json"], default="text",
                     help="text, or one JSON object per line with the job's fields (default text)")
    run.add_argument("--max-uncommitted", type=_count, default=5000, metavar="N",
                     help="pause a partition while N of its jobs are started but not committable "
                          "(a crash runs them again; 0: no bound; default %(default)s)")
    run.add_argument("--commit-every", type=_count, default=500, metavar="N",
                     help="commit once N jobs finished since the last commit, and every second "
                          "(0: every second only; default %(default)s)")
    run.add_argument("--max-hung", type=_count, default=0, metavar="N",
                     help="a queue with more than N handlers hung past their timeout is wedged: "
                          "/healthz fails, a --processes child is recycled (default 0: 2 x concurrency)")
    run.add_argument("--shutdown-timeout", type=_seconds, default=0.0, metavar="SECONDS",
                     help="on SIGTERM wait at most this long for running jobs, then commit what finished "
                          "and exit (default 0: the longest queue timeout + 5 s)")

    probe = add("health", _cmd_health, "ask a running `run --metrics-port` whether it is healthy (exit 0) or not (1)")
    probe.add_argument("--url", default="http://127.0.0.1:9191", help="the metrics endpoint (default %(default)s)")
    probe.add_argument("--ready", action="store_true", help="check /readyz instead of /healthz")
    probe.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")


def _add_config(add: Add) -> None:
    validate = add("validate", _cmd_validate, "check jobs.toml, its payload schemas and handlers (imports the "
                   "handler modules, which runs their top-level code; --no-import skips that)")
    validate.add_argument("--cluster", action="store_true", help="also check against the live cluster")
    validate.add_argument("--no-import", action="store_true",
                          help="do not import the handler modules (nor check that they import)")

    show = add("config", _cmd_config, "print the effective configuration (secrets redacted)")
    show.add_argument("action", choices=["show"])
    show.add_argument("--format", choices=["toml", "json"], default="toml")


def _add_dispatch(add: Add) -> None:
    dispatch = add("dispatch", _cmd_dispatch, "dispatch a job; prints its id once the broker acknowledged it")
    dispatch.add_argument("queue")
    dispatch.add_argument("payload", nargs="?", help="the job's data as JSON")
    dispatch.add_argument("--file", help="a JSON-lines file: one job per line")
    dispatch.add_argument("--key", help="message key (default: the queue's key field of the payload)")
    dispatch.add_argument("--job", help="job name, for a queue with a jobs list")
    dispatch.add_argument("--id", help="your own job id (idempotent re-dispatch)")
    when = dispatch.add_mutually_exclusive_group()
    when.add_argument("--delay", help="run after this long, e.g. 30s, 5m")
    when.add_argument("--at", help="run at this time: ISO 8601 (UTC if no zone) or epoch seconds")


def _add_queues(add: Add) -> None:
    stats = add("stats", _cmd_stats, "depth, delayed and dead-lettered jobs, and group members")
    stats.add_argument("--queue", action="append")
    stats.add_argument("--json", action="store_true")

    clear = add("clear", _cmd_clear, "delete a queue's pending jobs")
    clear.add_argument("queue")
    clear.add_argument("--yes", action="store_true", help="really delete")

    plan = add("retry-plan", _cmd_retry_plan, "each queue's retry schedule: delays, tiers, worst lateness")
    plan.add_argument("--queue", action="append")

    topics = add("topics", _cmd_topics, "show (plan) or create/alter (apply) the topics jobs.toml implies")
    topics.add_argument("action", choices=["plan", "apply"])


def _add_schedules(add: Add) -> None:
    sched = add("schedules", _cmd_schedules, "periodic schedules: list, pause, resume, remove, next fire times")
    sched.add_argument("action", choices=["list", "pause", "resume", "remove", "next"])
    sched.add_argument("name", nargs="?", help="the schedule (pause, resume, remove, next)")
    sched.add_argument("--json", action="store_true", help="list: JSON output")
    sched.add_argument("--count", type=int, default=5, help="next: how many fire times (default 5)")


def _add_dlq(add: Add) -> None:
    dlq = add("dlq", _cmd_dlq, "inspect, replay and purge dead-lettered jobs")
    dlq.add_argument("action", choices=["list", "show", "replay", "purge"])
    dlq.add_argument("job_id", nargs="?", help="the job id (show)")
    dlq.add_argument("--queue", help="only jobs of this queue")
    dlq.add_argument("--error", help="only jobs that failed with this error type (exact class name)")
    dlq.add_argument("--since", help="only jobs that failed since: a duration (1h: the last hour) or a time")
    dlq.add_argument("--id", action="append", help="replay this job id (repeatable)")
    dlq.add_argument("--limit", type=int, help="list: only the N most recent")
    dlq.add_argument("--json", action="store_true", help="list: JSON output")
    dlq.add_argument("--all", action="store_true", help="replay: every dead-lettered job")
    dlq.add_argument("--dry-run", action="store_true", help="replay: show what would be replayed, send nothing")
    dlq.add_argument("--max-replays", type=int, default=3,
                     help="replay: skip jobs already replayed this many times (default 3)")
    dlq.add_argument("--yes", action="store_true", help="purge: really delete")


def _add_dashboard(add: Add) -> None:
    dash = add("dashboard", _cmd_dashboard, "serve the web dashboard (the `dashboard` extra)")
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s; any other "
                      "needs --token)")
    dash.add_argument("--port", type=int, default=8088, help="port (default %(default)s)")
    dash.add_argument("--read-only", action="store_true", help="hide every action and refuse action requests")
    dash.add_argument("--token", action="append", metavar="[NAME:]SECRET",
                      help="let in requests carrying this token (repeatable; default $PROTOJOBS_DASHBOARD_TOKEN)")
    dash.add_argument("--sample-every", type=_seconds, default=5.0, metavar="SECONDS",
                      help="how often the overview's 15-minute charts sample the cluster (default %(default)s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
