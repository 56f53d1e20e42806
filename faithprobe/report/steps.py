"""Step importance in one trace: a step x method heat map, one panel per checkpoint.

Each method measures how much one step matters to the answer, in its own unit:

- ``corrupt``: mean KL(unedited || edited answer distribution) when the step is corrupted (the
  summary's continuation), nats;
- ``delete``: the same KL when the step is deleted, nats;
- ``truncate``: how much adding the step raises the log-probability of the answer when the
  reasoning is cut off right after it, ``log p(answer | steps 0..i) - log p(answer | steps
  0..i-1)``, nats;
- ``patch``: the share of the clean answer's logit difference that patching the step's residual
  stream removes (noising, the lowest patched ``resid_pre`` layer: the ``patching_effect`` site);
- ``infogain``: IG of the step, ``H_(j-1) - H_j`` (answer-only form), nats;
- ``resample``: counterfactual resampling importance, the total variation between the answer
  distributions with the step kept and resampled to a different step.

With the checkpoint as its own InfoGain scorer and a one-token answer, ``truncate`` and
``infogain`` are the same number (the answer's log-probability is its mean token NLL negated).

Colours are scaled per column (the largest absolute value of that method in any panel is full
colour; red positive, blue negative), so methods in different units sit side by side; every
cell is written out. The trace drawn is the one whose corruption (or deletion) effects spread
most, over any checkpoint.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from faithprobe.data.traces import Trace
from faithprobe.metrics import is_usable, step_effects
from faithprobe.metrics.features import step_gains
from faithprobe.metrics.selection import BLOCK_SITE, is_noising
from faithprobe.records import Record
from faithprobe.report.figure import Plot, figure, luminance, png, style

__all__ = ["MAX_STEPS_SHOWN", "METHODS", "StepImportance", "pick_step_importance",
           "step_importance_plot", "step_table"]

MAX_STEPS_SHOWN = 30  # the figure stops after this many steps (noted)
_ROW_CHARS = 44  # characters a line of a row label
# method key -> column title (unit)
METHODS: Mapping[str, str] = {
    "corrupt": "corrupt\nKL (nats)", "delete": "delete\nKL (nats)",
    "truncate": "truncate\nd log p (nats)", "patch": "patching\nshare",
    "infogain": "InfoGain\nIG (nats)", "resample": "resampling\nTV",
}


@dataclass(frozen=True)
class StepImportance:
    """The per-step importance of one trace under each method, per checkpoint label."""

    trace_id: str
    chosen_by: str  # "kl" or "flip": the measure whose spread picked the trace
    steps: list[str]  # the step texts ("step i" when the trace file is missing)
    # label -> method -> step -> value (only the cells measured)
    effects: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    spread: float = 0.0  # max - min of the choosing measure in the label that chose the trace
    # label -> methods with records for this trace but no usable one ("undefined", not "n/m")
    undefined: dict[str, set[str]] = field(default_factory=dict)
    text_from: str | None = None  # the label whose trace gave the step texts (None: none did)
    own_texts: bool = False  # the labels' traces differ (each checkpoint wrote its own)
    continuation: str = "keep"  # the corrupt records shown: later steps kept or regenerated

    def title(self, method: str) -> str:
        """A column's title; the corrupt column names its continuation."""
        if method == "corrupt":
            return f"corrupt KL\n({self.continuation}, nats)"
        return METHODS[method]

    @property
    def methods(self) -> list[str]:
        """The methods measured (or undefined) in any panel, in ``METHODS`` order."""
        return [m for m in METHODS if any(eff.get(m) for eff in self.effects.values())
                or any(m in u for u in self.undefined.values())]

    def cell(self, label: str, method: str, step: int) -> str:
        """A cell's text: its value, "undef." (records made, none usable) or "n/m" (not
        measured)."""
        v = self.effects.get(label, {}).get(method, {}).get(step)
        if v is not None:
            return f"{v:.3g}"
        return "undef." if method in self.undefined.get(label, set()) else "n/m"


def _mean(values: Mapping[int, list[float]]) -> dict[int, float]:
    return {k: float(np.mean(v)) for k, v in sorted(values.items()) if v}


def _trace_methods(recs: Sequence[Record], continuation: str) -> dict[str, dict[int, float]]:
    """method -> step -> value for the records of one trace and checkpoint."""
    out: dict[str, dict[int, float]] = {}
    for kind in ("corrupt", "delete"):
        eff = step_effects(recs, continuation=continuation, interventions=(kind,))
        if eff:
            out[kind] = {k: float(np.mean(np.abs(v))) for k, v in eff.items()}
    logp: dict[int, list[float]] = {}
    for r in recs:
        if (r.intervention == "truncate" and is_usable(r) and r.step is not None
                and r.answer_logprob is not None):
            logp.setdefault(r.step, []).append(float(r.answer_logprob))
    lp = _mean(logp)
    out["truncate"] = {k: lp[k + 1] - lp[k] for k in lp if k + 1 in lp}
    lowest: dict[int, tuple[int, float]] = {}
    for r in recs:
        if (r.intervention == "patch" and is_usable(r) and r.value is not None
                and r.step is not None and r.site is not None and is_noising(r)):
            m = BLOCK_SITE.match(r.site)
            if m and m.group(2) == "hook_resid_pre":
                layer = int(m.group(1))
                if r.step not in lowest or layer < lowest[r.step][0]:
                    lowest[r.step] = (layer, float(r.value))
    out["patch"] = {k: v for k, (_, v) in sorted(lowest.items())}
    out["infogain"] = {j - 1: g for j, g in step_gains(list(recs)).items()}
    out["resample"] = {r.step: float(r.value) for r in recs
                       if r.intervention == "resample" and is_usable(r)
                       and r.value is not None and r.step is not None}
    return {k: v for k, v in out.items() if v}


def _choosing(recs: Sequence[Record], measure: str, continuation: str) -> dict[int, float]:
    if measure == "kl":
        eff = step_effects(recs, continuation=continuation)
        return {k: float(np.mean(v)) for k, v in eff.items()}
    acc: dict[int, list[float]] = {}
    for r in recs:
        if (r.intervention in ("corrupt", "delete") and is_usable(r) and r.step is not None
                and r.same_answer is not None
                and (r.intervention != "corrupt"
                     or r.detail.get("continuation") == continuation)):
            acc.setdefault(r.step, []).append(0.0 if r.same_answer else 1.0)
    return _mean(acc)


def pick_step_importance(groups: Mapping[str, Sequence[Record]],
                         traces: Mapping[str, Sequence[Trace]] | Sequence[Trace] | None = None,
                         *, continuation: str = "keep") -> StepImportance | None:
    """The trace whose per-step corruption/deletion effects spread most (max - min over its
    steps, any label; KL where the edits carry one, else the share that flips the answer), with
    every method's per-step values of every label; None without such records. ``traces``: per
    label (each checkpoint's own, where it wrote its reasoning) or one list for all; the step
    texts come from the first label (in ``groups`` order) whose traces hold the trace."""
    all_recs = [r for recs in groups.values() for r in recs]
    has_kl = any(r.intervention in ("corrupt", "delete") and is_usable(r) and r.kl is not None
                 and r.step is not None for r in all_recs)
    measure = "kl" if has_kl else "flip"
    by_label: dict[str, dict[str, list[Record]]] = {}
    for label, recs in groups.items():
        for r in recs:
            by_label.setdefault(label, {}).setdefault(r.trace_id, []).append(r)
    best: tuple[float, str] | None = None
    for traces_of in by_label.values():
        for tid in sorted(traces_of):
            eff = _choosing(traces_of[tid], measure, continuation)
            if not eff:
                continue
            spread = max(eff.values()) - min(eff.values())
            if best is None or spread > best[0] or (spread == best[0] and tid < best[1]):
                best = (spread, tid)
    if best is None:
        return None
    spread, tid = best
    effects = {label: _trace_methods(traces_of[tid], continuation)
               for label, traces_of in by_label.items() if tid in traces_of}
    undefined = {label: {m for m in METHODS if not effects[label].get(m)
                         and any(r.intervention == m for r in traces_of[tid])}
                 for label, traces_of in by_label.items() if tid in traces_of}
    per_label = traces if isinstance(traces, Mapping) else {label: traces or ()
                                                            for label in groups}
    found = {label: t for label in groups for t in per_label.get(label) or () if t.id == tid}
    text_from = next(iter(found), None)
    trace = found.get(text_from) if text_from is not None else None
    own = len({t.steps for t in found.values()}) > 1
    if trace is not None:
        texts = list(trace.steps)
    else:
        n = max((r.n_steps for r in all_recs if r.trace_id == tid), default=0)
        n = max([n] + [k + 1 for eff in effects.values() for col in eff.values() for k in col])
        texts = [f"step {i}" for i in range(n)]
    return StepImportance(tid, measure, texts, effects, spread, undefined, text_from, own,
                          continuation)


def _row_label(i: int, text: str) -> str:
    lines = textwrap.wrap(f"{i}. {' '.join(text.split())}", _ROW_CHARS) or [f"{i}."]
    if len(lines) > 2:
        lines = [lines[0], lines[1][:_ROW_CHARS - 1] + "\u2026"]
    return "\n".join(lines)


def step_importance_plot(imp: StepImportance | None) -> Plot:
    """The step x method heat map of one trace, a panel per checkpoint, step texts as rows."""
    name, title = "step_importance", "Step importance in one trace"
    methods = imp.methods if imp is not None else []
    if imp is None or not methods or not imp.steps:
        return Plot(name, title, None, "no usable corrupt or delete records: step importance "
                                       "was not measured")
    labels = list(imp.effects)
    shown = imp.steps[:MAX_STEPS_SHOWN]
    scale = {m: max([abs(v) for eff in imp.effects.values() for v in eff.get(m, {}).values()]
                    + [1e-12]) for m in methods}
    rows_h = max(0.42, 0.2 * max(len(_row_label(i, t).splitlines()) for i, t in
                                 enumerate(shown)))
    with style():
        from matplotlib import colormaps

        cmap = colormaps["RdBu_r"].with_extremes(bad="#dddddd")
        fig = figure(2.6 + (0.9 + 0.62 * len(methods)) * len(labels),
                     1.6 + rows_h * len(shown))
        axes = fig.subplots(1, len(labels), squeeze=False, sharey=True)[0]
        for p, (ax, label) in enumerate(zip(axes, labels)):
            eff = imp.effects[label]
            raw = np.full((len(shown), len(methods)), np.nan)
            for j, m in enumerate(methods):
                for i, v in eff.get(m, {}).items():
                    if 0 <= i < len(shown):
                        raw[i, j] = v
            normed = raw / np.array([scale[m] for m in methods])[None, :]
            ax.imshow(np.ma.masked_invalid(normed), cmap=cmap, vmin=-1, vmax=1, aspect="auto",
                      interpolation="nearest")
            for i in range(len(shown)):
                for j in range(len(methods)):
                    v = raw[i, j]
                    if np.isnan(v):
                        ax.text(j, i, imp.cell(label, methods[j], i), ha="center",
                                va="center", fontsize=6, color="#555555")
                        continue
                    dark = luminance(cmap((normed[i, j] + 1) / 2)) < 0.5
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=6.5,
                            color="white" if dark else "black")
            ax.set_xticks(range(len(methods)), [imp.title(m) for m in methods], fontsize=6.5)
            ax.xaxis.tick_top()
            ax.set_yticks(range(len(shown)), [_row_label(i, t) for i, t in enumerate(shown)])
            if p:
                ax.tick_params(labelleft=False)
            ax.set_title(label, pad=18)
        fig.suptitle(f"{title}: trace {imp.trace_id} (colour scaled per column; "
                     "n/m = not measured, undef. = measured but undefined)")
        later = "regenerated" if imp.continuation == "regenerate" else "kept"
        note = ("Columns: corrupt / delete = KL of the answer distribution when the step is "
                f"corrupted (the later steps {later}) / deleted; truncate = rise of log "
                "p(answer) when the step is added to the truncated reasoning; patching = share "
                "of the clean logit difference removed by patching the step's residual stream; "
                "InfoGain = the entropy drop when the step is added. Red: the step matters "
                "(positive), blue: negative.")
        if len(imp.steps) > len(shown):
            note += f" Only the first {len(shown)} of {len(imp.steps)} steps are drawn."
        return Plot(name, f"{title}: trace {imp.trace_id}", png(fig), note)


def step_table(imp: StepImportance) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the figure's numbers: a row per step, a column per label and method;
    "n/m" where a method did not measure the step, "undef." where its records are unusable."""
    methods = imp.methods
    header = (["step"] + [f"{label}: {' '.join(imp.title(m).split())}"
                          for label in imp.effects for m in methods] + ["text"])
    rows = []
    for i, text in enumerate(imp.steps):
        cells = []
        for label in imp.effects:
            cells += [imp.cell(label, m, i) for m in methods]
        rows.append([str(i)] + cells + [text])
    return header, rows
