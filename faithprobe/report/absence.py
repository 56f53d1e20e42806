"""Why a metric has no value, and the records that were not measured, grouped by reason.

A metric a checkpoint's summary lacks is one of two things, and the report keeps them apart:

- **not measured**: the checkpoint has no record of any kind the metric reads
  (``Metric.reads``): the intervention was not run (InfoGain off, no patching, no judge...).
- **undefined**: records were made but give the metric no value: every one of them was skipped
  (or reached no answer, or carried a NaN), and the reason is the records' own; or usable
  records exist but no trace has what the metric needs (``Metric.needs``: a gold answer, a
  step...).

Reasons are grouped by kind: the numbers in a reason ("by -0.0344 (under 0.5)") are taken out
to group it, then put back as the range they took ("by -0.0344 to +0.0124 (under 0.5)").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from faithprobe.metrics import CATALOGUE, METRICS_BY_NAME, is_usable
from faithprobe.records import Record

__all__ = ["NOT_MEASURED", "NO_VALUE", "UNDEFINED", "Absence", "ReasonGroup", "absences",
           "group_reasons", "reason_template", "summary_absences"]

NOT_MEASURED = "not measured"
UNDEFINED = "undefined"
NO_VALUE = "no value"  # from the summary alone, where the records would tell which of the two
# A number standing alone (not part of a name such as blocks.0.hook_resid_pre).
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]\w)")
_HINTS = {
    "infogain": "InfoGain was off ([infogain] enabled)",
    "infogain_ppl": "the perplexity form was off ([infogain] ppl)",
    "patch": "activation patching was off ([patching] enabled)",
    "ki": "the traces carry no step_truth and no judge was given",
    "resample": "resampling was off ([resample] enabled)",
    "cue": "the cue test was off ([cue] enabled)",
    "attribution": "attribution patching was not run ([patching] method)",
    **{kind: f"{kind} was not among the [probe] interventions"
       for kind in ("truncate", "corrupt", "paraphrase", "filler", "delete")},
}


@dataclass(frozen=True)
class Absence:
    """Why a checkpoint has no value for a metric."""

    kind: str  # NOT_MEASURED or UNDEFINED
    reason: str

    def text(self) -> str:
        return f"{self.kind} ({self.reason})"


@dataclass(frozen=True)
class ReasonGroup:
    """Records of one checkpoint, kind and status whose reasons differ only in their numbers."""

    checkpoint: str
    intervention: str
    status: str
    text: str  # the reason, each number that varies written as its range
    records: int
    traces: int


def reason_template(text: str) -> tuple[str, list[str]]:
    """(the reason with every standalone number replaced by ``#``, the numbers in order)."""
    return _NUMBER.sub("#", text), _NUMBER.findall(text)


def _merge(template: str, slots: list[list[str]]) -> str:
    parts = template.split("#")
    out = [parts[0]]
    for values, tail in zip(slots, parts[1:]):
        distinct = list(dict.fromkeys(values))
        if len(distinct) == 1:
            out.append(distinct[0])
        else:
            ordered = sorted(distinct, key=float)
            out.append(f"{ordered[0]} to {ordered[-1]}")
        out.append(tail)
    return "".join(out)


def _status(r: Record) -> str:
    return "nonfinite" if r.status == "ok" and not is_usable(r) else r.status


def _default_reason(status: str) -> str:
    return {"nonfinite": "a NaN or infinite value", "no_answer": "no answer was read"}.get(
        status, "no reason given")


def group_reasons(records: Sequence[Record]) -> list[ReasonGroup]:
    """The unusable records grouped by (checkpoint, kind, status, reason without its numbers),
    most records first."""
    groups: dict[tuple[str, str, str, str], tuple[list[list[str]], set[str], list[int]]] = {}
    for r in records:
        status = _status(r)
        if status == "ok":
            continue
        template, numbers = reason_template(r.reason or _default_reason(status))
        key = (r.checkpoint, r.intervention, status, template)
        slots, traces, count = groups.setdefault(
            key, ([[] for _ in numbers], set(), [0]))
        for slot, number in zip(slots, numbers):
            slot.append(number)
        traces.add(r.trace_id)
        count[0] += 1
    out = [ReasonGroup(label, kind, status, _merge(template, slots), count[0], len(traces))
           for (label, kind, status, template), (slots, traces, count) in groups.items()]
    return sorted(out, key=lambda g: (-g.records, g.checkpoint, g.intervention, g.text))


def _absence(metric: str, recs: Sequence[Record]) -> Absence:
    entry = METRICS_BY_NAME[metric]
    kinds = entry.reads
    read = [r for r in recs if r.intervention in kinds]
    what = " or ".join(kinds) or "matching"
    if not read:
        hint = "; ".join(_HINTS[k] for k in kinds if k in _HINTS)
        return Absence(NOT_MEASURED, f"no {what} records" + (f": {hint}" if hint else ""))
    if not any(is_usable(r) for r in read):
        groups = group_reasons(read)
        top = groups[0]
        word = {"skipped": "skipped", "no_answer": "without an answer",
                "nonfinite": "non-finite"}.get(top.status, top.status)
        if len(groups) == 1:
            return Absence(UNDEFINED, f"all {len(read)} {what} records {word}: {top.text}")
        return Absence(UNDEFINED, f"all {len(read)} {what} records unusable; most often "
                                  f"({top.records}) {word}: {top.text}; "
                                  f"{len(groups) - 1} other kinds of reason")
    return Absence(UNDEFINED, f"no trace has {entry.needs}" if entry.needs
                   else "the usable records give it no value")


def absences(records: Sequence[Record], summary: Mapping[str, Any]
             ) -> dict[str, dict[str, Absence]]:
    """label -> metric -> why the summary has no value, for every non-count catalogue metric a
    checkpoint lacks (labels of the summary, then of the records)."""
    by_label: dict[str, list[Record]] = {}
    for r in records:
        by_label.setdefault(r.checkpoint, []).append(r)
    checkpoints = summary.get("checkpoints") or {}
    labels = list(dict.fromkeys([*checkpoints, *by_label]))
    out: dict[str, dict[str, Absence]] = {}
    for label in labels:
        ests = checkpoints.get(label) or {}
        out[label] = {m.name: _absence(m.name, by_label.get(label, []))
                      for m in CATALOGUE if m.unit != "count" and m.name not in ests}
    return out


def summary_absences(summary: Mapping[str, Any]) -> dict[str, dict[str, Absence]]:
    """What can be said from the summary alone: a metric another checkpoint has is "undefined"
    for this one; one no checkpoint has has "no value" (not measured or undefined: only the
    records tell, and the report says which)."""
    checkpoints = summary.get("checkpoints") or {}
    out: dict[str, dict[str, Absence]] = {}
    for label, ests in checkpoints.items():
        skipped = (ests.get("skipped_count") or {}).get("value")
        extra = f"; {skipped:.0f} of its records were skipped" if skipped else ""
        out[label] = {}
        for m in CATALOGUE:
            if m.unit == "count" or m.name in ests:
                continue
            if any(m.name in other for other in checkpoints.values()):
                out[label][m.name] = Absence(
                    UNDEFINED, f"no usable {' or '.join(m.reads)} record gives it a value"
                               + extra)
            else:
                out[label][m.name] = Absence(
                    NO_VALUE, f"no usable {' or '.join(m.reads)} records; the report says "
                              "whether it was not measured or undefined")
    return out
