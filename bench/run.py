"""`make bench`: start the bench broker, run every scenario beside its baselines, report.

    python bench/run.py [--quick] [--only dispatch,drain,...] [--profile] [--repeats N] [--three-nodes | --one-node]

BENCH_QUICK=1 (or --quick) runs the reduced version (under 3 minutes); the full run stays
under 20 minutes on 2 cores. The broker is the project's own single node
(`Cluster(profile="bench")`: G1 + C2 JIT, 1-2 GB heap) in /tmp/pj-bench, ports from 22100;
it is stopped at the end unless --keep-broker, and warmed up (untimed traffic, `common.warm_up`)
before the first scenario. Results: a printed table,
bench/results/latest.json and PNG plots (latency percentiles, throughput vs processes).
The machine is shared and small: each scenario runs `--repeats` times (default 2) and the
better figure is reported, with every run's figure kept in the JSON.

The 3-node run (default in the full run, `--three-nodes` in the quick one): after the 1-node
scenarios, a 3-node cluster (RF 3, min ISR 2; producers use acks=all as always) in
<state>/3node on ports from <port>+100 runs the dispatch and drain scenarios at their quick
sizes, reported beside the 1-node figures (`three_nodes` in the JSON).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, Env, warm_up  # noqa: E402

from protojobs.local.cluster import Cluster  # noqa: E402

SCENARIOS = {"dispatch": "s1_dispatch", "drain": "s2_drain", "latency": "s3_latency", "delay": "s4_delay",
             "cost": "s5_cost", "peers": "s6_peers"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument("--profile", action="store_true", help="also write results/profile.txt (cProfile)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--state", default="/tmp/pj-bench")
    parser.add_argument("--port", type=int, default=22100)
    parser.add_argument("--keep-broker", action="store_true")
    parser.add_argument("--three-nodes", action="store_true", default=None, help="also the 3-node run")
    parser.add_argument("--one-node", dest="three_nodes", action="store_false", help="no 3-node run")
    args = parser.parse_args(argv)
    if args.three_nodes is None:
        args.three_nodes = not args.quick and not args.only
    chosen = args.only.split(",") if args.only else list(SCENARIOS)
    cluster = Cluster(Path(args.state), base_port=args.port, profile="bench")
    reused = bool(cluster.running_pids())
    started = time.monotonic()
    if not reused:
        print(f"bench: starting the bench broker on {cluster.bootstrap} ...", flush=True)
        cluster.start()
    print("bench: warming the broker up (untimed) ...", flush=True)
    warmed = warm_up(cluster.bootstrap)
    env = Env(cluster.bootstrap, args.quick, Path(args.state) / "work", repeats=args.repeats)
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "repeats": args.repeats,
                               "broker": {"profile": "bench", "bootstrap": cluster.bootstrap,
                                          "warm_up_seconds": round(warmed, 1)}}
    try:
        for name in chosen + (["profile"] if args.profile else []):
            print(f"bench: {name} ...", flush=True)
            t0 = time.monotonic()
            try:
                results[name] = importlib.import_module(SCENARIOS.get(name, "s7_profile")).run(env)
            except Exception as exc:  # noqa: BLE001 - one scenario failing does not hide the others
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name + "_seconds"] = round(time.monotonic() - t0, 1)
            save(results)
        results["broker"]["rss_mb"] = {i: b / 2**20 for i, b in cluster.rss_bytes().items()}
    finally:
        if not reused and not args.keep_broker:
            cluster.stop()
    if args.three_nodes:
        t0 = time.monotonic()
        results["three_nodes"] = three_nodes(Path(args.state) / "3node", args.port + 100, args.repeats)
        results["three_nodes_seconds"] = round(time.monotonic() - t0, 1)
        save(results)
    results["total_seconds"] = round(time.monotonic() - started, 1)
    save(results)
    import report

    print(report.table(results))
    report.plots(results, RESULTS)
    print(f"bench: {RESULTS / 'latest.json'} and plots in {RESULTS}/ ({results['total_seconds']:.0f} s)")
    return 0


def three_nodes(state: Path, port: int, repeats: int) -> dict[str, Any]:
    """Dispatch and drain (quick sizes) on a 3-node cluster: RF 3, min ISR 2, acks=all."""
    cluster = Cluster(state, base_port=port, nodes=3, profile="bench")
    out: dict[str, Any] = {"nodes": 3, "replication_factor": 3, "min_insync_replicas": 2}
    print(f"bench: starting the 3-node bench cluster on {cluster.bootstrap} ...", flush=True)
    try:
        cluster.start()
        out["warm_up_seconds"] = round(warm_up(cluster.bootstrap), 1)
        env = Env(cluster.bootstrap, True, state / "work", repeats=repeats)
        for name in ("dispatch", "drain"):
            print(f"bench: 3 nodes: {name} ...", flush=True)
            try:
                out[name] = importlib.import_module(SCENARIOS[name]).run(env)
            except Exception as exc:  # noqa: BLE001 - reported, like the 1-node scenarios
                traceback.print_exc()
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - a cluster that does not start: reported
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        cluster.stop()
    return out


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in load], "shared": True}


def save(results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
