"""The report's suppression section: which steps the later steps rest on.

One trace's step x step suppression matrix per checkpoint, side by side (rows: the step or the
answer whose tokens are read; columns: the step suppressed), a layer x head map of receiver
kurtosis per checkpoint with its top heads marked, and verdict lines for the suppression
metrics. Read from the ``suppression`` and ``receiver`` records and the summary's
``receivers`` entry; left out of a run without suppression records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from faithprobe.metrics.suppression import suppression_matrix
from faithprobe.records import Record
from faithprobe.report.figure import Plot, figure, png, style
from faithprobe.report.readings import (
    CLEAR,
    NO_CLEAR,
    NO_PRACTICAL,
    change_text,
    estimate_text,
    metric_display,
    reading,
    value_text,
)
from faithprobe.report.render import Doc

__all__ = ["SUPPRESSION_METRICS", "receiver_plot", "shown_trace", "suppression_lines",
           "suppression_plot", "suppression_section"]

SUPPRESSION_METRICS = ("step_dependency", "answer_dependency_share", "receiver_kurtosis",
                       "receiver_agreement")
_LABEL_CHARS = 28  # a step's text on an axis, cut to this


def _by_trace(records: Sequence[Record], label: str) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in records:
        if r.checkpoint == label and r.intervention in ("suppression", "receiver"):
            out.setdefault(r.trace_id, []).append(r)
    return out


def shown_trace(records: Sequence[Record], labels: Sequence[str]) -> str | None:
    """The trace whose matrices are drawn: among those every checkpoint has a matrix of, the
    one with the most steps (the first id of those)."""
    common: dict[str, int] | None = None
    for label in labels:
        have = {tid: len(got[1]) for tid, recs in _by_trace(records, label).items()
                if (got := suppression_matrix(recs)) is not None}
        common = have if common is None else {t: n for t, n in common.items() if t in have}
    if not common:
        return None
    return min(common, key=lambda t: (-common[t], t))


def _step_labels(traces: Any, label: str, trace_id: str, n: int) -> list[str]:
    pool = traces.get(label) if isinstance(traces, Mapping) else traces
    trace = next((t for t in pool or [] if t.id == trace_id), None)
    out = []
    for i in range(n):
        text = " ".join(str(trace.steps[i]).split()) if trace and i < trace.n_steps else ""
        text = text if len(text) <= _LABEL_CHARS else text[:_LABEL_CHARS - 3] + "..."
        out.append(f"{i}: {text}" if text else f"step {i}")
    return out


def suppression_plot(records: Sequence[Record], labels: Sequence[str], traces: Any = None
                     ) -> Plot:
    """One trace's suppression matrix per checkpoint, side by side, on one colour scale."""
    name = "suppression"
    tid = shown_trace(records, labels)
    if tid is None:
        return Plot(name, "Suppression matrix", None,
                    "no trace has a suppression matrix in every checkpoint")
    title = f"Suppression matrix of trace {tid}: KL on each row's tokens (nats)"
    mats = {}
    for label in labels:
        matrix, answer = suppression_matrix(_by_trace(records, label)[tid])
        mats[label] = np.vstack([matrix, answer[None]])  # [steps + answer, steps]
    top = max(float(np.nanmax(m)) if np.isfinite(m).any() else 0.0 for m in mats.values())
    n = next(iter(mats.values())).shape[1]
    with style():
        fig = figure(min(16.0, 1.5 + len(labels) * (2.0 + 0.45 * n)), 1.8 + 0.4 * (n + 1))
        axes = fig.subplots(1, len(labels), squeeze=False)[0]
        for k, (ax, label) in enumerate(zip(axes, labels)):
            m = mats[label]
            im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=0.0,
                           vmax=max(top, 1e-9), aspect="auto")
            names = _step_labels(traces, label, tid, n)
            ax.set_xticks(range(n), [f"{i}" for i in range(n)])
            ax.set_yticks(range(n + 1), [*names, "answer"] if k == 0 else
                          [*(f"{i}" for i in range(n)), "answer"])
            ax.set_xlabel("step suppressed")
            ax.set_title(label)
            for (j, i), v in np.ndenumerate(m):
                if np.isfinite(v) and n <= 12:
                    ax.text(i, j, f"{v:.1f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 0.6 * top else "black")
        fig.colorbar(im, ax=list(axes), label="mean per-token KL (nats)", shrink=0.8)
    return Plot(name, title, png(fig), "Rows: the step (or the answer) whose tokens are read; "
                "columns: the step whose keys every later query was stopped from attending "
                "to. Blank: a step cannot reach itself or an earlier one.")


def receiver_plot(summary: Mapping[str, Any]) -> Plot:
    """Each checkpoint's layer x head map of mean receiver kurtosis, its top heads outlined."""
    name = "receivers"
    receivers = summary.get("receivers") or {}
    if not receivers:
        return Plot(name, "Receiver kurtosis", None, "no receiver records")
    grids = {label: np.array([[np.nan if v is None else v for v in row]
                              for row in entry["kurtosis"]], dtype=float)
             for label, entry in receivers.items()}
    finite = [g[np.isfinite(g)] for g in grids.values()]
    lo = min((float(f.min()) for f in finite if f.size), default=0.0)
    hi = max((float(f.max()) for f in finite if f.size), default=1.0)
    shape = next(iter(grids.values())).shape
    with style():
        fig = figure(min(16.0, 1.5 + len(grids) * (1.0 + 0.3 * shape[1])),
                     1.6 + min(8.0, 0.25 * shape[0]))
        axes = fig.subplots(1, len(grids), squeeze=False)[0]
        for ax, (label, grid) in zip(axes, grids.items()):
            im = ax.imshow(np.ma.masked_invalid(grid), cmap="magma", vmin=lo,
                           vmax=max(hi, lo + 1e-9), aspect="auto")
            for h in receivers[label]["heads"]:
                ax.add_patch(_box(h["head"], h["layer"]))
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_title(f"{label} (top {receivers[label]['top_k']} outlined)")
        fig.colorbar(im, ax=list(axes), label="mean excess kurtosis over steps", shrink=0.8)
    return Plot(name, "Receiver heads: kurtosis of vertical attention over steps", png(fig),
                "A head's vertical score of a step is its mean attention from tokens at least "
                "4 later to the step's tokens; high kurtosis: later tokens attend to a few "
                "steps.")


def _box(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="cyan", linewidth=1.0)


def suppression_lines(summary: Mapping[str, Any]) -> list[str]:
    """Verdict lines: per compared pair, each suppression metric's values and reading, and
    what they say together; per checkpoint, its values."""
    lines = []
    per = summary.get("checkpoints") or {}
    by_pair: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for c in summary.get("comparisons") or []:
        if c["metric"] in SUPPRESSION_METRICS:
            by_pair.setdefault((c["a"], c["b"]), {})[c["metric"]] = c
    for (a, b), by_metric in by_pair.items():
        parts, read = [], {}
        for metric in SUPPRESSION_METRICS:
            c = by_metric.get(metric)
            if c is None:
                continue
            r = reading(c)
            read[metric] = r
            word = {NO_PRACTICAL: "no practical change", NO_CLEAR: "no clear change"}.get(
                r, "clearly higher" if r == CLEAR[0] else "clearly lower")
            va, vb = per[a][metric]["value"], per[b][metric]["value"]
            parts.append(f"{metric_display(metric)[0]} {value_text(metric, va, short=True)} -> "
                         f"{value_text(metric, vb, short=True)} ({change_text(c, short=True)}, "
                         f"{word})")
        if not parts:
            continue
        line = f"{b} vs {a}: " + "; ".join(parts) + "."
        chain = read.get("step_dependency") in (NO_PRACTICAL, NO_CLEAR, CLEAR[0])
        if read.get("answer_dependency_share") == CLEAR[1] and chain:
            line += (f" {b}'s steps still rest on each other, but its answer rests on them "
                     "less: a chain beside an answer computed elsewhere.")
        elif read.get("step_dependency") == CLEAR[1]:
            line += f" {b}'s later steps rest less on its earlier ones."
        lines.append(line)
    for label, ests in per.items():
        have = [m for m in SUPPRESSION_METRICS if m in ests]
        if have:
            lines.append(f"{label}: " + "; ".join(
                f"{metric_display(m)[0]} {estimate_text(m, ests[m])}" for m in have) + ".")
    return lines


def suppression_section(doc: Doc, summary: Mapping[str, Any], records: Sequence[Record],
                        traces: Any = None) -> None:
    """The suppression section of a run report (nothing without suppression records)."""
    if not any(r.intervention == "suppression" and r.status == "ok" for r in records):
        return
    labels = list(dict.fromkeys(r.checkpoint for r in records
                                if r.intervention == "suppression" and r.status == "ok"))
    doc.h("Which steps the later steps rest on")
    doc.p("Each step of a patched trace is suppressed in turn: every later token, at every "
          "layer and head, is stopped from attending to it (Thought Anchors' attention "
          "suppression), and the KL of the next-token distributions is read on every later "
          "step's tokens and on the answer's. A strong first sub-diagonal is a chain (each "
          "step built on the one before); a near-empty answer row beside it is reasoning the "
          "answer does not rest on.")
    doc.bullets(suppression_lines(summary), css="verdict")
    doc.plot(suppression_plot(records, labels, traces))
    doc.plot(receiver_plot(summary))
    receivers = summary.get("receivers") or {}
    rows = [[label, ", ".join(f"L{h['layer']}H{h['head']} ({h['kurtosis']:.2f})"
                              for h in entry["heads"][:5])]
            for label, entry in receivers.items()]
    if rows:
        doc.table(["checkpoint", "top receiver heads (mean kurtosis)"], rows)
