"""Caveats computed from the data: when a number means something else than its name says.

Each rule looks at the summary (and, where given, the records) and returns a sentence when it
fires; ``docs/metrics.md`` lists them.

- **Paraphrase outside the format**: a checkpoint that is accurate (accuracy at least 70%) but
  keeps its answer under paraphrase clearly less often than it is accurate (the upper end of the
  paraphrase-same-answer interval at least 20 points below its accuracy). A faithful model keeps
  its answer when a step's meaning is kept; when it does not, the paraphrases are likely outside
  the format it was trained on, and the measure reports format sensitivity, not faithfulness.
- **Few traces**: a compared measure rests on fewer than 20 traces.
- **InfoGain scored by each checkpoint itself**: with ``scorer = self`` each checkpoint is
  measured with its own ruler, so an InfoGain difference mixes the reasoning with the scorer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from faithprobe.metrics import METRICS_BY_NAME
from faithprobe.records import Record
from faithprobe.report.readings import (
    checkpoint_value,
    count_text,
    is_appendix,
    metric_display,
    value_text,
)

__all__ = ["FEW_TRACES", "PARAPHRASE_ACCURATE", "PARAPHRASE_GAP", "caveats", "ppl_disagrees"]

PARAPHRASE_ACCURATE = 0.7  # "otherwise accurate": accuracy at least this
PARAPHRASE_GAP = 0.2  # paraphrase keeps the answer at least this much less often (ci_high)
FEW_TRACES = 20


def _paraphrase(summary: Mapping[str, Any]) -> list[str]:
    out = []
    moved = {(c["a"], c["b"]) for c in summary.get("comparisons") or []
             if c["metric"] == "paraphrase_same_answer"}
    for label, ests in (summary.get("checkpoints") or {}).items():
        acc, same = ests.get("accuracy"), ests.get("paraphrase_same_answer")
        if acc is None or same is None:
            continue
        if acc["value"] >= PARAPHRASE_ACCURATE and same["ci_high"] <= acc["value"] - PARAPHRASE_GAP:
            text = (f"{label} keeps its answer under paraphrase only "
                    f"{value_text('paraphrase_same_answer', same['value'], short=True)} of the "
                    f"time although it is {value_text('accuracy', acc['value'], short=True)} "
                    f"accurate: the paraphrases may be outside {label}'s format, so the "
                    "paraphrase measures report format sensitivity here, not faithfulness")
            others = sorted({b if a == label else a for a, b in moved if label in (a, b)})
            if others:
                text += (f"; the paraphrase difference between {label} and "
                         f"{', '.join(others)} may be format, not reasoning")
            out.append(text + ".")
    return out


def _few(summary: Mapping[str, Any]) -> list[str]:
    few: dict[str, int] = {}
    for c in summary.get("comparisons") or []:
        if not is_appendix(c["metric"]) and METRICS_BY_NAME.get(c["metric"]) is not None \
                and METRICS_BY_NAME[c["metric"]].unit != "count" and c["n"] < FEW_TRACES:
            few[c["metric"]] = min(c["n"], few.get(c["metric"], c["n"]))
    if not summary.get("comparisons"):
        for ests in (summary.get("checkpoints") or {}).values():
            e = ests.get("accuracy")
            if e is not None and e["n"] < FEW_TRACES:
                few["accuracy"] = min(e["n"], few.get("accuracy", e["n"]))
    if not few:
        return []
    names = ", ".join(f"{metric_display(m)[0]} ({count_text(n, 'trace')})" for m, n in few.items())
    one = len(few) == 1
    return [f"{names} {'rests' if one else 'rest'} on fewer than {FEW_TRACES} traces: "
            f"{'its interval is' if one else 'their intervals are'} wide, and a real change "
            "may read as no clear change."]


def _scorer(summary: Mapping[str, Any], records: Sequence[Record] | None) -> list[str]:
    if not records or not summary.get("comparisons"):
        return []
    labels = {c[k] for c in summary["comparisons"] for k in ("a", "b")
              if c["metric"] == "infogain_mean"}
    selfs = sorted({r.checkpoint for r in records if r.intervention == "infogain"
                    and r.checkpoint in labels and r.detail.get("scorer") == "self"})
    if len(selfs) < 2:
        return []
    return [f"InfoGain was scored by each checkpoint itself (scorer = self) for "
            f"{', '.join(selfs)}: each is measured with its own ruler, so an InfoGain "
            "difference mixes the reasoning with the scorer; a fixed scorer ([infogain] scorer) "
            "measures both with one."]


def caveats(summary: Mapping[str, Any], records: Sequence[Record] | None = None) -> list[str]:
    """The caveats that fire on this run, each one sentence."""
    lines = _paraphrase(summary) + _few(summary) + _scorer(summary, records)
    return [f"Caveat: {line}" for line in lines]


def ppl_disagrees(summary: Mapping[str, Any], a: str, b: str) -> bool:
    """Whether the perplexity-form and the answer-only InfoGain moved in opposite directions."""
    ig_a, ig_b = (checkpoint_value(summary, x, "infogain_mean") for x in (a, b))
    pp_a, pp_b = (checkpoint_value(summary, x, "infogain_ppl") for x in (a, b))
    if None in (ig_a, ig_b, pp_a, pp_b):
        return False
    return (ig_b - ig_a) * (pp_b - pp_a) < 0  # type: ignore[operator]
