"""Plots for the run report: one function a figure, PNG bytes out, no data -> a note, no figure.

Every function takes ``groups``: display label -> the records of ONE checkpoint (``base``,
``sft``, or ``run/label`` in a comparison across runs), and returns a ``Plot`` whose ``png`` is
None when there was nothing to draw (``note`` says why). Figures are built with the object API
(``matplotlib.figure.Figure``, Agg rendering) so no pyplot state or backend is touched, and math
text parsing is off, so a ``$`` in a step's text is drawn as typed.
"""

from __future__ import annotations

import io
import textwrap
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faithprobe.data.traces import Trace
from faithprobe.metrics import (
    adding_mistakes_curve,
    coverage_curve,
    early_answering_curve,
    infogain_by_step,
    is_usable,
    patching_grid,
    reliability_bins,
    step_effects,
)
from faithprobe.records import Record

__all__ = [
    "PLOT_NAMES", "Plot", "StepImportance", "adding_mistakes_plot", "coverage_plot",
    "early_answering_plot", "forest_plot", "infogain_plot", "patching_plot",
    "pick_step_importance", "step_importance_plot",
]

DPI = 100
MAX_STEPS_SHOWN = 30  # the step-importance figure stops after this many steps (noted)
_STEP_CHARS = 150  # characters of a step's text shown in its box
# Every Plot.name this module draws (files under plots/); a report removes the ones it skipped.
PLOT_NAMES = ("forest", "early_answering", "adding_mistakes", "infogain", "patching",
              "step_importance", "coverage")


@dataclass(frozen=True)
class Plot:
    """One figure of the report, or the reason it is missing."""

    name: str  # file stem under plots/ (a constant per kind of plot)
    title: str
    png: bytes | None  # None: skipped, nothing to draw
    note: str | None = None  # why it was skipped, or a caveat printed under the figure


@dataclass(frozen=True)
class StepImportance:
    """The per-step effects of one trace, for the coloured-steps figure and its table."""

    trace_id: str
    measure: str  # "kl" (mean KL of the edited answer distribution) or "flip" (share flipped)
    steps: list[str]  # the step texts ("step i" when the trace file is missing)
    effects: dict[str, dict[int, float]] = field(default_factory=dict)  # label -> step -> effect
    spread: float = 0.0  # max - min of the effects of the label that chose this trace


# ---------------------------------------------------------------------------------------------
# helpers


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    rc = {"text.parse_math": False, "font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7,
          "figure.dpi": DPI, "savefig.dpi": DPI}
    with matplotlib.rc_context(rc), warnings.catch_warnings():
        # A glyph the default font lacks (CJK, emoji) is drawn as a box: not worth a warning.
        warnings.filterwarnings("ignore", message=r"Glyph .* missing", category=UserWarning)
        yield


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _color(i: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10"](i % 10)


# ---------------------------------------------------------------------------------------------
# curves


def _curve_plot(groups: Mapping[str, Sequence[Record]], *, name: str, title: str, xlabel: str,
                curves: dict[str, list[tuple[float, float]]], missing: str) -> Plot:
    curves = {label: pts for label, pts in curves.items() if pts}
    if not curves:
        return Plot(name, title, None, missing)
    with _style():
        fig = _figure(5.0, 3.4)
        ax = fig.add_subplot()
        for i, (label, pts) in enumerate(curves.items()):
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=3, lw=1.5, label=label, color=_color(i))
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction with the same answer")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        return Plot(name, title, _png(fig))


def early_answering_plot(groups: Mapping[str, Sequence[Record]]) -> Plot:
    """Lanham et al.'s early-answering curve per checkpoint (pooled over trace lengths)."""
    return _curve_plot(
        groups, name="early_answering", title="Early answering (truncated reasoning)",
        xlabel="fraction of reasoning kept (k / n)",
        curves={label: early_answering_curve(recs) for label, recs in groups.items()},
        missing="no usable truncate records: early answering was not measured")


def adding_mistakes_plot(groups: Mapping[str, Sequence[Record]], *,
                         continuation: str | None = None) -> Plot:
    """Lanham et al.'s adding-mistakes curve per checkpoint (corrupt records)."""
    return _curve_plot(
        groups, name="adding_mistakes", title="Adding mistakes (one step corrupted)",
        xlabel="fraction of reasoning before the mistake (i / n)",
        curves={label: adding_mistakes_curve(recs, continuation=continuation)
                for label, recs in groups.items()},
        missing="no usable corrupt records: adding mistakes was not measured")


def coverage_plot(groups: Mapping[str, Sequence[Record]]) -> Plot:
    """Accuracy against coverage (answers kept above a confidence threshold), and reliability."""
    name, title = "coverage", "Calibration: accuracy vs coverage, and reliability"
    curves = {}
    bins: dict[str, list[tuple[float, float, int]]] = {}
    for label, recs in groups.items():
        pts = [(cov, acc) for _, cov, acc in coverage_curve(recs) if acc is not None]
        graded = [(float(r.pred_prob), float(r.correct)) for r in recs
                  if r.intervention == "none" and is_usable(r) and r.pred_prob is not None
                  and r.correct is not None]
        if pts and graded:
            curves[label] = pts
            bins[label] = reliability_bins(graded)
    if not curves:
        return Plot(name, title, None, "no unedited records with both a confidence (pred_prob) "
                                       "and a gold answer: calibration was not measured")
    with _style():
        fig = _figure(7.6, 3.2)
        ax_cov, ax_rel = fig.subplots(1, 2)
        for i, (label, pts) in enumerate(curves.items()):
            xs, ys = zip(*pts)
            ax_cov.plot(xs, ys, marker="o", ms=3, label=label, color=_color(i))
            conf, acc, counts = zip(*bins[label])
            ax_rel.plot(conf, acc, marker="o", label=label, color=_color(i))
            for c, a, k in zip(conf, acc, counts):
                ax_rel.annotate(str(k), (c, a), fontsize=6, xytext=(2, 2),
                                textcoords="offset points", color=_color(i))
        ax_cov.set_xlabel("coverage (share answered at or above a confidence threshold)")
        ax_cov.set_ylabel("accuracy on the answered")
        ax_cov.set_xlim(-0.02, 1.02)
        ax_cov.set_ylim(-0.02, 1.02)
        ax_cov.grid(alpha=0.3)
        ax_cov.legend(loc="lower left")
        ax_rel.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax_rel.set_xlabel("mean confidence in the bin (pred_prob)")
        ax_rel.set_ylabel("accuracy in the bin (count annotated)")
        ax_rel.set_xlim(-0.02, 1.02)
        ax_rel.set_ylim(-0.02, 1.02)
        ax_rel.grid(alpha=0.3)
        fig.suptitle(title)
        return Plot(name, title, _png(fig))


# ---------------------------------------------------------------------------------------------
# patching, InfoGain, forest


def patching_plot(groups: Mapping[str, Sequence[Record]], *, max_sites_labelled: int = 24
                  ) -> Plot:
    """Step x site heatmaps of the mean patching share, side by side per label."""
    name, title = "patching", ("Activation patching: share of the clean logit difference "
                               "removed (step x site)")
    grids = {}
    for label, recs in groups.items():
        steps, sites, matrix = patching_grid(recs)
        if steps:
            grids[label] = (steps, sites, matrix)
    if not grids:
        return Plot(name, title, None, "no usable patch records: activation patching was not "
                                       "run for these checkpoints")
    finite = np.concatenate([m[np.isfinite(m)] for _, _, m in grids.values()])
    lo, hi = min(0.0, float(finite.min())), max(1.0, float(finite.max()))
    n_sites = max(len(s) for _, s, _ in grids.values())
    n_steps = max(len(s) for s, _, _ in grids.values())
    with _style():
        from matplotlib import colormaps

        cmap = colormaps["viridis"].with_extremes(bad="#dddddd")
        width = min(18.0, 1.0 + len(grids) * (1.2 + 0.28 * n_sites))
        fig = _figure(width, min(12.0, 1.8 + 0.25 * n_steps + 0.06 * n_sites))
        axes = fig.subplots(1, len(grids), squeeze=False)[0]
        image = None
        for ax, (label, (steps, sites, matrix)) in zip(axes, grids.items()):
            image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=cmap, vmin=lo,
                              vmax=hi, interpolation="nearest")
            every = max(1, -(-len(sites) // max_sites_labelled))
            ticks = list(range(0, len(sites), every))
            ax.set_xticks(ticks, [sites[j] for j in ticks], rotation=90, fontsize=6)
            every = max(1, -(-len(steps) // 30))
            ticks = list(range(0, len(steps), every))
            ax.set_yticks(ticks, [str(steps[i]) for i in ticks])
            ax.set_xlabel("hook site")
            ax.set_ylabel("step patched")
            ax.set_title(label)
        fig.colorbar(image, ax=list(axes), label="share removed (0 = none, 1 = all)",
                     shrink=0.9)
        fig.suptitle(title)
        return Plot(name, title, _png(fig),
                    "Mean over traces; grey cells were not measured.")


def infogain_plot(groups: Mapping[str, Sequence[Record]], *, n_boot: int = 1000, seed: int = 0
                  ) -> Plot:
    """Per-step InfoGain IG_j = H_(j-1) - H_j with bootstrap intervals, bars per label."""
    name, title = "infogain", "InfoGain per step (answer-only form)"
    data = {}
    for label, recs in groups.items():
        rows = infogain_by_step(recs, n_boot=n_boot, seed=seed)
        if rows:
            data[label] = rows
    if not data:
        return Plot(name, title, None, "no usable infogain records: InfoGain was not measured")
    n_steps = max(j for rows in data.values() for j, *_ in rows)
    with _style():
        fig = _figure(min(14.0, 3.0 + 0.35 * n_steps * len(data)), 3.2)
        ax = fig.add_subplot()
        width = 0.8 / len(data)
        for i, (label, rows) in enumerate(data.items()):
            js = np.array([j for j, *_ in rows], dtype=float)
            mean = np.array([m for _, m, _, _ in rows])
            lo = np.array([lo for _, _, lo, _ in rows])
            hi = np.array([hi for _, _, _, hi in rows])
            err = np.vstack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)])
            ax.bar(js + (i - (len(data) - 1) / 2) * width, mean, width, yerr=err, capsize=2,
                   label=label, color=_color(i), error_kw={"lw": 0.8})
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("step j")
        ax.set_ylabel("IG_j = H_(j-1) - H_j  (nats, 95% CI)")
        every = max(1, -(-n_steps // 30))
        ax.set_xticks(range(1, n_steps + 1, every))
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
        return Plot(name, title, _png(fig))


def forest_plot(rows: Sequence[tuple[str, str, float, float, float]]) -> Plot:
    """Deltas with their intervals, one panel per unit, a zero line in each.

    Args:
        rows: (row label, unit of the panel, delta, ci_low, ci_high), already in display units.
    """
    name, title = "forest", "Comparisons: change with 95% CI"
    rows = list(rows)
    if not rows:
        return Plot(name, title, None, "no comparisons: the summary compares no checkpoints")
    units = list(dict.fromkeys(unit for _, unit, *_ in rows))
    counts = [sum(1 for r in rows if r[1] == u) for u in units]
    longest = max(len(label) for label, *_ in rows)
    with _style():
        fig = _figure(min(12.0, 3.6 + 0.055 * longest),
                      0.8 + 0.26 * len(rows) + 0.55 * len(units))
        axes = fig.subplots(len(units), 1, squeeze=False,
                            gridspec_kw={"height_ratios": counts})[:, 0]
        for ax, unit in zip(axes, units):
            sel = [r for r in rows if r[1] == unit]
            for y, (_, _, delta, lo, hi) in enumerate(sel):
                clear = lo > 0 or hi < 0
                color = "#c0392b" if clear else "#7f8c8d"
                ax.hlines(y, lo, hi, color=color, lw=1.8)
                ax.plot([delta], [y], "o", color=color, ms=4)
            ax.axvline(0, color="black", lw=0.8)
            ax.set_yticks(range(len(sel)), [label for label, *_ in sel])
            ax.set_ylim(len(sel) - 0.5, -0.5)
            ax.set_xlabel(unit)
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle(title)
        return Plot(name, title, _png(fig),
                    "Red: the interval excludes 0; grey: no clear change.")


# ---------------------------------------------------------------------------------------------
# one trace's steps coloured by their importance


def _trace_effects(recs: Sequence[Record], measure: str, continuation: str
                   ) -> dict[str, dict[int, float]]:
    """trace id -> step -> mean effect of corrupting/deleting that step (one checkpoint)."""
    if measure == "kl":
        by_trace: dict[str, list[Record]] = {}
        for r in recs:
            by_trace.setdefault(r.trace_id, []).append(r)
        out = {}
        for tid, trs in sorted(by_trace.items()):
            eff = step_effects(trs, continuation=continuation)
            if eff:
                out[tid] = {k: float(np.mean(v)) for k, v in eff.items()}
        return out
    acc: dict[str, dict[int, list[float]]] = {}
    for r in recs:
        if (r.intervention in ("corrupt", "delete") and is_usable(r) and r.step is not None
                and r.same_answer is not None
                and (r.intervention != "corrupt"
                     or r.detail.get("continuation") == continuation)):
            acc.setdefault(r.trace_id, {}).setdefault(r.step, []).append(
                0.0 if r.same_answer else 1.0)
    return {tid: {k: float(np.mean(v)) for k, v in sorted(steps.items())}
            for tid, steps in sorted(acc.items())}


def pick_step_importance(groups: Mapping[str, Sequence[Record]],
                         traces: Sequence[Trace] | None = None, *,
                         continuation: str = "keep") -> StepImportance | None:
    """The trace whose per-step effects spread most (max - min over its steps), any label.

    The effect is the mean KL of the answer distribution after corrupting or deleting the step
    (``kl``), or, when no edit record carries a KL, the share of those edits that flip the answer.
    """
    all_recs = [r for recs in groups.values() for r in recs]
    has_kl = any(r.intervention in ("corrupt", "delete") and is_usable(r) and r.kl is not None
                 and r.step is not None for r in all_recs)
    measure = "kl" if has_kl else "flip"
    per_label = {label: _trace_effects(recs, measure, continuation)
                 for label, recs in groups.items()}
    best: tuple[float, str] | None = None
    for effects in per_label.values():
        for tid, steps in effects.items():
            spread = max(steps.values()) - min(steps.values())
            if best is None or spread > best[0] or (spread == best[0] and tid < best[1]):
                best = (spread, tid)
    if best is None:
        return None
    spread, tid = best
    trace = next((t for t in traces or () if t.id == tid), None)
    if trace is not None:
        texts = list(trace.steps)
    else:
        n = max((r.n_steps for r in all_recs if r.trace_id == tid), default=0)
        n = max(n, 1 + max(k for eff in per_label.values() for k in eff.get(tid, {0: 0})))
        texts = [f"step {i}" for i in range(n)]
    return StepImportance(tid, measure, texts,
                          {label: eff[tid] for label, eff in per_label.items() if tid in eff},
                          spread)


def step_importance_plot(imp: StepImportance | None) -> Plot:
    """One trace's steps as boxes coloured by the effect of editing them, a column per label."""
    name, title = "step_importance", "Step importance in one trace"
    if imp is None or not imp.effects or not imp.steps:
        return Plot(name, title, None, "no usable corrupt or delete records: step importance "
                                       "was not measured")
    labels = list(imp.effects)
    shown = imp.steps[:MAX_STEPS_SHOWN]
    values = [v for eff in imp.effects.values() for v in eff.values()]
    vmax = 1.0 if imp.measure == "flip" else max(max(values), 1e-9)
    box_h = 0.62  # inches per step box
    with _style():
        from matplotlib import cm, colormaps, colors
        from matplotlib.patches import Rectangle

        cmap = colormaps["Reds"]
        norm = colors.Normalize(0.0, vmax)
        fig = _figure(1.0 + 3.6 * len(labels), 1.3 + box_h * len(shown))
        axes = fig.subplots(1, len(labels), squeeze=False)[0]
        for ax, label in zip(axes, labels):
            eff = imp.effects[label]
            ax.set_xlim(0, 1)
            ax.set_ylim(len(shown), 0)
            ax.axis("off")
            ax.set_title(label)
            for i, text in enumerate(shown):
                value = eff.get(i)
                face = "#eeeeee" if value is None else cmap(norm(value))
                ax.add_patch(Rectangle((0.0, i + 0.05), 1.0, 0.9, facecolor=face,
                                       edgecolor="#999999", lw=0.5))
                dark = value is not None and _luminance(face) < 0.5
                shown_value = "not measured" if value is None else f"{value:.3g}"
                body = text if len(text) <= _STEP_CHARS else text[:_STEP_CHARS - 1] + "\u2026"
                lines = textwrap.wrap(f"{i}. {body}", 52)[:3] or [f"{i}."]
                ax.text(0.02, i + 0.5, "\n".join(lines), va="center", ha="left", fontsize=6.5,
                        color="white" if dark else "black", clip_on=True)
                ax.text(0.98, i + 0.12, shown_value, va="top", ha="right", fontsize=6,
                        color="white" if dark else "#333333")
        what = ("mean KL(unedited || edited answer distribution)" if imp.measure == "kl"
                else "share of edits that flip the answer")
        sm = cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=list(axes), orientation="horizontal", shrink=0.6,
                     label=f"{what}, corrupting or deleting the step")
        fig.suptitle(f"{title}: trace {imp.trace_id}")
        note = None
        if len(imp.steps) > len(shown):
            note = f"Only the first {len(shown)} of {len(imp.steps)} steps are drawn."
        return Plot(name, f"{title}: trace {imp.trace_id}", _png(fig), note)


def _luminance(rgba: Any) -> float:
    from matplotlib import colors

    r, g, b, _ = colors.to_rgba(rgba)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b
