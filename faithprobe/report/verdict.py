"""The report's words and numbers: the verdict sentences and the rows of its measure tables.

Shares (accuracy, flip rates, KI...) are given in percentage points, the InfoGain family as a
relative change, everything else in its own unit, always with the 95% interval; an interval that
includes 0 reads "no clear change". Units, labels and orders come from the metric catalogue
(``faithprobe.metrics.catalogue``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from faithprobe.metrics import METRICS_BY_NAME, TABLE_METRICS, UNIT_TITLES, VERDICT_METRICS

__all__ = [
    "COMPARISON_HEADER", "checkpoint_rows", "comparison_rows", "estimate_text", "forest_rows",
    "metric_display", "sort_forest_rows", "verdict_lines",
]

COMPARISON_HEADER = ["comparison", "measure", "change [95% CI]", "raw delta (b - a) [95% CI]",
                     "relative", "n traces", "reading"]


def metric_display(metric: str) -> tuple[str, str, str]:
    """(label, unit, description) of a metric; a name the catalogue lacks shows as itself, in
    its own unit, without a description."""
    entry = METRICS_BY_NAME.get(metric)
    return (metric, "value", "") if entry is None else (entry.label, entry.unit,
                                                         entry.description)


# ---------------------------------------------------------------------------------------------
# numbers


def _decimals(*xs: float) -> int:
    scale = max(abs(x) for x in xs)
    if scale == 0 or not math.isfinite(scale):
        return 2
    return min(6, max(2, 1 - math.floor(math.log10(scale))))


def estimate_text(metric: str, e: Mapping[str, Any]) -> str:
    """A checkpoint's value with its interval, in the metric's display unit."""
    v, lo, hi = e["value"], e["ci_low"], e["ci_high"]
    kind = metric_display(metric)[1]
    if kind == "count":
        return f"{v:.0f}"
    if kind == "points":
        return f"{100 * v:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    d = _decimals(v, lo, hi)
    return f"{v:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def _relative_scale(c: Mapping[str, Any], summary: Mapping[str, Any]) -> float | None:
    """|value of a| that ``relative_change`` was taken against (shared traces), or None."""
    rel, delta = c.get("relative_change"), c["delta"]
    if rel is not None and rel != 0 and delta != 0:
        return abs(delta / rel)
    if rel is None:
        return None
    try:
        scale = abs(summary["checkpoints"][c["a"]][c["metric"]]["value"])
    except (KeyError, TypeError):
        return None
    return scale or None


def _change(c: Mapping[str, Any], summary: Mapping[str, Any]) -> tuple[str, str, float, float,
                                                                       float]:
    """(text, unit kind, delta, lo, hi) of one comparison, in display units."""
    metric, delta, lo, hi = c["metric"], c["delta"], c["ci_low"], c["ci_high"]
    kind = metric_display(metric)[1]
    if kind == "points":
        d, lo_, hi_ = 100 * delta, 100 * lo, 100 * hi
        return f"{d:+.1f} points [{lo_:.1f}, {hi_:.1f}]", kind, d, lo_, hi_
    if kind == "relative":
        scale = _relative_scale(c, summary)
        if scale is not None:
            r, rlo, rhi = (100 * x / scale for x in (delta, lo, hi))
            return f"{r:+.0f}% [{rlo:.0f}%, {rhi:.0f}%]", kind, r, rlo, rhi
        kind = "value"
    if kind == "count":
        return f"{delta:+.0f}", kind, delta, lo, hi
    dec = _decimals(delta, lo, hi)
    return f"{delta:+.{dec}f} [{lo:.{dec}f}, {hi:.{dec}f}]", "value", delta, lo, hi


def _unclear(c: Mapping[str, Any]) -> bool:
    return c["ci_low"] <= 0 <= c["ci_high"]


def _reading(c: Mapping[str, Any]) -> str:
    if metric_display(c["metric"])[1] == "count":
        return ""
    if _unclear(c):
        return "no clear change"
    return "clear increase" if c["delta"] > 0 else "clear decrease"


# ---------------------------------------------------------------------------------------------
# the verdict


def verdict_lines(summary: dict) -> list[str]:
    """The sentences a reader came for: one per compared pair (``b vs a``), quotable.

    Shares are in percentage points, the InfoGain family a relative change (its interval is the
    delta's interval over the first checkpoint's value), the rest in their own units; each with
    its 95% interval, and "no clear change" when the interval includes 0. Without comparisons,
    one line per checkpoint with its headline values. The measures named, and their order, are
    the catalogue's verdict metrics.
    """
    checkpoints = summary.get("checkpoints") or {}
    pairs: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for c in summary.get("comparisons") or []:
        pairs.setdefault((c["a"], c["b"]), {})[c["metric"]] = c
    lines = []
    for (a, b), by_metric in pairs.items():
        parts = []
        for metric in VERDICT_METRICS:
            c = by_metric.get(metric)
            if c is None:
                continue
            text = f"{metric_display(metric)[0]} {_change(c, summary)[0]}"
            parts.append(text + (", no clear change" if _unclear(c) else ""))
        body = "; ".join(parts) if parts else "no headline measure was computed for both"
        lines.append(f"{b} vs {a}: {body}.")
    if lines:
        return lines
    for label, ests in checkpoints.items():
        parts = [f"{metric_display(m)[0]} {estimate_text(m, ests[m])}" for m in VERDICT_METRICS
                 if m in ests]
        body = "; ".join(parts) if parts else "no headline measure could be computed"
        lines.append(f"{label}: {body}.")
    return lines or ["No metric could be computed: the run has no usable records."]


# ---------------------------------------------------------------------------------------------
# table rows


def checkpoint_rows(ests: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """(measure, value [95% CI], n traces, what it measures) of one checkpoint's estimates, in
    the catalogue's table order (unknown metrics after), counts left out."""
    order = ([m for m in TABLE_METRICS if m in ests]
             + [m for m in ests if m not in METRICS_BY_NAME])
    rows = []
    for m in order:
        name, kind, what = metric_display(m)
        if kind == "count":
            continue
        rows.append([name, estimate_text(m, ests[m]), str(ests[m]["n"]), what])
    return rows


def comparison_rows(summary: Mapping[str, Any], prefix: str = "") -> list[list[str]]:
    """One row (``COMPARISON_HEADER``) per comparison of the summary, counts left out."""
    rows = []
    for c in summary.get("comparisons") or []:
        if metric_display(c["metric"])[1] == "count":
            continue
        text = _change(c, summary)[0]
        rel = c.get("relative_change")
        rows.append([f"{prefix}{c['b']} vs {c['a']}", metric_display(c["metric"])[0], text,
                     f"{c['delta']:+.4g} [{c['ci_low']:.4g}, {c['ci_high']:.4g}]",
                     "" if rel is None else f"{100 * rel:+.0f}%", str(c["n"]), _reading(c)])
    return rows


def sort_forest_rows(rows: list[tuple[str, str, float, float, float]]
                     ) -> list[tuple[str, str, float, float, float]]:
    """Forest rows grouped by panel, panels in the catalogue's unit order (stable)."""
    order = list(UNIT_TITLES.values())
    return sorted(rows, key=lambda r: order.index(r[1]))


def forest_rows(summary: Mapping[str, Any], prefix: str = ""
                ) -> list[tuple[str, str, float, float, float]]:
    """(row label, panel title, delta, lo, hi) in display units, one per non-count comparison,
    for ``plots.forest_plot``."""
    rows = []
    for c in summary.get("comparisons") or []:
        if metric_display(c["metric"])[1] == "count":
            continue
        _, kind, d, lo, hi = _change(c, summary)
        rows.append((f"{prefix}{metric_display(c['metric'])[0]} ({c['b']} vs {c['a']})",
                     UNIT_TITLES[kind], d, lo, hi))
    return sort_forest_rows(rows)
