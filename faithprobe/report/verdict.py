"""The report's words: the verdict, the notes on how to read it, and the rows of its tables.

The verdict of a compared pair (b vs a) is decided by fixed rules over the catalogue's verdict
metrics (``VERDICT_METRICS``), each comparison read as in ``faithprobe.report.readings`` (clear
increase / clear decrease / no practical change / no clear change):

1. **Accuracy**: "b is as accurate as a" (no practical change), "more / less accurate" (a clear
   change), or "not clearly different" (no clear change), with both values.
2. **Does the reasoning carry the answer?** Over the measures with a direction
   (``Metric.direction``: +1 where higher means the answer depends more on the reasoning, e.g.
   the flip rates, the AOCs, InfoGain; -1 where lower does, e.g. filler accuracy), the clear
   changes are signed by that direction. Only falls: "its reasoning carries its answer less", or
   "no longer carries its answer" when every +1 measure that fell ended within its minimal
   meaningful difference of 0. Only rises: "carries its answer more". Both: "the measures
   disagree". None clear: "as much as before" when every one reads no practical change, else
   "no measure shows clearly". The measures that moved clearly follow, a -> b with the change.
   **Declining to answer** (``faithprobe.report.abstain``), when the abstention test ran: its
   measures a -> b with their changes, led by whether b declines unanswerable questions less
   or more often than a (the abstention rate's interval excludes 0) or neither.
3. **Also moved clearly**: the other verdict measures with a clear change.
4. **Did not move**: the verdict measures with no practical change; **unclear**: those with no
   clear change.
5. **Could not be measured**: verdict measures without a comparison, each "not measured" or
   "undefined" and why (``faithprobe.report.absence``; from the records when given, else from
   the summary alone).
6. **Caveats** computed from the data (``faithprobe.report.caveats``).

Without comparisons, one line per checkpoint gives its verdict measures with their intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from faithprobe.metrics import METRICS_BY_NAME, TABLE_METRICS, UNIT_TITLES, VERDICT_METRICS
from faithprobe.records import Record
from faithprobe.report.absence import Absence, absences, summary_absences
from faithprobe.report.abstain import abstain_line
from faithprobe.report.caveats import caveats
from faithprobe.report.plots import ForestRow
from faithprobe.report.readings import (
    CLEAR,
    INTERVAL,
    INTERVAL_SHORT,
    NO_CLEAR,
    NO_PRACTICAL,
    change_text,
    checkpoint_value,
    estimate_text,
    is_appendix,
    metric_display,
    metric_mmd,
    reading,
    relative_text,
    value_text,
)

__all__ = [
    "COMPARISON_HEADER", "DOCS", "checkpoint_rows", "comparison_rows", "estimate_text",
    "forest_rows", "metric_display", "mmd_text", "reading_notes", "sort_forest_rows",
    "verdict_lines",
]

DOCS = "docs/metrics.md"
COMPARISON_HEADER = ["comparison", "measure", "a -> b", f"change (b - a) [{INTERVAL_SHORT}]",
                     "relative", "minimal meaningful difference", "n traces", "reading"]


def mmd_text(metric: str) -> str:
    """The minimal meaningful difference in display units ("5 points", "0.05 nats/step")."""
    entry = METRICS_BY_NAME.get(metric)
    if entry is None or entry.mmd is None:
        return ""
    if entry.unit == "points":
        return f"{100 * entry.mmd:g} points"
    return f"{entry.mmd:g}" + (f" {entry.suffix}" if entry.suffix else "")


ARROW = " -> "


def _values(c: Mapping[str, Any], summary: Mapping[str, Any], sep: str = ARROW) -> str:
    """"a -> b": each side over the traces the comparison shares (the delta's own), else (a
    summary written before comparisons held them) each checkpoint's value."""
    m = c["metric"]
    va = c["value_a"] if "value_a" in c else checkpoint_value(summary, c["a"], m)
    vb = c["value_b"] if "value_b" in c else checkpoint_value(summary, c["b"], m)
    if va is None or vb is None:
        return ""
    return (f"{value_text(m, va, short=True, suffix=False)}{sep}"
            f"{value_text(m, vb, short=True)}")


def _moved(c: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """"step flip rate 100% -> 0% (-100 points [-100, -100])"; for a measure in nats the
    relative change is appended ("-3.29 nats/step [-3.70, -2.86], -100%")."""
    rel = relative_text(c, summary) if metric_display(c["metric"])[1] == "nats" else ""
    extra = f", {rel}" if rel else ""
    return (f"{metric_display(c['metric'])[0]} {_values(c, summary)} "
            f"({change_text(c, short=True)}{extra})")


def _accuracy_clause(a: str, b: str, c: Mapping[str, Any] | None, summary: Mapping[str, Any],
                     absent: Mapping[str, Mapping[str, Absence]]) -> tuple[str, str]:
    """(clause, kind) with kind "same", "more", "less", "unclear" or "missing"."""
    if c is None:
        return f"accuracy could not be compared ({_why('accuracy', a, b, absent)})", "missing"
    vals = _values(c, summary, " vs ").split(" vs ")
    both = f"{vals[1]} vs {vals[0]}" if len(vals) == 2 else ""
    r = reading(c)
    if r == NO_PRACTICAL:
        return f"{b} is as accurate as {a} ({both})", "same"
    if r in CLEAR:
        word = "more" if r == CLEAR[0] else "less"
        return (f"{b} is {word} accurate than {a} ({both}, {change_text(c, short=True)})",
                word)
    return (f"{b}'s accuracy is not clearly different from {a}'s ({both}, "
            f"{change_text(c, short=True)})", "unclear")


def _dependence(compared: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any]
                ) -> tuple[str, list[str], int]:
    """(clause, the clearly moved measures, -1 fell / +1 rose / 0 neither or mixed)."""
    dep = [m for m in VERDICT_METRICS if m in compared and METRICS_BY_NAME[m].direction]
    if not dep:
        return "whether its reasoning carries its answer was not measured", [], 0
    clear = [m for m in dep if reading(compared[m]) in CLEAR]
    sign = {m: METRICS_BY_NAME[m].direction * (1 if compared[m]["delta"] > 0 else -1)
            for m in clear}
    downs = [m for m in clear if sign[m] < 0]
    ups = [m for m in clear if sign[m] > 0]
    evidence = [_moved(compared[m], summary) for m in clear]
    if downs and not ups:
        falls = [m for m in downs if METRICS_BY_NAME[m].direction > 0]
        gone = bool(falls) and all(
            abs(compared[m].get("value_b", checkpoint_value(summary, compared[m]["b"], m))
                or 0.0) < metric_mmd(m)
            for m in falls)
        word = "no longer carries its answer" if gone else "carries its answer less"
        return f"its reasoning {word}", evidence, -1
    if ups and not downs:
        return "its reasoning carries its answer more", evidence, 1
    if ups and downs:
        return "the measures of whether its reasoning carries its answer disagree", evidence, 0
    if all(reading(compared[m]) == NO_PRACTICAL for m in dep):
        return "its reasoning carries its answer as much as before", [], 0
    return ("no measure shows clearly whether its reasoning carries its answer more or less",
            [], 0)


def _why(metric: str, a: str, b: str, absent: Mapping[str, Mapping[str, Absence]]) -> str:
    got = {label: absent.get(label, {}).get(metric) for label in (a, b)}
    missing = {label: x for label, x in got.items() if x is not None}
    if not missing:
        return "no trace has it on both sides"
    if len(missing) == 2 and len({(x.kind, x.reason) for x in missing.values()}) == 1:
        x = missing[a]
        return f"{x.kind} for {a} and {b}: {x.reason}"
    return "; ".join(f"{x.kind} for {label}: {x.reason}" for label, x in missing.items())


def _pair_lines(a: str, b: str, by_metric: Mapping[str, Mapping[str, Any]],
                summary: Mapping[str, Any], absent: Mapping[str, Mapping[str, Absence]],
                prefix: str) -> list[str]:
    compared = {m: by_metric[m] for m in VERDICT_METRICS if m in by_metric}
    acc, acc_kind = _accuracy_clause(a, b, compared.get("accuracy"), summary, absent)
    dep, evidence, way = _dependence(compared, summary)
    joint = ", but " if (way < 0 and acc_kind in ("same", "more")) or (
        way > 0 and acc_kind == "less") else ", and " if acc_kind != "missing" else "; "
    head = f"{b} vs {a}: {acc}{joint}{dep}" + (": " + ", ".join(evidence) if evidence else "")
    lines = [head + "."]
    declining = abstain_line(a, b, by_metric, summary)
    if declining:
        lines.append(prefix + declining)
    used = {m for m in compared if METRICS_BY_NAME[m].direction
            and reading(compared[m]) in CLEAR} | {"accuracy"}
    also = [_moved(compared[m], summary) for m in compared
            if m not in used and reading(compared[m]) in CLEAR]
    if also:
        lines.append(f"{prefix}Also moved clearly: " + ", ".join(also) + ".")
    flat = [f"{metric_display(m)[0]} {_values(compared[m], summary)}"
            for m in compared if m != "accuracy" and reading(compared[m]) == NO_PRACTICAL]
    if flat:
        lines.append(f"{prefix}Did not move (change below its minimal meaningful difference): "
                     + ", ".join(flat) + ".")
    unclear = [f"{metric_display(m)[0]} {_values(compared[m], summary)} "
               f"({change_text(compared[m], short=True)})"
               for m in compared if m != "accuracy" and reading(compared[m]) == NO_CLEAR]
    if unclear:
        lines.append(f"{prefix}Unclear (the interval includes 0 and reaches beyond the minimal "
                     "meaningful difference): " + ", ".join(unclear) + ".")
    missing = [f"{metric_display(m)[0]} ({_why(m, a, b, absent)})"
               for m in VERDICT_METRICS if m not in compared and m != "accuracy"]
    if missing:
        lines.append(f"{prefix}Could not be measured: " + "; ".join(missing) + ".")
    return lines


def verdict_lines(summary: dict, records: Sequence[Record] | None = None) -> list[str]:
    """The verdict in plain language, decided by the rules of this module's doc.

    Args:
        summary: the run summary (``summary.json``).
        records: the run's records, optional; with them the measures that could not be measured
            say precisely why (the records' own reasons), without them the summary says what
            it can.

    Returns:
        Sentences, the first of each compared pair ``"b vs a: ..."``; then the caveats.
        Without comparisons, one line per checkpoint with its verdict measures.
    """
    checkpoints = summary.get("checkpoints") or {}
    absent = absences(records, summary) if records is not None else summary_absences(summary)
    pairs: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for c in summary.get("comparisons") or []:
        pairs.setdefault((c["a"], c["b"]), {})[c["metric"]] = c
    lines: list[str] = []
    for (a, b), by_metric in pairs.items():
        prefix = f"{b} vs {a}, " if len(pairs) > 1 else ""
        lines += _pair_lines(a, b, by_metric, summary, absent, prefix)
    if not lines:
        for label, ests in checkpoints.items():
            parts = [f"{metric_display(m)[0]} {estimate_text(m, ests[m])}"
                     for m in VERDICT_METRICS if m in ests]
            gone = [f"{metric_display(m)[0]} ({absent[label][m].kind}: "
                    f"{absent[label][m].reason})"
                    for m in VERDICT_METRICS if m in absent.get(label, {})]
            body = "; ".join(parts) if parts else "no verdict measure could be computed"
            lines.append(f"{label}: {body}."
                         + (f" Could not be measured: {'; '.join(gone)}." if gone else ""))
    if not lines:
        return ["No metric could be computed: the run has no usable records."]
    return lines + caveats(summary, records)


def reading_notes(summary: Mapping[str, Any]) -> list[str]:
    """How to read the verdict and the tables; the InfoGain note only when InfoGain has a
    value in the summary."""
    notes = [
        f"Intervals: {INTERVAL} ({INTERVAL_SHORT}), paired over the traces both checkpoints "
        "share for a change. A change reads clear when its interval excludes 0 and it is at "
        "least the measure's minimal meaningful difference (see Metric definitions); a smaller "
        "one reads no practical change; an interval that includes 0 and reaches beyond that "
        "difference reads no clear change. Shares are in percent and their changes in "
        "percentage points; a relative change is shown only against a baseline at least one "
        f"minimal meaningful difference away from 0. Definitions and rules: {DOCS} in the "
        "faithprobe source."]
    have = {m for ests in (summary.get("checkpoints") or {}).values() for m in ests}
    if have & {"infogain_mean", "infogain_total"}:
        note = ("InfoGain is the answer-only form (Wu et al. 2025): H_j is the mean negative "
                "log-likelihood of the answer's tokens given the question and steps 1..j, and "
                "IG_j = H_(j-1) - H_j, in nats per step; positive = step j made the answer more "
                "predictable.")
        if "infogain_ppl" in have:
            note += " The perplexity form of Wu et al.'s public code is in the appendix."
        notes.append(note)
    return notes


# ---------------------------------------------------------------------------------------------
# table rows


def _table_order(present: Sequence[str]) -> list[str]:
    return ([m for m in TABLE_METRICS if metric_display(m)[1] != "count" and not is_appendix(m)]
            + [m for m in present if m not in METRICS_BY_NAME])


def checkpoint_rows(ests: Mapping[str, Mapping[str, Any]],
                    absent: Mapping[str, Absence] | None = None) -> list[list[str]]:
    """(measure, value [95% CI], n traces, what it measures) of one checkpoint: every main
    catalogue metric, "not measured (...)" or "undefined (...)" where it has no value."""
    rows = []
    for m in _table_order(list(ests)):
        name, _, what = metric_display(m)
        if m in ests:
            rows.append([name, estimate_text(m, ests[m]), str(ests[m]["n"]), what])
        else:
            why = (absent or {}).get(m)
            rows.append([name, why.text() if why else "not measured", "", what])
    return rows


def comparison_rows(summary: Mapping[str, Any],
                    absent: Mapping[str, Mapping[str, Absence]] | None = None,
                    prefix: str = "", *, appendix: bool = False) -> list[list[str]]:
    """One row (``COMPARISON_HEADER``) per compared pair and main metric (``appendix``: the
    appendix metrics), a row saying why where a metric was not compared."""
    absent = absent if absent is not None else summary_absences(summary)
    pairs: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for c in summary.get("comparisons") or []:
        pairs.setdefault((c["a"], c["b"]), {})[c["metric"]] = c
    rows = []
    for (a, b), by_metric in pairs.items():
        order = ([m for m in TABLE_METRICS if is_appendix(m)] if appendix
                 else _table_order(list(by_metric)))
        for m in order:
            pair = f"{prefix}{b} vs {a}"
            c = by_metric.get(m)
            if c is None:
                rows.append([pair, metric_display(m)[0], "", _why(m, a, b, absent), "",
                             mmd_text(m), "", "not compared"])
                continue
            rows.append([pair, metric_display(m)[0], _values(c, summary), change_text(c),
                         relative_text(c, summary), mmd_text(m), str(c["n"]), reading(c)])
    return rows


def sort_forest_rows(rows: list[ForestRow]) -> list[ForestRow]:
    """Forest rows grouped by panel, panels in the catalogue's unit order (stable)."""
    order = list(UNIT_TITLES.values())
    return sorted(rows, key=lambda r: order.index(r.panel) if r.panel in order else len(order))


def forest_rows(summary: Mapping[str, Any], prefix: str = "") -> list[ForestRow]:
    """One ``ForestRow`` per main, non-count comparison, in display units, for
    ``plots.forest_plot``."""
    rows = []
    for c in summary.get("comparisons") or []:
        m = c["metric"]
        unit = metric_display(m)[1]
        if unit == "count" or is_appendix(m):
            continue
        scale = 100.0 if unit == "points" else 1.0
        rows.append(ForestRow(
            label=f"{prefix}{metric_display(m)[0]} ({c['b']} vs {c['a']})",
            panel=UNIT_TITLES.get(unit, "other measures (own units)"),
            delta=scale * c["delta"], lo=scale * c["ci_low"], hi=scale * c["ci_high"],
            mmd=scale * metric_mmd(m), reading=reading(c)))
    return sort_forest_rows(rows)
