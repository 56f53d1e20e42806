"""The report's cue section: follow and verbalization rates per kind and checkpoint, the verdict
of each compared pair per kind, who judged, and the traces that followed a cue without saying so.

Everything is read from the summary's ``cue`` entry (``faithprobe.metrics.cues.cue_summary``)
and the ``cue`` records; the section is left out of a run without cue records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from faithprobe.metrics.cues import eligible
from faithprobe.records import Record
from faithprobe.report.figure import Plot, color, figure, png, style
from faithprobe.report.readings import (
    CLEAR,
    NO_CLEAR,
    NO_PRACTICAL,
    change_text,
    count_text,
    estimate_text,
    metric_display,
    reading,
    value_text,
)
from faithprobe.report.render import Doc

__all__ = ["MAX_HIDDEN_ROWS", "cue_plot", "cue_section", "cue_verdict_lines", "hidden_rows"]

MAX_HIDDEN_ROWS = 20  # followed-but-unmentioned traces listed per checkpoint (the rest counted)
_PANELS = ("cue_follow_rate", "cue_verbalization_rate")


def cue_plot(cue: Mapping[str, Any]) -> Plot:
    """Bars of the follow and verbalization rates per kind, one colour per checkpoint, with
    their intervals; an undefined value is marked "n/a"."""
    name, title = "cues", "Cue tests: follow and verbalization rates per kind"
    kinds = list(cue.get("kinds") or [])
    per = cue.get("checkpoints") or {}
    if not kinds or not per:
        return Plot(name, title, None, "no cue records: the cue test was off ([cue] enabled)")
    with style():
        fig = figure(min(12.0, 2.5 + 1.6 * len(kinds) * len(_PANELS)), 3.2)
        width = 0.8 / len(per)
        for p, metric in enumerate(_PANELS):
            ax = fig.add_subplot(1, len(_PANELS), p + 1)
            for i, (label, by_kind) in enumerate(per.items()):
                for x, kind in enumerate(kinds):
                    est = (by_kind.get(kind) or {}).get(metric)
                    xs = x + (i - (len(per) - 1) / 2) * width
                    if not est or est.get("value") is None:
                        ax.text(xs, 2, "n/a", ha="center", va="bottom", fontsize=7,
                                color=color(i))
                        continue
                    v, lo, hi = (100 * est[k] for k in ("value", "ci_low", "ci_high"))
                    ax.bar(xs, v, width, color=color(i), label=label if x == 0 else None,
                           yerr=np.array([[max(v - lo, 0)], [max(hi - v, 0)]]), capsize=2,
                           error_kw={"lw": 0.8})
                    # a marker at each value: a bar of height 0 is a measured 0
                    ax.scatter([xs], [v], s=8, color=color(i), edgecolors="black",
                               linewidths=0.5, zorder=3)
            ax.set_xticks(range(len(kinds)), kinds)
            ax.set_xlim(-0.6, len(kinds) - 0.4)  # text marks do not widen the axes
            ax.set_ylim(-3, 105)
            ax.set_ylabel("percent (95% CI)")
            ax.set_title(metric_display(metric)[0])
            ax.grid(axis="y", alpha=0.3)
            if p == 0:
                ax.legend()
        return Plot(name, title, png(fig))


def cue_verdict_lines(cue: Mapping[str, Any]) -> list[str]:
    """One line per compared pair and kind: how often each follows the cue, how often the one
    that follows says so, and the reading of each change."""
    lines = []
    by_pair: dict[tuple[str, str, str], dict[str, Mapping[str, Any]]] = {}
    for c in cue.get("comparisons") or []:
        by_pair.setdefault((c["a"], c["b"], c["kind"]), {})[c["metric"]] = c
    per = cue.get("checkpoints") or {}
    for (a, b, kind), by_metric in by_pair.items():
        parts = []
        for metric in ("cue_follow_rate", "unverbalized_cue_use", "cue_verbalization_rate"):
            c = by_metric.get(metric)
            va = ((per.get(a) or {}).get(kind) or {}).get(metric) or {}
            vb = ((per.get(b) or {}).get(kind) or {}).get(metric) or {}
            if c is None or va.get("value") is None or vb.get("value") is None:
                continue
            r = reading(c)
            word = {NO_PRACTICAL: "no practical change", NO_CLEAR: "no clear change"}.get(
                r, "clearly higher" if r == CLEAR[0] else "clearly lower")
            parts.append(f"{metric_display(metric)[0]} "
                         f"{value_text(metric, va['value'], short=True)} -> "
                         f"{value_text(metric, vb['value'], short=True)} "
                         f"({change_text(c, short=True)}, {word})")
        if parts:
            lines.append(f"{b} vs {a}, {kind} cue: " + "; ".join(parts) + ".")
    for label, by_kind in per.items():
        for kind, row in by_kind.items():
            follow = row.get("cue_follow_rate")
            said = row.get("cue_verbalization_rate")
            if follow is None:
                continue
            text = (f"{label}, {kind} cue: follows it on "
                    f"{estimate_text('cue_follow_rate', follow)} of "
                    f"{count_text(follow['n'], 'trace')}")
            text += (f", and mentions it in {estimate_text('cue_verbalization_rate', said)} "
                     "of those" if said and said.get("value") is not None else
                     ", so its verbalization is undefined")
            corrected = row.get("cue_verbalization_corrected")
            if corrected and corrected.get("value") is None and corrected.get("reason"):
                text += f" (chance-corrected verbalization undefined: {corrected['reason']})"
            elif corrected:
                text += (" (chance-corrected: "
                         f"{estimate_text('cue_verbalization_corrected', corrected)})")
            lines.append(text + ".")
    return lines


def hidden_rows(records: Sequence[Record], limit: int = MAX_HIDDEN_ROWS
                ) -> tuple[list[list[str]], int]:
    """Rows (checkpoint, kind, trace, question, target, the cued reasoning's first line) of the
    eligible cue records that followed the cue without mentioning it, at most ``limit`` per
    checkpoint, and how many were left out."""
    rows: list[list[str]] = []
    left = 0
    shown: dict[str, int] = {}
    for r in records:
        if not (eligible(r) and r.detail["followed"] and not r.detail["mentioned"]):
            continue
        if shown.get(r.checkpoint, 0) >= limit:
            left += 1
            continue
        shown[r.checkpoint] = shown.get(r.checkpoint, 0) + 1
        first = next((line.strip() for line in str(r.detail.get("cued_reasoning", "")
                                                   ).split("\n") if line.strip()), "(none)")
        question = str(r.detail.get("cued_question", ""))
        rows.append([r.checkpoint, str(r.detail["kind"]), r.trace_id,
                     question if len(question) <= 120 else question[:117] + "...",
                     str(r.detail["target"]), first[:120]])
    return rows, left


def cue_section(doc: Doc, summary: Mapping[str, Any], records: Sequence[Record]) -> None:
    """The cue section of a run report (nothing without cue records)."""
    cue = summary.get("cue")
    if not cue:
        return
    doc.h("Cue tests")
    doc.p("Each question is answered twice, each time with reasoning the model writes itself: "
          "as given, and with a cue pointing to a target other than the answer it gave. "
          "A cue is followed when the cued answer is the target; the judge says whether the "
          "cued reasoning mentions the cue.")
    doc.bullets(cue_verdict_lines(cue), css="verdict")
    judges = cue.get("judges") or {}
    if judges:
        doc.note("Verbalization judged by: " + "; ".join(
            f"{label}: {', '.join(names) or 'none'}" for label, names in judges.items())
            + ". The rule judge looks for the kind's words or for a stated use of a "
              "suggested answer; its failure modes are in docs/metrics.md.")
    doc.plot(cue_plot(cue))
    rows, left = hidden_rows([r for r in records if r.intervention == "cue"])
    doc.h("Followed without mentioning the cue", level=3)
    if rows:
        doc.table(["checkpoint", "kind", "trace", "cued question", "target",
                   "reasoning's first line"], rows)
        if left:
            doc.note(f"{left} more such traces are in records.jsonl (intervention cue, "
                     "detail.followed true, detail.mentioned false).")
    else:
        doc.note("No trace followed a cue without mentioning it.")
