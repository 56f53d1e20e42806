"""Features of the suppression-matrix and receiver-head metrics, the receiver heads of a
checkpoint, and each step's receiver score. Definitions in docs/metrics.md.

- ``step_dependency``: per trace, the mean over its steps (those with a later step) of the
  step's mean suppression effect on the later steps (``suppression`` records' ``value``, KL in
  nats, negative float noise read as 0); trace-level mean.
- ``answer_dependency_share``: per trace, of all the suppression effect its steps have (on the
  answer's row and on every later step's), the share on the answer's row:
  ``sum_i A_i / sum_i (A_i + sum_(j>i) M[j, i])``; trace-level mean.
- ``receiver_kurtosis``: each head's excess kurtosis over a trace's steps of its vertical scores
  (``receiver`` records), averaged over the checkpoint's traces; the mean over the ``TOP_K``
  heads with the highest mean (Thought Anchors' receiver heads).
- ``receiver_agreement``: per trace, Spearman's rank correlation between the steps' receiver
  scores (their mean vertical score over the checkpoint's top heads) and their resampling
  importance (``resample`` records); trace-level mean.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from faithprobe.metrics.features import Features
from faithprobe.metrics.methods import spearman
from faithprobe.metrics.selection import group_by_trace, select
from faithprobe.records import Record

__all__ = [
    "MIN_KURTOSIS_STEPS", "TOP_K", "answer_share_features", "kurtosis",
    "receiver_agreement_combine", "receiver_agreement_features", "receiver_kurtosis_combine",
    "receiver_kurtosis_features",
    "receiver_scores", "receiver_summary", "step_dependency_features", "suppression_matrix",
    "top_heads",
]

TOP_K = 20  # receiver heads a checkpoint keeps (Thought Anchors' top 20)
MIN_KURTOSIS_STEPS = 3  # a kurtosis over fewer steps says nothing


def kurtosis(values: Sequence[float]) -> float | None:
    """Excess (Fisher) kurtosis with the biased moments, ``m4 / m2**2 - 3`` (scipy's
    ``kurtosis(fisher=True, bias=True)``); None for fewer than ``MIN_KURTOSIS_STEPS`` values or
    constant ones."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if len(x) < MIN_KURTOSIS_STEPS:
        return None
    d = x - x.mean()
    m2 = float((d * d).mean())
    if m2 <= 1e-30:
        return None
    return float((d ** 4).mean() / (m2 * m2) - 3.0)


def suppression_matrix(recs: Sequence[Record]) -> tuple[np.ndarray, np.ndarray] | None:
    """One trace's matrix ``M[j, i]`` (NaN where undefined) and answer row ``A[i]`` from its
    usable ``suppression`` records; None without them."""
    sel = [r for r in select(list(recs), "suppression") if r.step is not None]
    if not sel:
        return None
    n = max(r.n_steps for r in sel)
    matrix = np.full((n, n), np.nan)
    answer = np.full(n, np.nan)
    for r in sel:
        later = r.detail.get("later") or []
        for j, v in enumerate(later[:n]):
            if v is not None and j > r.step:
                matrix[j, r.step] = max(float(v), 0.0)
        if r.kl is not None:
            answer[r.step] = max(float(r.kl), 0.0)
    return matrix, answer


def step_dependency_features(recs: list[Record], _: str) -> Features:
    """The trace's mean, over steps with a later step, of their mean effect on later steps."""
    vals = [max(float(r.value), 0.0) for r in select(recs, "suppression")
            if r.value is not None and r.step is not None]
    return {"sum": sum(vals) / len(vals), "count": 1.0} if vals else {}


def answer_share_features(recs: list[Record], _: str) -> Features:
    """The share of the trace's whole suppression effect that lands on the answer's row."""
    got = suppression_matrix(recs)
    if got is None:
        return {}
    matrix, answer = got
    on_answer = float(np.nansum(answer))
    total = on_answer + float(np.nansum(matrix))
    return {"sum": on_answer / total, "count": 1.0} if total > 0 else {}


def _vertical(recs: Sequence[Record]) -> list[list[list[float | None]]] | None:
    for r in select(list(recs), "receiver"):
        v = r.detail.get("vertical")
        if isinstance(v, list) and v:
            return v
    return None


def receiver_kurtosis_features(recs: list[Record], _: str) -> Features:
    """Per head (layer, head): its kurtosis over the trace's steps, and a count."""
    vertical = _vertical(recs)
    out: Features = {}
    for layer, heads in enumerate(vertical or []):
        for head, steps in enumerate(heads):
            k = kurtosis(steps)
            if k is not None:
                out[("k", layer, head)] = k
                out[("n", layer, head)] = 1.0
    return out


def top_heads(s: Features, top_k: int = TOP_K) -> list[tuple[int, int, float]]:
    """(layer, head, mean kurtosis) of the ``top_k`` heads with the highest mean kurtosis over
    the traces that define it, highest first (ties in layer, head order)."""
    means = [(key[1], key[2], s[key] / s[("n", key[1], key[2])]) for key in s
             if isinstance(key, tuple) and key[0] == "k" and s.get(("n", key[1], key[2]), 0) > 0]
    means.sort(key=lambda x: (-x[2], x[0], x[1]))
    return means[:top_k]


def receiver_kurtosis_combine(s: Features) -> float | None:
    """The mean of the top heads' mean kurtosis."""
    top = top_heads(s)
    return sum(k for _, _, k in top) / len(top) if top else None


def receiver_agreement_features(recs: list[Record], _: str) -> Features:
    """Head kurtoses (to choose the top heads), and the trace's vertical scores and resampling
    importance of the steps that have both, keyed by trace id (a bootstrap draw that repeats
    the trace repeats them, and its count divides them out)."""
    vertical = _vertical(recs)
    importance = {r.step: float(r.value) for r in select(recs, "resample")
                  if r.step is not None and r.value is not None}
    if vertical is None or not importance:
        return {}
    tid = recs[0].trace_id
    out = receiver_kurtosis_features(recs, "")
    steps = sorted(importance)
    for layer, heads in enumerate(vertical):
        for head, values in enumerate(heads):
            for j in steps:
                if j < len(values) and values[j] is not None:
                    out[("v", tid, layer, head, j)] = float(values[j])
    for j in steps:
        out[("r", tid, j)] = importance[j]
    out[("c", tid)] = 1.0
    return out


def receiver_agreement_combine(s: Features) -> float | None:
    """The count-weighted mean over traces of the Spearman correlation of receiver scores
    (over the checkpoint's top heads) with resampling importance."""
    top = [(layer, head) for layer, head, _ in top_heads(s)]
    if not top:
        return None
    total = weight = 0.0
    for key, count in s.items():
        if not (isinstance(key, tuple) and key[0] == "c" and count > 0):
            continue
        tid = key[1]
        steps = sorted(k[2] for k in s if isinstance(k, tuple) and k[0] == "r" and k[1] == tid)
        scores, imp = [], []
        for j in steps:
            vals = [s[("v", tid, lay, hd, j)] for lay, hd in top if ("v", tid, lay, hd, j) in s]
            if vals:
                scores.append(sum(vals) / len(vals) / count)
                imp.append(s[("r", tid, j)] / count)
        rho = spearman(scores, imp)
        if rho is not None:
            total += rho * count
            weight += count
    return total / weight if weight > 0 else None


def _checkpoint_sums(records: Sequence[Record]) -> Features:
    sums: dict[Hashable, float] = {}
    for recs in group_by_trace(records).values():
        for k, v in receiver_kurtosis_features(recs, "").items():
            sums[k] = sums.get(k, 0.0) + v
    return sums


def receiver_scores(records: Sequence[Record], top_k: int = TOP_K
                    ) -> dict[str, dict[int, float]]:
    """Each trace's steps' receiver score: the mean vertical score over the top ``top_k`` heads
    of the records' checkpoint (one checkpoint's records)."""
    top = [(layer, head) for layer, head, _ in top_heads(_checkpoint_sums(records), top_k)]
    out: dict[str, dict[int, float]] = {}
    for tid, recs in group_by_trace(records).items():
        vertical = _vertical(recs)
        if vertical is None or not top:
            continue
        n = len(vertical[0][0])
        scores = {}
        for j in range(n):
            vals = [vertical[lay][hd][j] for lay, hd in top if vertical[lay][hd][j] is not None]
            if vals:
                scores[j] = float(sum(vals) / len(vals))
        out[tid] = scores
    return out


def receiver_summary(records: Sequence[Record], top_k: int = TOP_K) -> dict[str, Any] | None:
    """Per checkpoint, its top ``top_k`` receiver heads with their mean kurtosis and the number
    of traces behind it, and each head's mean kurtosis as a layer x head grid (None where
    undefined); None without ``receiver`` records."""
    out: dict[str, Any] = {}
    labels = list(dict.fromkeys(r.checkpoint for r in records))
    for label in labels:
        mine = [r for r in records if r.checkpoint == label]
        sums = _checkpoint_sums(mine)
        if not sums:
            continue
        n_layers = 1 + max(k[1] for k in sums)
        n_heads = 1 + max(k[2] for k in sums)
        grid = [[None if sums.get(("n", lay, hd), 0) == 0 else
                 sums[("k", lay, hd)] / sums[("n", lay, hd)] for hd in range(n_heads)]
                for lay in range(n_layers)]
        out[label] = {
            "top_k": top_k,
            "heads": [{"layer": lay, "head": hd, "kurtosis": k,
                       "traces": int(sums[("n", lay, hd)])}
                      for lay, hd, k in top_heads(sums, top_k)],
            "kurtosis": grid,
        }
    return out or None
