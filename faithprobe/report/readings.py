"""How a number is written and how a change is read.

Every value is written in its metric's display unit (``faithprobe.metrics.catalogue``): shares
and probabilities x100 as percentages (changes in percentage points), areas over a curve on 0 to
1, KL and InfoGain in nats, reasoning length in steps. Decimals are fixed per unit and well below
the metric's minimal meaningful difference, so noise digits (an ECE of 0.000001) are not shown.

A comparison (b minus a, with its 95% interval) is read by four rules, with ``mmd`` the
metric's minimal meaningful difference (``Metric.mmd``):

- **clear increase / clear decrease**: the interval excludes 0 and ``|delta| >= mmd``;
- **no practical change**: ``|delta| < mmd`` and either the interval excludes 0 (a real but
  negligible change) or it lies within ``[-mmd, mmd]`` (no change larger than negligible is
  compatible with the data);
- **no clear change**: the interval includes 0 and reaches beyond ``mmd``: the data cannot tell.

A relative change is shown only when the first checkpoint's value is at least ``mmd`` away from
0, and only as a point value: its interval would need the ratio itself bootstrapped (dividing
the delta's interval by the baseline gives impossible bounds such as -112%).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faithprobe.metrics import METRICS_BY_NAME

__all__ = [
    "CLEAR", "INTERVAL", "INTERVAL_SHORT", "NO_CLEAR", "NO_PRACTICAL", "baseline", "change_text",
    "checkpoint_value", "count_text", "estimate_text", "is_appendix", "metric_display",
    "metric_mmd", "reading", "relative_text", "value_text",
]

# The one name of the intervals, used everywhere in the report and the docs.
INTERVAL = "95% percentile interval of a cluster bootstrap over traces"
INTERVAL_SHORT = "95% CI"
CLEAR = ("clear increase", "clear decrease")
NO_PRACTICAL = "no practical change"
NO_CLEAR = "no clear change"

# decimals of a value in tables / in the verdict, per display unit
_DECIMALS = {"points": (1, 0), "aoc": (2, 2), "nats": (2, 2), "steps": (2, 1),
             "perplexity": (1, 0), "rho": (2, 2), "value": (3, 3)}


def count_text(n: int, noun: str) -> str:
    """``n`` and its noun in agreement: "1 trace", "2 traces" (plural by an "s")."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def metric_display(metric: str) -> tuple[str, str, str]:
    """(label, unit, description) of a metric; a name the catalogue lacks shows as itself, in
    the generic unit ``value``, without a description."""
    entry = METRICS_BY_NAME.get(metric)
    return (metric, "value", "") if entry is None else (entry.label, entry.unit,
                                                         entry.description)


def metric_mmd(metric: str) -> float:
    """The minimal meaningful difference of a metric (0 for a name the catalogue lacks)."""
    entry = METRICS_BY_NAME.get(metric)
    return 0.0 if entry is None or entry.mmd is None else entry.mmd


def is_appendix(metric: str) -> bool:
    entry = METRICS_BY_NAME.get(metric)
    return entry is not None and entry.appendix


def _suffix(metric: str) -> str:
    entry = METRICS_BY_NAME.get(metric)
    return "" if entry is None or not entry.suffix else " " + entry.suffix


def _scale(metric: str) -> float:
    return 100.0 if metric_display(metric)[1] == "points" else 1.0


def value_text(metric: str, v: float, *, short: bool = False, suffix: bool = True) -> str:
    """A point value in display units (``short``: the verdict's fewer decimals)."""
    kind = metric_display(metric)[1]
    if kind == "count":
        return f"{v:.0f}"
    d = _DECIMALS.get(kind, (3, 3))[1 if short else 0]
    if kind == "points":
        return f"{100 * v:.{d}f}%"
    return f"{v:.{d}f}" + (_suffix(metric) if suffix else "")


def estimate_text(metric: str, e: Mapping[str, Any]) -> str:
    """A checkpoint's value with its interval, in the metric's display unit."""
    kind = metric_display(metric)[1]
    if kind == "count":
        return f"{e['value']:.0f}"
    d = _DECIMALS.get(kind, (3, 3))[0]
    s = _scale(metric)
    lo, hi = s * e["ci_low"], s * e["ci_high"]
    return f"{value_text(metric, e['value'])} [{lo:.{d}f}, {hi:.{d}f}]"


def change_text(c: Mapping[str, Any], *, short: bool = False) -> str:
    """The change b - a with its interval: "+81.0 points [74.9, 87.0]", "-0.77 [-0.81, -0.72]",
    "-3.29 nats/step [-3.70, -2.86]"."""
    metric = c["metric"]
    kind = metric_display(metric)[1]
    s = _scale(metric)
    d = _DECIMALS.get(kind, (3, 3))[1 if short else 0]
    delta, lo, hi = s * c["delta"], s * c["ci_low"], s * c["ci_high"]
    unit = " points" if kind == "points" else _suffix(metric)
    return f"{delta:+.{d}f}{unit} [{lo:.{d}f}, {hi:.{d}f}]"


def reading(c: Mapping[str, Any]) -> str:
    """The reading of one comparison (module doc): "clear increase", "clear decrease", "no
    practical change" or "no clear change"; empty for counts."""
    if metric_display(c["metric"])[1] == "count":
        return ""
    mmd = metric_mmd(c["metric"])
    delta, lo, hi = c["delta"], c["ci_low"], c["ci_high"]
    excludes_zero = lo > 0 or hi < 0
    if excludes_zero and abs(delta) >= mmd:
        return CLEAR[0] if delta > 0 else CLEAR[1]
    if abs(delta) < mmd and (excludes_zero or (-mmd <= lo and hi <= mmd)):
        return NO_PRACTICAL
    return NO_CLEAR


def checkpoint_value(summary: Mapping[str, Any], label: str, metric: str) -> float | None:
    try:
        return float(summary["checkpoints"][label][metric]["value"])
    except (KeyError, TypeError):
        return None


def baseline(c: Mapping[str, Any], summary: Mapping[str, Any]) -> float | None:
    """The first checkpoint's value on the traces the comparison shares (from the relative
    change), else its value over all its traces; None where unknown."""
    if c.get("value_a") is not None:
        return c["value_a"]
    rel, delta = c.get("relative_change"), c["delta"]
    own = checkpoint_value(summary, c["a"], c["metric"])
    if rel is None:  # ``compare`` leaves it out exactly when that value is 0
        return 0.0 if "relative_change" in c else own
    if rel != 0 and delta != 0:
        size = abs(delta / rel)
        return -size if own is not None and own < 0 else size
    return own


def relative_text(c: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The relative change as a point value ("-100%"), or "" when the baseline is closer to 0
    than the minimal meaningful difference (or unknown)."""
    base = baseline(c, summary)
    if base is None or base == 0 or abs(base) < metric_mmd(c["metric"]):
        return ""
    return f"{100 * c['delta'] / abs(base):+.0f}%"
