"""Scenario 5: cost of one worker process draining N no-op jobs (1M in the full run).

RSS at the first job and at exit (the handler module reports both), RSS sampled every 0.5 s
by the bench, and CPU seconds (user + system, of the worker process, from the first job to
exit) per 100k jobs. validate_on_consume is on (the default).
"""

from __future__ import annotations

from typing import Any

from common import Env, fresh_prefix, make_settings, settings_tree
from s2_drain import drain_protojobs, preload


def run(env: Env) -> dict[str, Any]:
    n = 100_000 if env.quick else 1_000_000
    prefix = fresh_prefix("cost")
    tree = settings_tree(env.bootstrap, prefix)
    topic = preload(make_settings(tree), n)
    result = drain_protojobs(env, tree, topic, n, processes=1, sample_rss=True, timeout=1200)
    samples = [mb for _t, mb in result.get("rss_samples", []) if mb > 0]
    result["rss_max_mb"] = max(samples) if samples else None
    result.pop("lat", None)
    return result
