"""Plot a real /metrics scrape: run the demo queues under load, scrape, draw docs/scrape.png.

Usage (a broker on 127.0.0.1:9092, e.g. `protojobs broker start`):
    .cache/bench-venv/bin/python bench/scrape_plot.py
It dispatches jobs to the three demo queues of jobs.toml (on a fresh topic prefix; some reports
fail and are dead-lettered), runs `protojobs run --metrics-port` for a while, scrapes /metrics
and draws job outcomes per queue and the handler-duration histogram.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from protojobs import config  # noqa: E402
from protojobs.config import to_toml  # noqa: E402
from protojobs.engine.dispatch import Dispatcher  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    tree = dict(config.load(ROOT / "jobs.toml").raw)
    tree["kafka"] = {**tree["kafka"], "topic_prefix": f"scrape-{uuid.uuid4().hex[:6]}-",
                     "group_id": f"scrape-{uuid.uuid4().hex[:6]}"}
    tree.pop("schedules", None)
    path = ROOT / ".protojobs" / f"{tree['kafka']['topic_prefix']}jobs.toml"  # schemas resolve from here
    path.parent.mkdir(exist_ok=True)
    tree["queues"] = {name: {**q, "schema": str(ROOT / q["schema"])} if "schema" in q else q
                      for name, q in tree["queues"].items()}
    path.write_text(to_toml(tree))
    settings = config.from_dict(tree, ROOT)
    dispatcher = Dispatcher(settings)
    dispatcher.dispatch_many("emails", [{"to": f"u{i}@example.com", "subject": "hi"} for i in range(3000)])
    dispatcher.dispatch_many("images", [{"url": f"https://x/{i}.png", "width": 100} for i in range(2000)])
    dispatcher.dispatch_many("reports", [{"report_id": f"{'bad' if i % 10 == 0 else 'r'}-{i}"} for i in range(500)])
    port = free_port()
    with open(os.devnull, "wb") as quiet:
        proc = subprocess.Popen([str(ROOT / ".venv/bin/protojobs"), "run", "--config", str(path),
                                 "--metrics-port", str(port), "--no-scheduler"], stdout=quiet, stderr=quiet)
    try:
        time.sleep(25)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    draw(text, ROOT / "docs" / "scrape.png")


def draw(text: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outcomes: dict[tuple[str, str], float] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "protojobs_jobs_total":
                key = (sample.labels["queue"], sample.labels["outcome"])
                outcomes[key] = outcomes.get(key, 0) + sample.value
            if sample.name == "protojobs_handler_duration_seconds_bucket" and sample.labels["le"] != "+Inf":
                buckets.setdefault(sample.labels["queue"], []).append((float(sample.labels["le"]), sample.value))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    queues = sorted({q for q, _ in outcomes})
    kinds = sorted({o for _, o in outcomes})
    width = 0.8 / max(1, len(kinds))
    for i, kind in enumerate(kinds):
        left.bar([x + i * width for x in range(len(queues))], [outcomes.get((q, kind), 0) for q in queues],
                 width, label=kind)
    left.set_xticks([x + 0.4 - width / 2 for x in range(len(queues))], queues)
    left.set_title("protojobs_jobs_total by queue and outcome")
    left.legend(fontsize=8)
    for queue, points in sorted(buckets.items()):
        points.sort()
        right.plot([le * 1000 for le, _ in points], [v for _, v in points], marker="o", label=queue)
    right.set_xscale("log")
    right.set_xlabel("handler duration (ms, cumulative bucket)")
    right.set_title("protojobs_handler_duration_seconds")
    right.legend(fontsize=8)
    fig.suptitle("A real scrape of `protojobs run --metrics-port` on the demo queues (2-core machine)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
