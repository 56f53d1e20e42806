"""Plots for the run report: one function a figure, PNG bytes out, no data -> a note, no figure.

Every function takes ``groups``: display label -> the records of ONE checkpoint (``base``,
``sft``, or ``run/label`` in a comparison across runs), and returns a ``Plot``
(``faithprobe.report.figure``) whose ``png`` is None when there was nothing to draw (``note``
says why). This module draws the curves, InfoGain and resampling importance per step, the
patching grid and the forest plot; ``calibration`` and ``steps`` draw the calibration figure
and one trace's step x method heat map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from faithprobe.metrics import (
    adding_mistakes_curve,
    early_answering_curve,
    infogain_by_step,
    patching_grid,
)
from faithprobe.metrics.curves import patch_corruption, resampling_by_step
from faithprobe.records import Record
from faithprobe.report.figure import PLOT_NAMES, Plot, color, figure, png, style

__all__ = [
    "PLOT_NAMES", "ForestRow", "Plot", "adding_mistakes_plot", "early_answering_plot",
    "forest_plot", "infogain_plot", "panel_limits", "patching_plot", "resampling_plot",
]

READING_COLORS = {"clear increase": "#c0392b", "clear decrease": "#c0392b",
                  "no practical change": "#2471a3", "no clear change": "#8c8c8c"}


@dataclass(frozen=True)
class ForestRow:
    """One comparison in the forest plot, in display units (percentage points for shares)."""

    label: str
    panel: str  # the unit's panel title: rows of one panel share a scale
    delta: float
    lo: float
    hi: float
    mmd: float  # the minimal meaningful difference, drawn as a band around 0
    reading: str


# ---------------------------------------------------------------------------------------------
# curves


def _curve_plot(groups: Mapping[str, Sequence[Record]], *, name: str, title: str, xlabel: str,
                curves: dict[str, list[tuple[float, float]]], missing: str) -> Plot:
    curves = {label: pts for label, pts in curves.items() if pts}
    if not curves:
        return Plot(name, title, None, missing)
    with style():
        fig = figure(5.0, 3.4)
        ax = fig.add_subplot()
        for i, (label, pts) in enumerate(curves.items()):
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=3, lw=1.5, label=label, color=color(i))
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction with the same answer")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        return Plot(name, title, png(fig))


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


# ---------------------------------------------------------------------------------------------
# patching, InfoGain, forest


CORRUPTED_RUNS = {"each": "each step alone corrupted", "all": "every step corrupted at once"}


def site_label(site: str) -> str:
    """A hook name as a short tick label: ``blocks.12.hook_attn_out`` -> ``12a``."""
    parts = site.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        return parts[1] + {"hook_resid_pre": "r", "hook_attn_out": "a",
                           "hook_mlp_out": "m"}.get(parts[2], ":" + parts[2])
    return site


def patching_plot(groups: Mapping[str, Sequence[Record]], *, max_sites_labelled: int = 24
                  ) -> Plot:
    """Step x site heatmaps of the mean patching share, side by side per label and corrupted
    run (``each``: a step's cells patched from the run with that step alone corrupted;
    ``all``: from the run with every step corrupted at once)."""
    name, title = "patching", ("Activation patching: share of the clean logit difference "
                               "removed (step x site)")
    grids = {}
    for label, recs in groups.items():
        order = list(CORRUPTED_RUNS)
        kinds = sorted({patch_corruption(r) for r in recs if r.intervention == "patch"},
                       key=lambda k: (order.index(k) if k in order else len(order), k))
        for kind in kinds:
            steps, sites, matrix = patching_grid(recs, corrupted=kind)
            if steps:
                grids[f"{label}\n{CORRUPTED_RUNS.get(kind, kind)}"] = (steps, sites, matrix)
    if not grids:
        return Plot(name, title, None, "no usable patch records: activation patching was not "
                                       "run for these checkpoints")
    finite = np.concatenate([m[np.isfinite(m)] for _, _, m in grids.values()])
    lo, hi = min(0.0, float(finite.min())), max(1.0, float(finite.max()))
    n_sites = max(len(s) for _, s, _ in grids.values())
    n_steps = max(len(s) for s, _, _ in grids.values())
    with style():
        from matplotlib import colormaps

        cmap = colormaps["viridis"].with_extremes(bad="#dddddd")
        width = min(18.0, 1.0 + len(grids) * (1.2 + 0.28 * n_sites))
        fig = figure(width, min(12.0, 1.8 + 0.25 * n_steps + 0.06 * n_sites))
        axes = fig.subplots(1, len(grids), squeeze=False)[0]
        image = None
        for ax, (label, (steps, sites, matrix)) in zip(axes, grids.items()):
            image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=cmap, vmin=lo,
                              vmax=hi, interpolation="nearest")
            every = max(1, -(-len(sites) // max_sites_labelled))
            ticks = list(range(0, len(sites), every))
            ax.set_xticks(ticks, [site_label(sites[j]) for j in ticks], fontsize=6)
            every = max(1, -(-len(steps) // 30))
            ticks = list(range(0, len(steps), every))
            ax.set_yticks(ticks, [str(steps[i]) for i in ticks])
            ax.set_xlabel("layer (component: r = resid_pre, a = attn_out, m = mlp_out)")
            ax.set_ylabel("step patched")
            ax.set_title(label)
        fig.colorbar(image, ax=list(axes), shrink=0.9,
                     label=f"share removed: 0 = none, 1 = all\n(here {lo:.2g} to {hi:.2g})")
        fig.suptitle(title)
        return Plot(name, title, png(fig),
                    "Mean over traces; grey cells were not measured. Each step alone: step i's "
                    "cells are patched from the run with step i alone corrupted, so every cell "
                    "measures step i. Every step at once: from one run with every step "
                    "corrupted, so above layer 0 a cell of step i also carries what the other "
                    "corrupted steps changed. Layer 0's resid_pre is the same under both.")


def infogain_plot(groups: Mapping[str, Sequence[Record]], *, n_boot: int = 1000, seed: int = 0
                  ) -> Plot:
    """Per-step InfoGain with bootstrap intervals, bars per label. Steps are numbered from 0,
    as in the records and every other plot: step i's bar is IG_(i+1) = H_i - H_(i+1), the drop
    of the answer's entropy when step i is added after steps 0..i-1."""
    name, title = "infogain", "InfoGain per step (answer-only form)"
    data = {}
    for label, recs in groups.items():
        rows = infogain_by_step(recs, n_boot=n_boot, seed=seed)
        if rows:
            data[label] = [(j - 1, mean, lo, hi) for j, mean, lo, hi in rows]
    if not data:
        return Plot(name, title, None, "no usable infogain records: InfoGain was not measured")
    return _step_bars(name, title, data, first=0, xlabel="step i (0-based, as in the records)",
                      ylabel="H_i - H_(i+1): entropy drop when step i is added\n(nats, 95% CI)")


def resampling_plot(groups: Mapping[str, Sequence[Record]], *, n_boot: int = 1000,
                    seed: int = 0) -> Plot:
    """Counterfactual resampling importance of each step (mean over traces, bootstrap
    intervals over traces), bars per label."""
    name, title = "resampling", "Resampling importance per step (counterfactual)"
    data = {}
    for label, recs in groups.items():
        rows = resampling_by_step(recs, n_boot=n_boot, seed=seed)
        if rows:
            data[label] = [row[:4] for row in rows]
    if not data:
        return Plot(name, title, None, "no usable resample records: resampling was not run "
                    "([resample] enabled) or no resampled step differed from the original")
    return _step_bars(name, title, data, first=0, xlabel="step i",
                      ylabel="TV(kept, resampled)  (95% CI)")


def _step_bars(name: str, title: str, data: Mapping[str, list[tuple[int, float, float, float]]],
               *, first: int, xlabel: str, ylabel: str) -> Plot:
    """Bars of (step, mean, ci_low, ci_high) rows, one colour per label, with error bars."""
    n_steps = max(j for rows in data.values() for j, *_ in rows)
    with style():
        fig = figure(min(14.0, 3.0 + 0.35 * (n_steps + 1 - first) * len(data)), 3.2)
        ax = fig.add_subplot()
        width = 0.8 / len(data)
        for i, (label, rows) in enumerate(data.items()):
            js = np.array([j for j, *_ in rows], dtype=float)
            mean = np.array([m for _, m, _, _ in rows])
            lo = np.array([lo for _, _, lo, _ in rows])
            hi = np.array([hi for _, _, _, hi in rows])
            err = np.vstack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)])
            xs = js + (i - (len(data) - 1) / 2) * width
            ax.bar(xs, mean, width, yerr=err, capsize=2, label=label, color=color(i),
                   error_kw={"lw": 0.8})
            # a marker at each mean: a bar of height 0 is a measured 0, not a missing value
            ax.scatter(xs, mean, s=8, color=color(i), edgecolors="black", linewidths=0.5,
                       zorder=3)
        ax.axhline(0, color="black", lw=0.8)
        low = min(0.0, *(v for rows in data.values() for _, m, lo, _ in rows for v in (m, lo)))
        high = max(0.0, *(v for rows in data.values() for _, m, _, hi in rows for v in (m, hi)))
        pad = 0.05 * ((high - low) or 1.0)
        ax.set_ylim(low - pad, high + pad)  # room for a marker at 0
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        every = max(1, -(-(n_steps + 1 - first) // 30))
        ax.set_xticks(range(first, n_steps + 1, every))
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
        return Plot(name, title, png(fig))


def panel_limits(rows: Sequence[ForestRow]) -> tuple[float, float]:
    """The x range of one forest panel: its own rows' intervals, bands and 0, padded 8%."""
    lo = min(min(r.lo for r in rows), min(-r.mmd for r in rows), 0.0)
    hi = max(max(r.hi for r in rows), max(r.mmd for r in rows), 0.0)
    pad = 0.08 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def forest_plot(rows: Sequence[ForestRow]) -> Plot:
    """Changes with their intervals, one panel per unit with its own scale.

    Each row shows its minimal meaningful difference as a grey band around 0 and is coloured by
    its reading (red: clear change; blue: no practical change; grey: no clear change); the
    change and its interval are written on the right.
    """
    name, title = "forest", "Comparisons: change (b - a) with its 95% CI, one scale per unit"
    rows = list(rows)
    if not rows:
        return Plot(name, title, None, "no comparisons: the summary compares no checkpoints")
    panels = list(dict.fromkeys(r.panel for r in rows))
    counts = [sum(1 for r in rows if r.panel == p) for p in panels]
    longest = max(len(r.label) for r in rows)
    with style():
        fig = figure(min(13.0, 5.6 + 0.055 * longest),
                     0.9 + 0.3 * len(rows) + 0.75 * len(panels))
        axes = fig.subplots(len(panels), 1, squeeze=False,
                            gridspec_kw={"height_ratios": counts})[:, 0]
        for ax, panel in zip(axes, panels):
            sel = [r for r in rows if r.panel == panel]
            for y, r in enumerate(sel):
                ax.fill_betweenx([y - 0.38, y + 0.38], -r.mmd, r.mmd, color="#e6e6e6", lw=0)
                c = READING_COLORS.get(r.reading, "#8c8c8c")
                ax.hlines(y, r.lo, r.hi, color=c, lw=2.0)
                ax.plot([r.delta], [y], "o", color=c, ms=4.5)
            ax.axvline(0, color="black", lw=0.8)
            ax.set_xlim(*panel_limits(sel))
            ax.set_yticks(range(len(sel)), [r.label for r in sel])
            ax.set_ylim(len(sel) - 0.5, -0.5)
            right = ax.twinx()
            right.set_ylim(len(sel) - 0.5, -0.5)
            right.set_yticks(range(len(sel)),
                             [f"{r.delta:+.2f} [{r.lo:.2f}, {r.hi:.2f}]" for r in sel])
            right.tick_params(length=0, labelsize=7)
            ax.set_title(panel, loc="left")
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle(title)
        return Plot(name, title, png(fig),
                    "Each panel has its own scale. Grey band: the measure's minimal meaningful "
                    "difference around 0. Red: clear change (interval excludes 0 and the change "
                    "is at least that difference); blue: no practical change; grey: no clear "
                    "change (the interval includes 0 and reaches beyond the band).")
