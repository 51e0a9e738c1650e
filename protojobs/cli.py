"""Command line: argument parsing only; each command calls one function of the modules.

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
    from protojobs import devbroker

    state = Path(args.state)
    if args.action == "start":
        if args.if_needed and not devbroker.needed(args.config):
            return 0
        return devbroker.start(nodes=args.nodes, port=args.port, fresh=args.fresh,
                               toxiproxy=args.toxiproxy, state=state)
    if args.action == "stop":
        return devbroker.stop(state)
    return devbroker.status(state)


def _cmd_run(args: argparse.Namespace) -> int:
    from protojobs import devrun

    return devrun.run(args.config, queues=args.queue or None, max_jobs=args.max_jobs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protojobs", description="Declarative job engine on Apache Kafka")
    parser.add_argument("--version", action="version", version="protojobs 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--config", default=_config_default(), help="jobs.toml (default: ./jobs.toml or $PROTOJOBS_CONFIG)")
        cmd.set_defaults(func=func)
        return cmd

    broker = add("broker", _cmd_broker, "the local development Kafka that the project fetches and runs")
    broker.add_argument("action", choices=["start", "stop", "status"])
    broker.add_argument("--nodes", type=int, default=1, choices=[1, 3])
    broker.add_argument("--port", type=int, default=9092, help="first node's client port (default 9092)")
    broker.add_argument("--fresh", action="store_true", help="format anew, dropping queued data")
    broker.add_argument("--toxiproxy", action="store_true", help="also run toxiproxy in front of each node")
    broker.add_argument("--if-needed", action="store_true",
                        help="start only when --config points at a loopback broker that is not listening")
    broker.add_argument("--state", default=".protojobs/broker", help=argparse.SUPPRESS)

    run = add("run", _cmd_run, "run workers for the queues of jobs.toml")
    run.add_argument("--queue", action="append", help="only this queue (repeatable)")
    run.add_argument("--max-jobs", type=int, default=0, help="stop after N jobs (0: run until stopped)")
    return parser


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
