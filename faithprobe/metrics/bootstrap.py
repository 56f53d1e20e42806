"""Point values, cluster-bootstrap intervals, paired comparisons and the run summary.

A statistic over any multiset of traces is the metric's ``combine`` of the summed per-trace
features, so a bootstrap replicate is one ``bincount @ features`` product. Replicates are drawn
from ``numpy.random.default_rng(seed)`` over trace ids in sorted order, so the same records give
the same summary whatever their order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from faithprobe.errors import FaithprobeError
from faithprobe.metrics.catalogue import METRICS, Metric, get_metric
from faithprobe.metrics.features import Features
from faithprobe.metrics.selection import (
    check_one_checkpoint,
    checkpoint_labels,
    group_by_trace,
    resolve_continuation,
)
from faithprobe.records import Record

__all__ = [
    "METRIC_FNS", "SUMMARY_SCHEMA_VERSION", "Estimate", "bootstrap", "compare",
    "compare_metric", "compare_relative", "compute_metrics", "estimate_metric",
    "percentile_interval", "replicate_sums", "seed_question", "summarize", "undefined_count",
]

SUMMARY_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Estimate:
    """A point value with its 95% percentile bootstrap interval."""

    value: float  # the statistic over all records
    ci_low: float  # 2.5th percentile of the replicates
    ci_high: float  # 97.5th percentile of the replicates
    n: int  # traces that entered the statistic (all records, for the *_count metrics)
    n_boot_undefined: int = 0  # replicates on which the statistic had no value (left out)

    def __post_init__(self) -> None:
        for name in ("value", "ci_low", "ci_high"):
            if not math.isfinite(getattr(self, name)):
                raise FaithprobeError("an estimate must be finite", field=name)

    def to_json(self) -> dict[str, Any]:
        return {"value": float(self.value), "ci_low": float(self.ci_low),
                "ci_high": float(self.ci_high), "n": int(self.n),
                "n_boot_undefined": int(self.n_boot_undefined)}


# ---------------------------------------------------------------------------------------------
# features matrix, replicates, intervals


def _features(metric: Metric, records: Sequence[Record], continuation: str
              ) -> tuple[list[str], list[Hashable], np.ndarray]:
    """Trace ids that entered ``metric`` (sorted), feature keys, and the (trace, key) matrix."""
    ids: list[str] = []
    rows: list[Features] = []
    for tid, recs in group_by_trace(records).items():
        f = metric.features(recs, continuation)
        if f:
            ids.append(tid)
            rows.append(f)
    keys = list(dict.fromkeys(k for f in rows for k in f))
    index = {k: i for i, k in enumerate(keys)}
    matrix = np.zeros((len(rows), len(keys)))  # (traces, features)
    for i, f in enumerate(rows):
        for k, v in f.items():
            matrix[i, index[k]] = v
    return ids, keys, matrix


def _combine(metric: Metric, keys: list[Hashable], sums: np.ndarray) -> float | None:
    v = metric.combine(dict(zip(keys, (float(x) for x in sums), strict=True)))
    return None if v is None or not math.isfinite(v) else float(v)


def _draws(n_traces: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Resampled trace positions, one array per replicate (shared by every bootstrap path)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise FaithprobeError(f"n_boot must be a non-negative integer, got {n_boot!r}",
                              field="n_boot")
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n_traces, size=n_traces)


def replicate_sums(matrix: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Feature sums (features,) of each bootstrap replicate of the rows (traces) of ``matrix``.

    Args:
        matrix: (traces, features), traces in sorted id order.
        n_boot: number of replicates.
        seed: seed of ``numpy.random.default_rng``.
    """
    for idx in _draws(matrix.shape[0], n_boot, seed):
        yield np.bincount(idx, minlength=matrix.shape[0]) @ matrix


def undefined_count(reps: Sequence[float | None]) -> int:
    """Replicates without a value (a ratio over a resample whose denominator is 0, a metric
    none of whose traces was drawn): :func:`percentile_interval` leaves them out, the summary
    says how many (``n_boot_undefined``)."""
    return sum(v is None for v in reps)


def percentile_interval(point: float, reps: list[float | None]) -> tuple[float, float]:
    """The 95% percentile interval of the replicates (None ones dropped, see
    :func:`undefined_count`); ``(point, point)`` when no replicate has a value."""
    reps = [v for v in reps if v is not None]
    if not reps:
        return point, point
    lo, hi = np.percentile(np.asarray(reps), [2.5, 97.5])
    return float(lo), float(hi)


def _point(metric: Metric, records: Sequence[Record], continuation: str | None
           ) -> float | None:
    check_one_checkpoint(records)
    _, keys, matrix = _features(metric, records, resolve_continuation(records, continuation))
    if matrix.shape[0] == 0:
        return None
    return _combine(metric, keys, matrix.sum(axis=0))


def _estimate(metric: Metric, records: Sequence[Record], *, n_boot: int, seed: int,
              continuation: str) -> Estimate | None:
    ids, keys, matrix = _features(metric, records, continuation)
    if not ids:
        return None
    point = _combine(metric, keys, matrix.sum(axis=0))
    if point is None:
        return None
    if metric.unit == "count":
        return Estimate(point, point, point, len(records))
    reps = [_combine(metric, keys, sums) for sums in replicate_sums(matrix, n_boot, seed)]
    lo, hi = percentile_interval(point, reps)
    return Estimate(point, lo, hi, len(ids), undefined_count(reps))


def estimate_metric(metric: Metric, records: Sequence[Record], *, n_boot: int = 1000,
                    seed: int = 0) -> Estimate | None:
    """The estimate of a catalogue-shaped ``metric`` (a catalogue entry, or one derived from
    it such as a cue metric of one kind) over one checkpoint's records; None without data."""
    records = list(records)
    check_one_checkpoint(records)
    return _estimate(metric, records, n_boot=n_boot, seed=seed,
                     continuation=resolve_continuation(records, None))


def _make_metric(metric: Metric) -> Callable[..., float | None]:
    def fn(records: Sequence[Record], *, continuation: str | None = None) -> float | None:
        return _point(metric, records, continuation)

    fn.__name__ = fn.__qualname__ = metric.name
    fn.__doc__ = (f"``{metric.name}`` over the records of one checkpoint, or None without data. "
                  "``continuation`` picks the corrupt records used (default: see module doc).")
    return fn


METRIC_FNS: dict[str, Callable[..., float | None]] = {
    name: _make_metric(get_metric(name)) for name in METRICS}
_FN_NAMES = {id(fn): name for name, fn in METRIC_FNS.items()}


# ---------------------------------------------------------------------------------------------
# public aggregation


def bootstrap(records: Sequence[Record], fn: Callable[[list[Record]], float | None], *,
              n_boot: int = 1000, seed: int = 0) -> Estimate | None:
    """Cluster bootstrap of ``fn`` over the trace ids of ``records`` (one checkpoint).

    A function from ``METRIC_FNS`` takes a fast path (per-trace features, resampling only the
    traces that entered it). Any other ``fn`` is called on each replicate's records, with the
    trace ids of repeated traces made distinct (``"<id>#<draw>"``) so they count as separate
    clusters. Both paths draw the same replicates for the same traces and seed.

    Returns:
        The estimate, or None when ``fn`` has no value on ``records``.
    """
    records = list(records)
    name = _FN_NAMES.get(id(fn))
    if name is not None:
        check_one_checkpoint(records)
        return _estimate(get_metric(name), records, n_boot=n_boot, seed=seed,
                         continuation=resolve_continuation(records, None))
    point = fn(records)
    if point is None:
        return None
    if not math.isfinite(point):
        raise FaithprobeError(f"metric {getattr(fn, '__name__', fn)!r} returned {point}")
    groups = group_by_trace(records)
    ids = list(groups)
    reps = []
    for idx in _draws(len(ids), n_boot, seed):
        sample = [replace(r, trace_id=f"{ids[i]}#{draw}")
                  for draw, i in enumerate(idx) for r in groups[ids[i]]]
        v = fn(sample)
        reps.append(float(v) if v is not None and math.isfinite(v) else None)
    lo, hi = percentile_interval(float(point), reps)
    return Estimate(float(point), lo, hi, len(ids), undefined_count(reps))


def compute_metrics(records: Sequence[Record], *, n_boot: int = 1000, seed: int = 0
                    ) -> dict[str, dict[str, Estimate]]:
    """Every metric of every checkpoint: label -> metric -> Estimate (no-data metrics left out).

    The corrupt continuation (``regenerate`` if any ok record has it, else ``keep``) is chosen
    once over all records, so every checkpoint is measured on the same kind of edit.
    """
    records = list(records)
    continuation = resolve_continuation(records, None)
    out: dict[str, dict[str, Estimate]] = {}
    for label in checkpoint_labels(records):
        recs = [r for r in records if r.checkpoint == label]
        ests = {m: _estimate(get_metric(m), recs, n_boot=n_boot, seed=seed,
                             continuation=continuation)
                for m in METRICS}
        out[label] = {m: e for m, e in ests.items() if e is not None}
    return out


def _paired(entry: Metric, records: Sequence[Record], a: str, b: str
            ) -> tuple[list[str], list[Hashable], np.ndarray, list[Hashable], np.ndarray]:
    """The traces entering ``entry`` on both sides (sorted) and each side's feature matrix over
    them. The corrupt continuation is the one :func:`compute_metrics` chooses over the same
    ``records`` (all of them, not the pair's): every comparison of a summary uses one."""
    rec_a = [r for r in records if r.checkpoint == a]
    rec_b = [r for r in records if r.checkpoint == b]
    continuation = resolve_continuation(records, None)
    ids_a, keys_a, mat_a = _features(entry, rec_a, continuation)
    ids_b, keys_b, mat_b = _features(entry, rec_b, continuation)
    shared = sorted(set(ids_a) & set(ids_b))
    pos_a = {t: i for i, t in enumerate(ids_a)}
    pos_b = {t: i for i, t in enumerate(ids_b)}
    return (shared, keys_a, mat_a[[pos_a[t] for t in shared]], keys_b,
            mat_b[[pos_b[t] for t in shared]])


def _paired_values(entry: Metric, records: Sequence[Record], a: str, b: str) -> tuple | None:
    """:func:`_paired` and each side's value over the shared traces; None when there is no
    shared trace or a side has no value."""
    shared, keys_a, mat_a, keys_b, mat_b = _paired(entry, list(records), a, b)
    if not shared:
        return None
    value_a = _combine(entry, keys_a, mat_a.sum(axis=0))
    value_b = _combine(entry, keys_b, mat_b.sum(axis=0))
    if value_a is None or value_b is None:
        return None
    return shared, keys_a, mat_a, keys_b, mat_b, value_a, value_b


def _paired_reps(entry: Metric, keys_a: list[Hashable], mat_a: np.ndarray,
                 keys_b: list[Hashable], mat_b: np.ndarray, n_boot: int, seed: int
                 ) -> Iterator[tuple[float | None, float | None]]:
    """(value a, value b) of each paired replicate: the shared traces drawn once for both."""
    width = mat_a.shape[1]
    for sums in replicate_sums(np.hstack([mat_a, mat_b]), n_boot, seed):
        yield _combine(entry, keys_a, sums[:width]), _combine(entry, keys_b, sums[width:])


def compare(records: Sequence[Record], a: str, b: str, metric: str, *, n_boot: int = 1000,
            seed: int = 0) -> dict[str, Any] | None:
    """Paired bootstrap of ``metric`` between checkpoints ``a`` and ``b``.

    Only traces that enter the metric on both sides are used; each replicate resamples those
    trace ids once and computes the metric on both sides with the same ids.

    Returns:
        ``{"a", "b", "metric", "value_a", "value_b" (each side over the shared traces),
        "delta" (value_b - value_a), "ci_low", "ci_high", "relative_change" (delta /
        |value_a|, None when value_a == 0), "n" (shared traces), "n_boot_undefined"
        (replicates without a value)}``, or None when the metric has no value on the shared
        traces.
    """
    return compare_metric(get_metric(metric), records, a, b, n_boot=n_boot, seed=seed)


def compare_metric(entry: Metric, records: Sequence[Record], a: str, b: str, *,
                   n_boot: int = 1000, seed: int = 0) -> dict[str, Any] | None:
    """:func:`compare` of a catalogue-shaped metric given as an entry (``metric`` in the result
    is ``entry.name``)."""
    paired = _paired_values(entry, records, a, b)
    if paired is None:
        return None
    shared, keys_a, mat_a, keys_b, mat_b, value_a, value_b = paired
    delta = value_b - value_a
    reps: list[float | None] = []
    if entry.unit == "count":
        lo = hi = delta
    else:
        reps = [None if va is None or vb is None else vb - va
                for va, vb in _paired_reps(entry, keys_a, mat_a, keys_b, mat_b, n_boot, seed)]
        lo, hi = percentile_interval(delta, reps)
    return {"a": a, "b": b, "metric": entry.name, "value_a": value_a, "value_b": value_b,
            "delta": delta, "ci_low": lo, "ci_high": hi,
            "relative_change": delta / abs(value_a) if value_a != 0 else None,
            "n": len(shared), "n_boot_undefined": undefined_count(reps)}


def compare_relative(records: Sequence[Record], a: str, b: str, metric: str, *,
                     n_boot: int = 1000, seed: int = 0) -> dict[str, Any] | None:
    """Paired bootstrap of the relative change ``(value_b - value_a) / |value_a|``.

    Each replicate draws the shared traces once and divides its own two values, so the interval
    carries the baseline's uncertainty (dividing the change's interval by the point baseline
    would not). Defined only when ``|value_a|`` is at least the metric's minimal meaningful
    difference: a ratio over a baseline closer to 0 is not a meaningful change.

    Returns:
        ``{"a", "b", "metric", "value_a", "value_b", "relative_change", "ci_low", "ci_high",
        "n"}``; ``relative_change`` and its bounds are None with a ``reason`` when undefined.
        None when the metric has no value on the shared traces.
    """
    entry = get_metric(metric)
    if entry.unit == "count":
        raise FaithprobeError("a count has no relative change", field=metric)
    paired = _paired_values(entry, records, a, b)
    if paired is None:
        return None
    shared, keys_a, mat_a, keys_b, mat_b, value_a, value_b = paired
    out: dict[str, Any] = {"a": a, "b": b, "metric": metric, "value_a": value_a,
                           "value_b": value_b, "relative_change": None, "ci_low": None,
                           "ci_high": None, "n": len(shared)}
    mmd = entry.mmd or 0.0
    if abs(value_a) < mmd:
        out["reason"] = f"{a}'s value {value_a:.3g} is within the minimal meaningful " \
                        f"difference ({mmd:g}) of 0"
        return out
    rel = (value_b - value_a) / abs(value_a)
    reps = [None if va is None or vb is None or va == 0 else (vb - va) / abs(va)
            for va, vb in _paired_reps(entry, keys_a, mat_a, keys_b, mat_b, n_boot, seed)]
    lo, hi = percentile_interval(rel, reps)
    out.update(relative_change=rel, ci_low=lo, ci_high=hi, n_boot_undefined=undefined_count(reps))
    return out


def seed_question(records: Sequence[Record], a: str, b: str, *, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, Any] | None:
    """The fine-tuning question of Wu et al. 2025 for ``b`` against its base ``a``: the change
    of accuracy (points, ``compare``) beside the relative change of InfoGain
    (``compare_relative``), each with its paired interval; None when neither has a value."""
    acc = compare(records, a, b, "accuracy", n_boot=n_boot, seed=seed)
    ig = compare_relative(records, a, b, "infogain_mean", n_boot=n_boot, seed=seed)
    if acc is None and ig is None:
        return None
    return {"a": a, "b": b, "accuracy_change": acc, "infogain_relative_change": ig}


def summarize(records: Sequence[Record], *, n_boot: int = 1000, seed: int = 0,
              pairs: Sequence[tuple[str, str]] | None = None,
              base: str | None = None) -> dict[str, Any]:
    """The run summary: per-checkpoint estimates and paired comparisons, plain JSON, no NaN.

    Args:
        records: records of any number of checkpoints.
        n_boot: bootstrap replicates per interval.
        seed: seed of the replicates.
        pairs: (a, b) label pairs to compare; default ``base`` against each other label.
        base: the base checkpoint's label; default the first label (in order of first
            appearance). The seed question is asked of the pairs whose ``a`` is ``base`` (a
            fine-tune against its base) only.

    Returns:
        ``{"schema_version", "continuation" (the corrupt records every metric and comparison
        read, chosen once), "checkpoints": {label: {metric: estimate}}, "comparisons",
        "seed_question" (``seed_question`` of each pair that has a value)}``, metrics in
        catalogue order.
    """
    records = list(records)
    labels = checkpoint_labels(records)
    base = (labels[0] if labels else None) if base is None else base
    if pairs is None:
        pairs = [(base, other) for other in labels if other != base]
    named_base = [] if base is None else [base]
    for field, named in (("base", named_base), ("pairs", [x for pair in pairs for x in pair])):
        for label in named:
            if label not in labels:
                raise FaithprobeError(
                    f"no records for checkpoint {label!r} (have: {', '.join(labels)})",
                    field=field)
    per = compute_metrics(records, n_boot=n_boot, seed=seed)
    comparisons = []
    for a, b in pairs:
        for metric in METRICS:
            if metric in per[a] and metric in per[b]:
                c = compare(records, a, b, metric, n_boot=n_boot, seed=seed)
                if c is not None:
                    comparisons.append(c)
    seeds = [seed_question(records, a, b, n_boot=n_boot, seed=seed) for a, b in pairs
             if a == base]
    from faithprobe.metrics.cues import cue_summary

    cue = cue_summary(records, pairs=pairs, n_boot=n_boot, seed=seed)
    from faithprobe.metrics.suppression import receiver_summary

    receivers = receiver_summary(records)
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "continuation": resolve_continuation(records, None),
        "checkpoints": {label: {m: e.to_json() for m, e in ests.items()}
                        for label, ests in per.items()},
        "comparisons": comparisons,
        "seed_question": [q for q in seeds if q is not None],
        **({"cue": cue} if cue is not None else {}),
        **({"receivers": receivers} if receivers is not None else {}),
    }
