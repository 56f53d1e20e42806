"""Features of the resampling and attribution-patching metrics, and their per-step curve.

``resampling_importance``: per trace, the mean over its steps of the counterfactual resampling
importance (``resample`` records, a total variation distance in [0, 1]); trace-level mean.
``attribution_agreement``: per trace where exact patching and its attribution estimate both ran,
the Spearman rank correlation of the two over the cells both measured (step x site x direction);
trace-level mean. Definitions in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from faithprobe.metrics.features import Features
from faithprobe.metrics.selection import select
from faithprobe.records import Record

__all__ = ["MIN_AGREEMENT_CELLS", "agreement_features", "rank", "resampling_features",
           "spearman"]

MIN_AGREEMENT_CELLS = 3  # a rank correlation over fewer cells says nothing


def resampling_features(recs: list[Record], _: str) -> Features:
    """The trace's mean importance over its steps with a defined (usable) value."""
    vals = [float(r.value) for r in select(recs, "resample") if r.value is not None]
    return {"sum": sum(vals) / len(vals), "count": 1.0} if vals else {}


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties given their mean rank (scipy's ``rankdata``, "average")."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the highest rank of each distinct value, in sorted order
    return ((last - counts + 1 + last) / 2)[inverse.reshape(-1)]


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (the Pearson correlation of the tie-averaged ranks); None
    with fewer than ``MIN_AGREEMENT_CELLS`` pairs or where either side is constant."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < MIN_AGREEMENT_CELLS or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    return float(np.corrcoef(rank(x), rank(y))[0, 1])


def _cells(recs: list[Record], kind: str) -> dict[tuple, float]:
    out = {}
    for r in select(recs, kind):
        if r.value is None or r.step is None:
            continue
        variant = r.detail.get("variant") if isinstance(r.detail.get("variant"), dict) else {}
        out[(r.step, r.site, variant.get("direction"), variant.get("head"))] = float(r.value)
    return out


def agreement_features(recs: list[Record], _: str) -> Features:
    """Spearman correlation of attribution and exact patching over the trace's shared cells."""
    exact, estimate = _cells(recs, "patch"), _cells(recs, "attribution")
    shared = sorted(set(exact) & set(estimate), key=repr)
    rho = spearman([exact[c] for c in shared], [estimate[c] for c in shared])
    return {} if rho is None else {"sum": rho, "count": 1.0}
