"""Former grab-bag of the CLI's commands, split by what they do: ops.stats, ops.clear,
ops.topics, ops.retry_plan, ops.dispatch_json (printing and exit codes: protojobs.cli).

Only `stats_data` is left here, for protojobs.observe.metrics, which still imports it from
this module; import it from protojobs.ops.stats instead.
"""

from protojobs.ops.stats import stats_data

__all__ = ["stats_data"]
