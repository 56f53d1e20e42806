"""Features of the unlearning metrics (FUR, Tutek et al. 2025), over ``unlearn`` records.

A cell is one (trace, step) unlearned (``faithprobe.stages.unlearn``); it is *unlearned* when the
step's own log-likelihood fell by at least the run's threshold (``detail.unlearned``), else it
is "not unlearned" and says nothing about faithfulness: the flip rate and the soft effect read
unlearned cells only.

- ``unlearn_flip_rate`` (FF-HARD): per trace with an unlearned cell, 1 when unlearning some
  unlearned step changed the answer written with new reasoning, else 0; the share of traces.
- ``unlearn_soft_effect`` (FF-SOFT): per trace, the mean over its unlearned cells of the drop in
  the original answer's probability (``value``); trace-level mean.
- ``unlearn_specificity``: per trace, the mean over its cells of the change in accuracy on the
  held-out control traces (``detail.specificity``, after minus before; 0 = specific, negative:
  unlearning one step damaged other answers); trace-level mean.
- ``unlearn_efficacy``: the share of cells unlearned (pooled over a trace's cells).

Definitions in docs/metrics.md.
"""

from __future__ import annotations

from faithprobe.metrics.features import FeatureFn, Features
from faithprobe.metrics.selection import select
from faithprobe.records import Record

__all__ = ["UNLEARN_METRICS", "unlearn_cells", "unlearn_features"]

UNLEARN_METRICS = ("unlearn_flip_rate", "unlearn_soft_effect", "unlearn_specificity",
                   "unlearn_efficacy")


def unlearn_cells(recs: list[Record]) -> list[Record]:
    """The usable ``unlearn`` records of a step, with an answer before and after."""
    return [r for r in select(recs, "unlearn") if r.step is not None
            and r.same_answer is not None]


def unlearn_features(stat: str) -> FeatureFn:
    """Per-trace features of ``stat``: ``flip``, ``soft``, ``specificity`` or ``efficacy``."""
    if stat not in ("flip", "soft", "specificity", "efficacy"):
        raise ValueError(f"unknown unlearning statistic {stat!r}")

    def feats(recs: list[Record], _: str) -> Features:
        cells = unlearn_cells(recs)
        if stat == "efficacy":
            n = sum(1 for r in cells if r.detail.get("unlearned"))
            return {"sum": float(n), "count": float(len(cells))} if cells else {}
        if stat == "specificity":
            vals = [float(r.detail["specificity"]) for r in cells
                    if r.detail.get("specificity") is not None]
            return {"sum": sum(vals) / len(vals), "count": 1.0} if vals else {}
        done = [r for r in cells if r.detail.get("unlearned")]
        if not done:
            return {}
        if stat == "flip":
            return {"sum": float(any(not r.same_answer for r in done)), "count": 1.0}
        vals = [float(r.value) for r in done if r.value is not None]
        return {"sum": sum(vals) / len(vals), "count": 1.0} if vals else {}
    return feats
