"""Two report sections of the fine-tuning question: KI with its coverage and judge, and the seed
question itself (accuracy change beside the relative InfoGain change, against the published
direction after SFT).

KI is computed over judged steps only (``docs/metrics.md``); its judge is read from the ``ki``
records (``detail.judge``), so the report says who judged each checkpoint's steps and what
share of them (``ki_coverage``). The seed question reads ``summary["seed_question"]``
(``faithprobe.metrics.seed_question``): for each checkpoint against the first, the accuracy
change in points and the relative InfoGain change, each with its paired 95% interval.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from faithprobe.records import Record
from faithprobe.report.readings import (
    INTERVAL_SHORT,
    change_text,
    count_text,
    estimate_text,
    reading,
)
from faithprobe.report.render import Doc

__all__ = ["PUBLISHED_INFOGAIN_CHANGE", "PUBLISHED_SOURCE", "judges", "ki_lines",
           "seed_question_rows", "seed_question_section"]

# The published direction after SFT (Wu et al. 2025): accuracy up, InfoGain down by 38.9%.
PUBLISHED_INFOGAIN_CHANGE = -0.389
PUBLISHED_SOURCE = "Wu et al. 2025"
OLD_JUDGE = "unnamed (records written before judges were named)"


def judges(records: Sequence[Record], label: str) -> Counter[str]:
    """Judged steps of checkpoint ``label`` per judge (``detail.judge`` of its ``ki`` records;
    an unjudged step, value None, is not counted)."""
    return Counter(str(r.detail.get("judge") or OLD_JUDGE) for r in records
                   if r.checkpoint == label and r.intervention == "ki" and r.status == "ok"
                   and r.value is not None)


def ki_lines(summary: Mapping[str, Any], records: Sequence[Record]) -> list[str]:
    """One line per checkpoint with KI records: KI, the share of steps judged, and who judged."""
    lines = []
    for label, ests in (summary.get("checkpoints") or {}).items():
        steps = sum(1 for r in records if r.checkpoint == label and r.intervention == "ki")
        if not steps:
            continue
        who = judges(records, label)
        named = ", ".join(f"{name} ({count_text(n, 'step')})"
                          for name, n in who.most_common()) or "none"
        ki = (f"KI {estimate_text('ki', ests['ki'])} of the judged steps correct"
              if "ki" in ests else "KI undefined (no step held anything to judge)")
        cov = (f"{estimate_text('ki_coverage', ests['ki_coverage'])}"
               if "ki_coverage" in ests else "none")
        lines.append(f"{label}: {ki}; steps judged (KI coverage): {cov} of {steps}; judged by: "
                     f"{named}. A step with nothing to check is unjudged, not correct.")
    return lines


def _relative(q: Mapping[str, Any] | None) -> str:
    if q is None:
        return "not measured"
    if q.get("relative_change") is None:
        return f"undefined ({q.get('reason', 'no value')})"
    return (f"{100 * q['relative_change']:+.1f}% [{100 * q['ci_low']:.1f}, "
            f"{100 * q['ci_high']:.1f}] (InfoGain {q['value_a']:.2f} -> {q['value_b']:.2f} "
            f"nats/step, n={q['n']})")


def _agrees(q: Mapping[str, Any]) -> str:
    """Whether the fine-tune moved the published way: "yes" when accuracy rose clearly (its
    reading) and InfoGain fell clearly (the relative interval below 0), "no" when either moved
    clearly the other way, else "partly" or "not clearly"; each side's reading follows."""
    acc, ig = q.get("accuracy_change"), q.get("infogain_relative_change")
    if acc is None or ig is None or ig.get("relative_change") is None:
        return "cannot tell (a side has no value)"
    acc_read = reading(acc)
    ig_read = ("clear decrease" if ig["ci_high"] < 0 else
               "clear increase" if ig["ci_low"] > 0 else "no clear change")
    same = [acc_read == "clear increase", ig_read == "clear decrease"]
    opposite = acc_read == "clear decrease" or ig_read == "clear increase"
    word = ("no" if opposite else "yes" if all(same) else "partly" if any(same)
            else "not clearly")
    return f"{word}: accuracy {acc_read}, InfoGain {ig_read}"


def seed_question_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """(fine-tune vs base, accuracy change, relative InfoGain change, published, agrees?) rows."""
    rows = []
    for q in summary.get("seed_question") or []:
        acc = q.get("accuracy_change")
        rows.append([f"{q['b']} vs {q['a']}",
                     f"{change_text(acc)} (n={acc['n']})" if acc else "not measured",
                     _relative(q.get("infogain_relative_change")),
                     f"higher accuracy, InfoGain {100 * PUBLISHED_INFOGAIN_CHANGE:+.1f}% "
                     f"({PUBLISHED_SOURCE})", _agrees(q)])
    return rows


def seed_question_section(doc: Doc, summary: Mapping[str, Any]) -> None:
    """The seed question's table, or nothing where the run compares no checkpoints."""
    rows = seed_question_rows(summary)
    if not rows:
        return
    doc.h("The fine-tuning question: accuracy and InfoGain")
    doc.p("For each checkpoint against the first: the change of accuracy and the relative change "
          "of InfoGain, (IG_b - IG_a) / |IG_a|, each with its paired 95% interval (every "
          "bootstrap replicate draws the shared traces once and divides its own two values). "
          f"The published direction after SFT is higher accuracy with InfoGain down "
          f"{-100 * PUBLISHED_INFOGAIN_CHANGE:.1f}% ({PUBLISHED_SOURCE}).")
    doc.table(["comparison", f"accuracy change [{INTERVAL_SHORT}]",
               f"InfoGain relative change [{INTERVAL_SHORT}]", "published direction",
               "same direction?"], rows)
