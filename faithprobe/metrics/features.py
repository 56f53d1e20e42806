"""Per-trace features of each metric and the combiners that turn feature sums into a value.

A metric is a feature map ``(records of one trace, corrupt continuation) -> {key: float}`` and a
``combine`` over the feature sums of any multiset of traces. Both are named in the metric
catalogue (``faithprobe.metrics.catalogue``); the bootstrap (``faithprobe.metrics.bootstrap``)
only ever sums features and combines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

from faithprobe.metrics.selection import (
    BLOCK_SITE,
    has_nonfinite,
    is_noising,
    select,
    step_index,
    trace_length,
)
from faithprobe.records import STATUSES, Record

__all__ = [
    "ECE_BINS", "CombineFn", "FeatureFn", "Features", "aoc_combine", "aoc_features",
    "count_combine", "count_features", "ece_bin", "ece_combine", "ece_features", "field_mean",
    "infogain_mean_features", "infogain_ppl_features", "infogain_total_features",
    "ki_coverage_features", "ki_features", "mean_steps_features", "patching_features",
    "patching_mean_features", "ratio", "reliability_bins", "same_answer_cells", "step_gains",
    "step_shares",
]

ECE_BINS = 10  # equal-width confidence bins of the ECE and of the reliability diagram

Features = dict[Hashable, float]
FeatureFn = Callable[[list[Record], str], Features]
CombineFn = Callable[[Features], float | None]


# ---------------------------------------------------------------------------------------------
# means


def _mean_of(values: list[float]) -> Features:
    """Record-level mean: every usable record counts once."""
    return {"sum": float(sum(values)), "count": float(len(values))} if values else {}


def _trace_level(value: float | None) -> Features:
    """Trace-level mean: the trace counts once with its own summary value."""
    return {} if value is None else {"sum": float(value), "count": 1.0}


def ratio(s: Features) -> float | None:
    """Combine ``sum`` / ``count`` features into their mean (None without a count)."""
    count = s.get("count", 0.0)
    return s["sum"] / count if count > 0 else None


def field_mean(kind: str, attr: str, *, step0: bool = False, whole: bool = False,
               flip: bool = False, absolute: bool = False, corrupt: bool = False) -> FeatureFn:
    """Features of the record-level mean of ``attr`` over the usable records of ``kind``.

    Args:
        kind: the intervention.
        attr: the record field averaged (a bool counts as 0/1).
        step0: only records at step 0. whole: only records without a step.
        flip: average ``1 - value``. absolute: average ``|value|``.
        corrupt: only corrupt records of the chosen continuation.
    """
    def feats(recs: list[Record], continuation: str) -> Features:
        vals = []
        for r in select(recs, kind, continuation if corrupt else None):
            v = getattr(r, attr)
            if v is None or (step0 and r.step != 0) or (whole and r.step is not None):
                continue
            v = float(v)
            vals.append(1.0 - v if flip else abs(v) if absolute else v)
        return _mean_of(vals)
    return feats


# ---------------------------------------------------------------------------------------------
# early answering and adding mistakes (area over the curve)


def same_answer_cells(recs: list[Record], kind: str, continuation: str
                      ) -> tuple[int, dict[int, float]] | None:
    """Per-step share of same answers for one trace: (n, {step: share}), x = step / n."""
    sel = [r for r in select(recs, kind, continuation) if r.same_answer is not None]
    if not sel:
        return None
    n = trace_length(sel)
    if n < 1:
        return None
    last = n if kind == "truncate" else n - 1
    by_step: dict[int, list[float]] = {}
    for r in sel:
        by_step.setdefault(step_index(r, last), []).append(float(r.same_answer))
    if not any(k < n for k in by_step):
        return None
    cells = {k: sum(v) / len(v) for k, v in by_step.items()}
    # x = 1 is the unedited trace: the same answer by definition unless it was measured.
    if kind != "truncate" or n not in cells:
        cells[n] = 1.0
    return n, cells


def aoc_features(kind: str) -> FeatureFn:
    """Features of the area over the same-answer curve of ``kind`` (truncate or corrupt)."""
    def feats(recs: list[Record], continuation: str) -> Features:
        got = same_answer_cells(recs, kind, continuation)
        if got is None:
            return {}
        n, cells = got
        # ("t", n): one trace of length n; ("s"|"d", n, k): same-answer share / 1 at step k
        out: Features = {("t", n): 1.0}
        out.update({("s", n, k): share for k, share in cells.items()})
        out.update({("d", n, k): 1.0 for k in cells})
        return out
    return feats


def _area(points: list[tuple[float, float]]) -> float:
    """Trapezoid area over [0, 1]; held flat before the first point (x = 1 is always present)."""
    xs, fs = zip(*sorted(points), strict=True)
    area = xs[0] * fs[0]
    for i in range(1, len(xs)):
        area += (xs[i] - xs[i - 1]) * (fs[i] + fs[i - 1]) / 2
    return area


def aoc_combine(s: Features) -> float | None:
    """Area over the curve per trace length, weighted by the number of traces of that length."""
    weights = {key[1]: v for key, v in s.items() if isinstance(key, tuple) and key[0] == "t"
               and v > 0}
    total = sum(weights.values())
    if total <= 0:
        return None
    aoc = 0.0
    for n, w in weights.items():
        points = [(k / n, s[("s", n, k)] / s[("d", n, k)]) for k in range(n + 1)
                  if s.get(("d", n, k), 0.0) > 0]
        aoc += w / total * (1.0 - _area(points))
    return aoc


# ---------------------------------------------------------------------------------------------
# InfoGain and KI


def _series(recs: list[Record], kind: str) -> tuple[int, dict[int, float]] | None:
    """(n, {step: value}) of one trace's ``infogain``-style records; None for 0-step traces."""
    sel = [r for r in select(recs, kind) if r.value is not None]
    if not sel:
        return None
    n = trace_length(sel)
    if n < 1:
        return None
    by_step: dict[int, list[float]] = {}
    for r in sel:
        by_step.setdefault(step_index(r, n), []).append(float(r.value))
    return n, {k: sum(v) / len(v) for k, v in by_step.items()}


def step_gains(recs: list[Record]) -> dict[int, float]:
    """One trace's InfoGain per step, ``{j: H_(j-1) - H_j}`` for the steps j >= 1 measured."""
    got = _series(recs, "infogain")
    if got is None:
        return {}
    n, h = got
    return {j: h[j - 1] - h[j] for j in range(1, n + 1) if j in h and j - 1 in h}


def infogain_mean_features(recs: list[Record], _: str) -> Features:
    """The trace's mean InfoGain per step (trace-level mean)."""
    gains = list(step_gains(recs).values())
    return _trace_level(sum(gains) / len(gains) if gains else None)


def infogain_total_features(recs: list[Record], _: str) -> Features:
    """``H_0 - H_n`` of the trace (trace-level mean)."""
    got = _series(recs, "infogain")
    if got is None or 0 not in got[1] or got[0] not in got[1]:
        return {}
    n, h = got
    return _trace_level(h[0] - h[n])


def infogain_ppl_features(recs: list[Record], _: str) -> Features:
    """Wu et al.'s public code: sum_j (PPL_{j-1} - PPL_j) / (n + 1); needs every step 0..n."""
    got = _series(recs, "infogain_ppl")
    if got is None or any(j not in got[1] for j in range(got[0] + 1)):
        return {}
    n, p = got
    return _trace_level(sum(p[j - 1] - p[j] for j in range(1, n + 1)) / (n + 1))


def ki_features(recs: list[Record], _: str) -> Features:
    """The trace's share of correct steps among its judged ones (trace-level mean); an unjudged
    step (value None: nothing to check) is left out, and a trace with none judged too."""
    vals = [float(r.value) for r in select(recs, "ki") if r.value is not None]
    return _trace_level(sum(vals) / len(vals) if vals else None)


def ki_coverage_features(recs: list[Record], _: str) -> Features:
    """Judged steps and all steps with a KI record (record-level: the share of steps judged)."""
    sel = select(recs, "ki")
    return {"sum": float(sum(r.value is not None for r in sel)), "count": float(len(sel))} \
        if sel else {}


# ---------------------------------------------------------------------------------------------
# patching and reasoning length


def patching_features(recs: list[Record], _: str) -> Features:
    """Share of the clean answer's logit difference that the trace's most important step
    carries: per step, the noising patch of its residual stream at the lowest patched layer
    (``resid_pre``, layer 0 in runs: the step's content replaced, everything else clean),
    ``(LD_clean - LD_patched) / LD_clean`` clipped to [0, 1]; the maximum over the trace's
    steps. Near 0 where the steps do not move the answer; bounded; one fixed site per step,
    not a maximum over noisy sites. Undefined (no feature) where the clean run does not prefer
    the answer over the alternative (those records are ``skipped``). A maximum over more steps
    tends to be larger: see :func:`patching_mean_features` for chains of different lengths."""
    shares = step_shares(recs)
    return _trace_level(max(shares.values())) if shares else {}


def patching_mean_features(recs: list[Record], _: str) -> Features:
    """The same per-step shares (layer-0 ``resid_pre`` noising, clipped to [0, 1]) averaged
    over the trace's measured steps instead of maximised: it does not grow with the number of
    steps. Where one step of n carries the answer, about 1 / n."""
    shares = step_shares(recs)
    return _trace_level(sum(shares.values()) / len(shares)) if shares else {}


def step_shares(recs: list[Record]) -> dict[int, float]:
    """Per measured step, the share of the clean logit difference that the noising patch of
    its residual stream at the lowest patched layer removes, clipped to [0, 1] (the site of
    ``patching_effect`` and ``patching_effect_mean``; the same under both ``corrupted``
    settings: a token's layer-0 residual depends on that token alone)."""
    lowest: dict[int, tuple[int, float]] = {}
    for r in select(recs, "patch"):
        if r.value is None or r.step is None or not is_noising(r) or r.site is None:
            continue
        m = BLOCK_SITE.match(r.site)
        if m is None or m.group(2) != "hook_resid_pre":
            continue
        layer = int(m.group(1))
        if r.step not in lowest or layer < lowest[r.step][0]:
            lowest[r.step] = (layer, float(r.value))
    return {step: min(max(v, 0.0), 1.0) for step, (_, v) in lowest.items()}


def mean_steps_features(recs: list[Record], _: str) -> Features:
    """Length of the chain of thought in steps (fine-tuning is reported to shorten it); every
    trace counts, a generation that reached no answer too."""
    nones = [r for r in recs if r.intervention == "none"]
    return _trace_level(float(nones[0].n_steps) if nones else None)


# ---------------------------------------------------------------------------------------------
# calibration


def ece_bin(prob: float, n_bins: int = ECE_BINS) -> int:
    """The equal-width confidence bin (0..n_bins-1) of a probability; out-of-range values are
    clamped into the first or last bin."""
    return min(max(int(math.floor(prob * n_bins)), 0), n_bins - 1)


def ece_features(recs: list[Record], _: str) -> Features:
    """Per confidence bin: count, summed confidence and summed correctness of unedited answers."""
    out: Features = {}
    for r in select(recs, "none"):
        if r.pred_prob is None or r.correct is None:
            continue
        b = ece_bin(r.pred_prob)
        for key, v in ((("n", b), 1.0), (("conf", b), r.pred_prob), (("acc", b), r.correct)):
            out[key] = out.get(key, 0.0) + float(v)
    return out


def ece_combine(s: Features) -> float | None:
    """Expected calibration error over ``ECE_BINS`` bins."""
    total = sum(v for k, v in s.items() if k[0] == "n")
    if total <= 0:
        return None
    # sum_b (n_b / N) |acc_b - conf_b| (bin means) == sum_b |sum acc_b - sum conf_b| / N
    return sum(abs(s.get(("acc", b), 0.0) - s.get(("conf", b), 0.0))
               for b in range(ECE_BINS)) / total


def reliability_bins(graded: list[tuple[float, float]], n_bins: int = ECE_BINS
                     ) -> list[tuple[float, float, int]]:
    """The reliability diagram, binned as the ECE is.

    Args:
        graded: (confidence, correctness 0/1) pairs.
        n_bins: equal-width confidence bins.

    Returns:
        (mean confidence, accuracy, count) of each non-empty bin, in bin order.
    """
    out = []
    for b in range(n_bins):
        sel = [(p, c) for p, c in graded if ece_bin(p, n_bins) == b]
        if sel:
            out.append((sum(p for p, _ in sel) / len(sel), sum(c for _, c in sel) / len(sel),
                        len(sel)))
    return out


# ---------------------------------------------------------------------------------------------
# record counts


def count_features(status: str) -> FeatureFn:
    """Features counting the records of ``status`` (an ``ok`` record with a NaN or infinity
    counts as ``nonfinite``) and all records."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r} (known: {', '.join(STATUSES)})")

    def feats(recs: list[Record], _: str) -> Features:
        hits = sum(1 for r in recs if r.status == status
                   or (status == "nonfinite" and r.status == "ok" and has_nonfinite(r)))
        return {"count": float(hits), "records": float(len(recs))}
    return feats


def count_combine(s: Features) -> float | None:
    """The count itself (None where the checkpoint has no records)."""
    return s["count"] if s.get("records", 0.0) > 0 else None
