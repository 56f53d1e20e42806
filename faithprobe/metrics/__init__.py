"""Stage 5: metrics over records, with bootstrap intervals.

Every metric is computed from ``faithprobe.records.Record`` lists alone (numpy only, no model), so
a summary can be recomputed from ``records.jsonl``. Every definition is in ``docs/metrics.md``;
they follow Lanham et al. 2023 (early answering and adding-mistakes AOC) and Wu et al. 2025
(InfoGain, KI).

Conventions:

- Only usable records (``is_usable``: ``status == "ok"`` and every float field finite) are
  averaged. Records with another status are counted (``*_count``); an ``ok`` record carrying a
  NaN or infinity is counted as ``nonfinite`` and never averaged either.
- A metric with no data is ``None``, never NaN.
- Every interval is the 95% percentile interval of a cluster bootstrap over traces: resample the
  trace ids that entered the metric with replacement, recompute the statistic over all their
  records, take the 2.5th and 97.5th percentiles of the replicates.
  Replicates are drawn from ``numpy.random.default_rng(seed)`` over trace ids in sorted order, so
  the same records give the same summary whatever their order.

Modules: ``catalogue`` (the one list of metrics and how each is shown), ``features`` (per-trace
features and their combiners), ``bootstrap`` (estimates, comparisons, the summary), ``curves``
(curves and grids for the report), ``selection`` (record helpers).
"""

from faithprobe.metrics.bootstrap import (
    METRIC_FNS,
    SUMMARY_SCHEMA_VERSION,
    Estimate,
    bootstrap,
    compare,
    compare_relative,
    compute_metrics,
    seed_question,
    summarize,
)
from faithprobe.metrics.catalogue import (
    CATALOGUE,
    HEADLINE_METRICS,
    METRICS,
    METRICS_BY_NAME,
    TABLE_METRICS,
    UNIT_TITLES,
    VERDICT_METRICS,
    Metric,
    get_metric,
)
from faithprobe.metrics.curves import (
    COVERAGE_THRESHOLDS,
    adding_mistakes_curve,
    coverage_curve,
    early_answering_curve,
    infogain_by_step,
    infogain_drop,
    patching_grid,
    step_effects,
)
from faithprobe.metrics.features import ECE_BINS, ece_bin, reliability_bins
from faithprobe.metrics.selection import (
    checkpoint_labels,
    has_nonfinite,
    is_usable,
    resolve_continuation,
)

__all__ = [
    "CATALOGUE", "COVERAGE_THRESHOLDS", "ECE_BINS", "HEADLINE_METRICS", "METRICS",
    "METRICS_BY_NAME", "METRIC_FNS", "SUMMARY_SCHEMA_VERSION", "TABLE_METRICS", "UNIT_TITLES",
    "VERDICT_METRICS", "Estimate", "Metric", "adding_mistakes_curve", "bootstrap",
    "checkpoint_labels", "compare", "compare_relative", "compute_metrics", "coverage_curve",
    "early_answering_curve", "ece_bin", "get_metric", "has_nonfinite", "infogain_by_step",
    "infogain_drop", "is_usable", "patching_grid", "reliability_bins", "resolve_continuation",
    "seed_question", "step_effects", "summarize",
]
