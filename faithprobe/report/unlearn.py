"""The report's unlearning section: does the answer go when a step is unlearned from the
weights?

Verdict lines for the unlearning metrics (per compared pair: values, change and reading; per
checkpoint: values with intervals and how many steps were not unlearned), and a step view: for
a few traces every checkpoint unlearned, one row per step with its text and, per checkpoint,
the efficacy, the answer before and after and the drop in the original answer's probability.
Read from the ``unlearn`` records and the summary; left out of a run without them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from faithprobe.metrics.unlearn import UNLEARN_METRICS
from faithprobe.records import Record
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

__all__ = ["SHOWN_TRACES", "step_rows", "unlearn_lines", "unlearn_section"]

SHOWN_TRACES = 3  # traces the step view shows
_STEP_CHARS = 40  # a step's text in the step view, cut to this


def _cells(records: Sequence[Record], label: str) -> dict[str, dict[int, Record]]:
    out: dict[str, dict[int, Record]] = {}
    for r in records:
        if r.checkpoint == label and r.intervention == "unlearn" and r.step is not None:
            out.setdefault(r.trace_id, {})[r.step] = r
    return out


def unlearn_lines(summary: Mapping[str, Any], records: Sequence[Record]) -> list[str]:
    """Verdict lines: per compared pair, each unlearning metric's values, change and reading;
    per checkpoint, its values and its cells not unlearned."""
    lines = []
    per = summary.get("checkpoints") or {}
    by_pair: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for c in summary.get("comparisons") or []:
        if c["metric"] in UNLEARN_METRICS:
            by_pair.setdefault((c["a"], c["b"]), []).append(c)
    for (a, b), comps in by_pair.items():
        parts = []
        for c in sorted(comps, key=lambda c: UNLEARN_METRICS.index(c["metric"])):
            r = reading(c)
            word = {NO_PRACTICAL: "no practical change", NO_CLEAR: "no clear change"}.get(
                r, "clearly higher" if r == CLEAR[0] else "clearly lower")
            m = c["metric"]
            parts.append(f"{metric_display(m)[0]} {value_text(m, per[a][m]['value'], short=True)}"
                         f" -> {value_text(m, per[b][m]['value'], short=True)} "
                         f"({change_text(c, short=True)}, {word})")
        lines.append(f"{b} vs {a}: " + "; ".join(parts) + ".")
    for label, ests in per.items():
        cells = [r for steps in _cells(records, label).values() for r in steps.values()]
        if not cells:
            continue
        have = [m for m in UNLEARN_METRICS if m in ests]
        missed = sum(1 for r in cells if r.status == "ok" and not r.detail.get("unlearned"))
        text = f"{label}: " + "; ".join(f"{metric_display(m)[0]} {estimate_text(m, ests[m])}"
                                        for m in have)
        text += (f". {missed} of {len(cells)} steps not unlearned (their efficacy below "
                 f"{cells[0].detail.get('efficacy_threshold', 0):g} nats/token): left out of "
                 "the flip rate and the soft effect, not counted as faithful")
        lines.append(text + ".")
    return lines


def _cell_text(r: Record | None) -> str:
    if r is None:
        return ""
    if r.status != "ok":
        return r.status.replace("_", " ")
    eff = r.detail.get("efficacy")
    flip = "flips" if not r.same_answer else "kept"
    head = f"{r.orig_pred} -> {r.pred} ({flip}), drop {100 * (r.value or 0.0):+.0f} points"
    if not r.detail.get("unlearned"):
        return f"not unlearned (efficacy {eff:.2f})"
    return f"{head}; efficacy {eff:.2f}"


def step_rows(records: Sequence[Record], labels: Sequence[str], traces: Any = None
              ) -> list[tuple[str, list[list[str]]]]:
    """The step view: for up to ``SHOWN_TRACES`` traces every checkpoint unlearned (most
    steps first), one row per step: its number and text, then each checkpoint's cell."""
    by_label = {label: _cells(records, label) for label in labels}
    common = set.intersection(*(set(c) for c in by_label.values())) if by_label else set()
    shown = sorted(common, key=lambda t: (-max(by_label[labels[0]][t]), t))[:SHOWN_TRACES]
    out = []
    for tid in shown:
        pool = traces.get(labels[0]) if isinstance(traces, Mapping) else traces
        trace = next((t for t in pool or [] if t.id == tid), None)
        n = max(max(by_label[label][tid]) for label in labels) + 1
        rows = []
        for i in range(n):
            text = " ".join(str(trace.steps[i]).split()) if trace and i < trace.n_steps else ""
            text = text if len(text) <= _STEP_CHARS else text[:_STEP_CHARS - 3] + "..."
            rows.append([str(i), text] + [_cell_text(by_label[label][tid].get(i))
                                          for label in labels])
        out.append((tid, rows))
    return out


def unlearn_section(doc: Doc, summary: Mapping[str, Any], records: Sequence[Record],
                    traces: Any = None) -> None:
    """The unlearning section of a run report (nothing without ``unlearn`` records)."""
    if not any(r.intervention == "unlearn" for r in records):
        return
    labels = list(dict.fromkeys(r.checkpoint for r in records if r.intervention == "unlearn"))
    doc.h("What the weights hold: unlearning a step")
    doc.p("Each step of an unlearned trace is removed from the checkpoint's weights in turn "
          "(NPO on the step's tokens with a KL term to the original model on other traces; "
          "only the chosen weights change, and they are restored bit for bit after each step, "
          "checked by SHA-256), then the checkpoint answers again, writing new reasoning "
          "(FUR, Tutek et al. 2025). An answer that goes with the step rests on what the step "
          "says in the model, not only on the page. A step whose own likelihood barely moved "
          "was not unlearned: it says nothing either way.")
    doc.bullets(unlearn_lines(summary, records), css="verdict")
    for tid, rows in step_rows(records, labels, traces):
        doc.p(f"Trace {tid}, step by step (answer before -> after; drop in the original "
              "answer's probability; efficacy in nats per token):")
        doc.table(["step", "text", *labels], rows)
