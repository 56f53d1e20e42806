"""The report's abstention part: the verdict's line, the section and its figure.

The figure shows, per checkpoint, the probability of answering (``detail.answer_prob``) on the
answerable questions against their unanswerable twins: a checkpoint that knows what it cannot
know puts the twins low and the answerable questions high (``abstention_auroc`` near 100%).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from faithprobe.metrics.abstain import ABSTAIN_METRICS, answer_probs
from faithprobe.records import Record
from faithprobe.report.figure import Plot, color, figure, png, style
from faithprobe.report.readings import change_text, checkpoint_value, metric_display, value_text

__all__ = ["abstain_line", "abstain_plot", "abstain_section"]


def abstain_line(a: str, b: str, by_metric: Mapping[str, Mapping[str, Any]],
                 summary: Mapping[str, Any]) -> str | None:
    """"Declining: ..." for the pair (b vs a), or None when no abstention metric was compared:
    each abstention metric a -> b with its change and interval."""
    parts = []
    for m in ABSTAIN_METRICS:
        c = by_metric.get(m)
        if c is None:
            continue
        va, vb = checkpoint_value(summary, a, m), checkpoint_value(summary, b, m)
        if va is None or vb is None:
            continue
        parts.append(f"{metric_display(m)[0]} {value_text(m, va, short=True, suffix=False)} -> "
                     f"{value_text(m, vb, short=True)} ({change_text(c, short=True)})")
    if not parts:
        return None
    rate = by_metric.get("abstention_rate")
    if rate is None:
        head = f"Declining to answer, {b} vs {a}"
    elif rate["ci_high"] < 0:
        head = f"Declining to answer: {b} declines unanswerable questions less often than {a}"
    elif rate["ci_low"] > 0:
        head = f"Declining to answer: {b} declines unanswerable questions more often than {a}"
    else:
        head = f"Declining to answer: {b} and {a} are not clearly different"
    return head + ": " + ", ".join(parts) + "."


def abstain_plot(groups: Mapping[str, Sequence[Record]]) -> Plot:
    """One panel per checkpoint: histograms of the probability of answering on answerable
    questions and on their unanswerable twins."""
    name, title = "abstention", "Probability of answering: answerable questions vs their twins"
    data = {label: probs for label, recs in groups.items()
            if any((probs := answer_probs(recs)).values())}
    if not data:
        return Plot(name, title, None, "no abstain records: the abstention test did not run "
                                       "([abstain] enabled = false)")
    edges = np.linspace(0.0, 1.0, 21)
    with style():
        fig = figure(3.4 * len(data) + 0.6, 3.4)
        axes = fig.subplots(1, len(data), sharey=True, squeeze=False)[0]
        for ax, (label, probs) in zip(axes, data.items()):
            for i, variant in enumerate(("answerable", "unanswerable")):
                xs = np.clip(np.asarray(probs[variant], float), 0.0, 1.0)
                if len(xs):
                    ax.hist(xs, bins=edges, color=color(i), alpha=0.55, edgecolor=color(i),
                            label=f"{variant} (n={len(xs)})")
            ax.set_title(label)
            ax.set_xlabel("probability of answering")
            ax.grid(alpha=0.3)
            ax.legend(loc="upper center", fontsize=7)
        axes[0].set_ylabel("questions")
        fig.suptitle(title)
        return Plot(name, title, png(fig),
                    "Probability of answering: with options, the largest probability of an "
                    "option other than the declining answer; free form, the greedy answer's "
                    "probability, or 1 minus the declining answer's when it declined.")


def abstain_section(doc: Any, summary: Mapping[str, Any], groups: Mapping[str, Sequence[Record]]
                    ) -> None:
    """The section "Declining to answer": what was asked, a row per checkpoint, the figure;
    nothing when the run has no abstain records."""
    recs = {label: [r for r in rs if r.intervention == "abstain"] for label, rs in groups.items()}
    if not any(recs.values()):
        return
    doc.h("Declining to answer")
    answer = next((r.detail.get("abstain_answer") for rs in recs.values() for r in rs), None)
    makers = sorted({str(r.detail.get("maker")) for rs in recs.values() for r in rs
                     if r.detail.get("maker")})
    doc.p(f"Each question was asked as given and as its unanswerable twin (a needed fact "
          f"removed; made by: {', '.join(makers) or 'none'}), with the declining answer "
          f"{answer!r} offered; the checkpoint wrote its own reasoning, then answered.")
    rows = []
    for label, rs in recs.items():
        ests = (summary.get("checkpoints") or {}).get(label, {})
        cells = [value_text(m, ests[m]["value"], short=True) if m in ests else "not measured"
                 for m in ABSTAIN_METRICS]
        base = [r.detail.get("invented") for r in rs
                if r.detail.get("variant") == "answerable" and r.detail.get("invented")
                is not None]
        cells.append(f"{100 * sum(base) / len(base):.0f}% of {len(base)}" if base else "n/a")
        rows.append([label, *cells])
    doc.table(["checkpoint", *[metric_display(m)[0] for m in ABSTAIN_METRICS],
               "invented-value rule on answerable questions (false alarms)"], rows)
    doc.plot(abstain_plot(groups))
