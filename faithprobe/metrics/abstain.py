"""Abstention metrics: per-trace features over ``abstain`` records (``faithprobe.stages.abstain``).

Each trace is one pair, its answerable question and its unanswerable twin, so a trace is one
cluster of the bootstrap and a comparison pairs the same questions on both checkpoints. Over the
usable records of a checkpoint:

- ``abstention_rate``: the share of unanswerable twins answered with the declining answer;
- ``false_abstention_rate``: the share of answerable questions answered with it;
- ``abstention_auroc``: the area under the ROC curve of the probability of answering
  (``detail.answer_prob``) as a separator of answerable (positive) from unanswerable questions:
  the chance that a random answerable question gets a higher one than a random twin, ties
  counting one half (the Mann-Whitney statistic over ranks, computed with numpy); 1 separates
  them perfectly, 0.5 not at all;
- ``invented_value_rate``: the share of unanswerable twins, among those with reasoning and a rule
  (``detail.invented`` not None), whose reasoning invents the missing value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from faithprobe.metrics.features import FeatureFn, Features
from faithprobe.metrics.selection import is_usable
from faithprobe.records import Record

__all__ = ["ABSTAIN_METRICS", "abstain_features", "answer_probs", "auroc", "auroc_combine",
           "auroc_features"]

ABSTAIN_METRICS = ("abstention_rate", "false_abstention_rate", "abstention_auroc",
                   "invented_value_rate")


def _rows(recs: Sequence[Record], variant: str) -> list[Record]:
    return [r for r in recs if r.intervention == "abstain" and is_usable(r)
            and r.detail.get("variant") == variant and "declined" in r.detail]


def abstain_features(variant: str, stat: str = "declined") -> FeatureFn:
    """Per-trace sum and count of ``detail[stat]`` (``declined`` or ``invented``, None left
    out) over the usable abstain records of ``variant``."""
    def feats(recs: list[Record], _: str) -> Features:
        vals = [r.detail.get(stat) for r in _rows(recs, variant)]
        vals = [v for v in vals if v is not None]
        if not vals:
            return {}
        return {"sum": float(sum(bool(v) for v in vals)), "count": float(len(vals))}
    return feats


def auroc_features(recs: list[Record], _: str) -> Features:
    """One count per (variant, probability of answering): ("a", p) answerable, ("u", p)
    unanswerable, so the summed features are the two weighted samples the AUROC ranks."""
    out: Features = {}
    for variant, key in (("answerable", "a"), ("unanswerable", "u")):
        for r in _rows(recs, variant):
            p = r.detail.get("answer_prob")
            if isinstance(p, (int, float)) and np.isfinite(p):
                out[(key, float(p))] = out.get((key, float(p)), 0.0) + 1.0
    return out


def auroc(pos: np.ndarray, neg: np.ndarray, w_pos: np.ndarray | None = None,
          w_neg: np.ndarray | None = None) -> float | None:
    """P(score of a positive > score of a negative) + P(equal) / 2, with optional weights
    (counts): the Mann-Whitney U over average ranks, vectorised; None when a side is empty."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    w_pos = np.ones(len(pos)) if w_pos is None else np.asarray(w_pos, float)
    w_neg = np.ones(len(neg)) if w_neg is None else np.asarray(w_neg, float)
    if w_pos.sum() <= 0 or w_neg.sum() <= 0:
        return None
    values = np.unique(np.concatenate([pos, neg]))
    n_pos = np.bincount(np.searchsorted(values, pos), weights=w_pos, minlength=len(values))
    n_neg = np.bincount(np.searchsorted(values, neg), weights=w_neg, minlength=len(values))
    below = np.cumsum(n_neg) - n_neg  # negatives strictly below each value
    return float((n_pos * (below + 0.5 * n_neg)).sum() / (n_pos.sum() * n_neg.sum()))


def auroc_combine(s: Features) -> float | None:
    """The AUROC of the summed (variant, probability) counts of :func:`auroc_features`."""
    pos = [(k[1], v) for k, v in s.items() if k[0] == "a" and v > 0]
    neg = [(k[1], v) for k, v in s.items() if k[0] == "u" and v > 0]
    if not pos or not neg:
        return None
    return auroc(np.array([p for p, _ in pos]), np.array([p for p, _ in neg]),
                 np.array([w for _, w in pos]), np.array([w for _, w in neg]))


def answer_probs(recs: Sequence[Record]) -> dict[str, list[float]]:
    """The probability of answering of each usable abstain record, by variant (for the plot)."""
    return {v: [float(r.detail["answer_prob"]) for r in _rows(recs, v)
                if isinstance(r.detail.get("answer_prob"), (int, float))] for v in
            ("answerable", "unanswerable")}
