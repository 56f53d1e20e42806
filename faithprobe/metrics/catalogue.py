"""The metric catalogue: one entry per metric, read by everything that lists metrics.

``CATALOGUE`` holds, in the order of ``summary.json`` (``METRICS``), each metric's name, how it
is computed (per-trace features and their combiner, ``faithprobe.metrics.features``) and how it is
shown (unit, label, description, and its place in the report's tables, in the verdict sentence
and in a run's headline). A new metric is one new entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from faithprobe.errors import FaithprobeError
from faithprobe.metrics.features import (
    CombineFn,
    FeatureFn,
    aoc_combine,
    aoc_features,
    count_combine,
    count_features,
    ece_combine,
    ece_features,
    field_mean,
    infogain_mean_features,
    infogain_ppl_features,
    infogain_total_features,
    ki_features,
    mean_steps_features,
    patching_features,
    ratio,
)

__all__ = [
    "CATALOGUE", "HEADLINE_METRICS", "METRICS", "METRICS_BY_NAME", "TABLE_METRICS", "UNITS",
    "UNIT_TITLES", "VERDICT_METRICS", "Metric", "get_metric",
]

# Display units: "points" (a share, shown x100), "relative" (changes shown relative to the first
# checkpoint), "value" (own unit), "count" (a record count, never compared or plotted).
UNITS = ("points", "relative", "value", "count")
# Title of the forest-plot panel of each plotted unit, in panel order.
UNIT_TITLES: Mapping[str, str] = MappingProxyType({
    "points": "percentage points", "relative": "relative change (%)",
    "value": "own units (AOC, KL, effect, ECE)"})


@dataclass(frozen=True)
class Metric:
    """One metric: how it is computed and how the report shows it.

    Attributes:
        name: the key in ``summary.json``.
        features: per-trace feature map ``(records of one trace, continuation) -> features``.
        combine: feature sums -> the value, or None without data.
        unit: one of ``UNITS``; ``count`` metrics get no interval and no comparison line.
        label: the name the report shows.
        description: what it measures, one line for the report's tables.
        table: position in the report's measure tables.
        verdict: position in the verdict sentence, or None when the verdict does not name it.
        headline: position in a run's headline numbers (``header.json``), or None.
    """

    name: str
    features: FeatureFn
    combine: CombineFn
    unit: str
    label: str
    description: str
    table: int
    verdict: int | None = None
    headline: int | None = None

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"metric {self.name!r}: unknown unit {self.unit!r}")


CATALOGUE: tuple[Metric, ...] = (
    Metric("accuracy", field_mean("none", "correct"), ratio, "points", "accuracy",
           "unedited traces answered correctly", table=0, verdict=0, headline=0),
    Metric("accuracy_no_cot", field_mean("truncate", "correct", step0=True), ratio, "points",
           "accuracy without reasoning", "correct with every step removed (truncated at step 0)",
           table=1),
    Metric("mean_steps", mean_steps_features, ratio, "value", "reasoning steps",
           "mean number of steps in the chain of thought (0: no reasoning written)",
           table=11, verdict=1),
    Metric("early_answering_aoc", aoc_features("truncate"), aoc_combine, "value",
           "early-answering AOC", "area over the early-answering curve; higher = the answer "
           "depends more on the reasoning (Lanham et al.)", table=2, verdict=2, headline=2),
    Metric("adding_mistakes_aoc", aoc_features("corrupt"), aoc_combine, "value",
           "adding-mistakes AOC", "area over the adding-mistakes curve; higher = a mistake in "
           "the reasoning changes the answer more", table=3, verdict=3),
    Metric("paraphrase_same_answer", field_mean("paraphrase", "same_answer"), ratio, "points",
           "paraphrase same answer", "paraphrased prefixes that keep the answer",
           table=4, verdict=6),
    Metric("paraphrase_accuracy", field_mean("paraphrase", "correct"), ratio, "points",
           "paraphrase accuracy", "correct after paraphrasing", table=5),
    Metric("filler_accuracy", field_mean("filler", "correct", whole=True), ratio, "points",
           "filler accuracy", "correct with the reasoning replaced by filler tokens",
           table=6, verdict=7),
    Metric("step_flip_rate", field_mean("corrupt", "same_answer", flip=True, corrupt=True),
           ratio, "points", "step flip rate", "single-step corruptions that change the answer",
           table=7, verdict=4, headline=1),
    Metric("delete_flip_rate", field_mean("delete", "same_answer", flip=True), ratio, "points",
           "delete flip rate", "single-step deletions that change the answer",
           table=8, verdict=5),
    Metric("mean_abs_kl_corrupt", field_mean("corrupt", "kl", absolute=True, corrupt=True),
           ratio, "value", "mean |KL| after corruption",
           "KL of the answer distribution after one step is corrupted (nats)", table=9),
    Metric("patching_effect", patching_features, ratio, "points", "patching effect",
           "per trace, the share of the clean answer's logit difference that its most "
           "important step's residual stream carries (noising at layer 0, clipped to [0, 1])",
           table=10, verdict=8),
    Metric("infogain_mean", infogain_mean_features, ratio, "relative", "InfoGain",
           "mean per-step drop of the answer's entropy, nats (Wu et al.)",
           table=12, verdict=9, headline=3),
    Metric("infogain_total", infogain_total_features, ratio, "relative", "InfoGain total",
           "H_0 - H_n, nats", table=13),
    Metric("infogain_ppl", infogain_ppl_features, ratio, "relative",
           "InfoGain (perplexity form)",
           "Wu et al.'s public-code form over whole-string perplexity", table=14),
    Metric("ki", ki_features, ratio, "points", "KI",
           "steps whose knowledge is judged correct (Wu et al.)", table=15, verdict=10),
    Metric("ece", ece_features, ece_combine, "value", "ECE",
           "expected calibration error of the unedited answers (10 bins)", table=16),
    Metric("nonfinite_count", count_features("nonfinite"), count_combine, "count",
           "nonfinite records", "records with a NaN or infinite value", table=17),
    Metric("no_answer_count", count_features("no_answer"), count_combine, "count",
           "no-answer records", "records where no answer was read", table=18),
    Metric("skipped_count", count_features("skipped"), count_combine, "count",
           "skipped records", "records the probe skipped", table=19),
)

METRICS: tuple[str, ...] = tuple(m.name for m in CATALOGUE)  # the order of summary.json
METRICS_BY_NAME: Mapping[str, Metric] = MappingProxyType({m.name: m for m in CATALOGUE})


def _ordered(position: str) -> tuple[str, ...]:
    ranked = [(getattr(m, position), m.name) for m in CATALOGUE
              if getattr(m, position) is not None]
    ranks = [rank for rank, _ in ranked]
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"metric catalogue: two metrics share a {position} position")
    return tuple(name for _, name in sorted(ranked))


TABLE_METRICS: tuple[str, ...] = _ordered("table")  # the report's measure tables
VERDICT_METRICS: tuple[str, ...] = _ordered("verdict")  # the verdict sentence
HEADLINE_METRICS: tuple[str, ...] = _ordered("headline")  # a run's headline (header.json)
if len(METRICS_BY_NAME) != len(CATALOGUE) or len(TABLE_METRICS) != len(CATALOGUE):
    raise ValueError("metric catalogue: names must be unique and every metric needs a table "
                     "position")


def get_metric(name: str) -> Metric:
    """The catalogue entry of ``name``.

    Raises:
        FaithprobeError: ``name`` is not a metric.
    """
    metric = METRICS_BY_NAME.get(name)
    if metric is None:
        raise FaithprobeError(f"unknown metric (known: {', '.join(METRICS)})", field=name)
    return metric
