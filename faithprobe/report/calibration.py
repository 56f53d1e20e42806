"""The calibration figure: a reliability diagram with bin counts, or, when every answer sits in
one confidence bin, a histogram of how far each confidence is from 1 (log scale).

The bins are the ECE's (``faithprobe.metrics.ECE_BINS`` equal-width bins over the confidence
``pred_prob`` of the unedited answers), so the figure and the ECE read the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from faithprobe.metrics import ECE_BINS, ece_bin, is_usable, reliability_bins
from faithprobe.records import Record
from faithprobe.report.figure import Plot, color, figure, png, style
from faithprobe.report.readings import count_text

__all__ = ["calibration_plot", "graded_answers"]

_FLOOR = 1e-16  # 1 - confidence is drawn no closer to 0 than this (float64 resolution)


def graded_answers(recs: Sequence[Record]) -> list[tuple[float, float]]:
    """(confidence, correct 0/1) of the usable unedited records with both."""
    return [(float(r.pred_prob), float(r.correct)) for r in recs
            if r.intervention == "none" and is_usable(r) and r.pred_prob is not None
            and r.correct is not None]


def _ece(graded: list[tuple[float, float]]) -> float:
    bins = reliability_bins(graded)
    return sum(k * abs(acc - conf) for conf, acc, k in bins) / len(graded)


def calibration_plot(groups: Mapping[str, Sequence[Record]]) -> Plot:
    """Reliability diagram (accuracy against mean confidence per bin, counts written on the
    points) over a histogram of confidences; or, when every checkpoint's answers all fall in
    one bin, a histogram of 1 - confidence on a log scale with each checkpoint's numbers."""
    name, title = "calibration", "Calibration of the unedited answers"
    graded = {label: g for label, recs in groups.items() if (g := graded_answers(recs))}
    if not graded:
        return Plot(name, title, None, "no unedited records with both a confidence (pred_prob) "
                                       "and a gold answer: calibration was not measured")
    one_bin = all(len({ece_bin(p) for p, _ in g}) == 1 for g in graded.values())
    with style():
        if one_bin:
            return _one_bin(name, title, graded)
        fig = figure(6.4, 5.6)
        ax_rel, ax_hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1.4]},
                                       sharex=True)
        edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
        width = 0.8 / ECE_BINS / len(graded)
        for i, (label, g) in enumerate(graded.items()):
            bins = reliability_bins(g)
            conf, acc, counts = zip(*bins)
            ax_rel.plot(conf, acc, marker="o", ms=4, color=color(i),
                        label=f"{label} (ECE {100 * _ece(g):.1f} points, n={len(g)})")
            for c, a, k in zip(conf, acc, counts):
                ax_rel.annotate(str(k), (c, a), fontsize=6.5, xytext=(3, 3),
                                textcoords="offset points", color=color(i))
            hist = np.bincount([ece_bin(p) for p, _ in g], minlength=ECE_BINS)
            centers = (edges[:-1] + edges[1:]) / 2 + (i - (len(graded) - 1) / 2) * width
            ax_hist.bar(centers, hist, width, color=color(i), label=label)
        ax_rel.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
        ax_rel.set_ylabel("accuracy in the bin (answers per bin written)")
        ax_rel.set_ylim(-0.02, 1.02)
        ax_rel.grid(alpha=0.3)
        ax_rel.legend(loc="upper left")
        ax_rel.set_title("Reliability diagram (points at the bin's mean confidence)")
        ax_hist.set_xlim(-0.02, 1.02)
        ax_hist.set_xticks(edges)
        ax_hist.set_xlabel(f"confidence of the answer (pred_prob), {ECE_BINS} equal-width bins")
        ax_hist.set_ylabel("answers")
        ax_hist.grid(axis="y", alpha=0.3)
        fig.suptitle(title)
        return Plot(name, title, png(fig))


def _one_bin(name: str, title: str, graded: Mapping[str, list[tuple[float, float]]]) -> Plot:
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    fig = figure(6.4, 3.6)
    ax = fig.add_subplot()
    near_one = all(p >= 1 - 1 / ECE_BINS for g in graded.values() for p, _ in g)
    if near_one:  # how far from 1, on a log scale: 0.9999994 and 0.9999982 become readable
        xs = {label: np.maximum(1.0 - np.array([p for p, _ in g]), _FLOOR)
              for label, g in graded.items()}
        lo = np.log10(min(float(v.min()) for v in xs.values()))
        hi = np.log10(max(float(v.max()) for v in xs.values()))
        if hi - lo < 0.5:
            lo, hi = lo - 0.25, hi + 0.25
        edges = np.logspace(lo, hi, 25)
    else:  # the occupied stretch of the bin, on a linear scale
        xs = {label: np.array([p for p, _ in g]) for label, g in graded.items()}
        lo = min(float(v.min()) for v in xs.values())
        hi = max(float(v.max()) for v in xs.values())
        pad = max(0.05 * (hi - lo), 1e-3)
        edges = np.linspace(lo - pad, hi + pad, 25)
    lines = []
    for i, (label, g) in enumerate(graded.items()):
        ax.hist(xs[label], bins=edges, color=color(i), alpha=0.6, label=label,
                edgecolor=color(i))
        conf = float(np.mean([p for p, _ in g]))
        acc = float(np.mean([c for _, c in g]))
        b = ece_bin(g[0][0])
        lines.append(f"{label}: all {count_text(len(g), 'answer')} in bin [{b / ECE_BINS:.1f}, "
                     f"{(b + 1) / ECE_BINS:.1f}]; mean confidence {conf:.7f}, accuracy "
                     f"{100 * acc:.1f}%, ECE {100 * _ece(g):.4f} points")
    if near_one:
        ax.set_xscale("log")
        # Math text is off (step texts may hold "$"), so the decades are written as plain text.
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.0e}".replace("e-0", "e-")))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("1 - confidence (log scale; further left = more confident)")
    else:
        ax.set_xlabel("confidence of the answer (pred_prob), zoomed to the occupied bin")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("answers")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title("\n".join(lines), fontsize=7, loc="left")
    fig.suptitle(f"{title}: every answer sits in one confidence bin")
    return Plot(name, title, png(fig),
                "Every answer falls in one of the ECE's confidence bins, so a reliability "
                "diagram would be a single point per checkpoint; drawn instead is the histogram "
                "of the confidences" + (" as their distance from 1" if near_one else "")
                + ". The ECE only says how far the mean confidence is from the accuracy in that "
                "bin.")
