"""Curves and grids for the report (records of one checkpoint), and summary-level ratios."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from faithprobe.metrics.bootstrap import percentile_interval, replicate_sums
from faithprobe.metrics.features import Features, same_answer_cells, step_gains
from faithprobe.metrics.selection import (
    BLOCK_SITE,
    check_one_checkpoint,
    group_by_trace,
    is_noising,
    is_usable,
    resolve_continuation,
    select,
)
from faithprobe.records import Record

__all__ = [
    "COVERAGE_THRESHOLDS", "adding_mistakes_curve", "coverage_curve", "early_answering_curve",
    "infogain_by_step", "infogain_drop", "patch_corruption", "patching_grid",
    "resampling_by_step", "step_effects",
]

COVERAGE_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))


def _pooled_curve(records: Sequence[Record], kind: str, continuation: str | None
                  ) -> list[tuple[float, float]]:
    check_one_checkpoint(records)
    cont = resolve_continuation(records, continuation)
    num: dict[Fraction, float] = {}
    den: dict[Fraction, float] = {}
    for recs in group_by_trace(records).values():
        got = same_answer_cells(recs, kind, cont)
        if got is None:
            continue
        n, cells = got
        for k, share in cells.items():
            x = Fraction(k, n)
            num[x] = num.get(x, 0.0) + share
            den[x] = den.get(x, 0.0) + 1.0
    return [(float(x), num[x] / den[x]) for x in sorted(num)]


def early_answering_curve(records: Sequence[Record]) -> list[tuple[float, float]]:
    """(x = k/n, share of traces with the same answer) pooled over lengths, sorted by x."""
    return _pooled_curve(records, "truncate", None)


def adding_mistakes_curve(records: Sequence[Record], *, continuation: str | None = None
                          ) -> list[tuple[float, float]]:
    """(x = i/n, share with the same answer after a mistake at step i), plus (1, 1); sorted."""
    return _pooled_curve(records, "corrupt", continuation)


def _gain_steps(recs: list[Record]) -> Features:
    return {key: v for j, g in step_gains(recs).items()
            for key, v in ((("s", j), g), (("c", j), 1.0))}


def infogain_by_step(records: Sequence[Record], *, n_boot: int = 1000, seed: int = 0
                     ) -> list[tuple[int, float, float, float]]:
    """(j, mean IG_j over the traces that have it, ci_low, ci_high) for steps j >= 1."""
    check_one_checkpoint(records)
    rows = [f for f in (_gain_steps(recs) for recs in group_by_trace(records).values()) if f]
    steps = sorted({key[1] for f in rows for key in f})
    col = {j: i for i, j in enumerate(steps)}
    matrix = np.zeros((len(rows), 2 * len(steps)))  # (traces, [sums per step, counts per step])
    for i, f in enumerate(rows):
        for (kind, j), v in f.items():
            matrix[i, col[j] + (len(steps) if kind == "c" else 0)] = v
    reps = list(replicate_sums(matrix, n_boot, seed))
    out = []
    for k, j in enumerate(steps):
        mean = float(matrix[:, k].sum() / matrix[:, len(steps) + k].sum())
        lo, hi = percentile_interval(mean, [float(r[k] / r[len(steps) + k])
                                            if r[len(steps) + k] > 0 else None for r in reps])
        out.append((j, mean, lo, hi))
    return out


def resampling_by_step(records: Sequence[Record], *, n_boot: int = 1000, seed: int = 0
                       ) -> list[tuple[int, float, float, float, int]]:
    """(step i, mean importance over the traces that have it, ci_low, ci_high, n traces):
    the interval is the cluster bootstrap over traces of the per-step mean."""
    check_one_checkpoint(records)
    rows = []
    for recs in group_by_trace(records).values():
        f = {r.step: float(r.value) for r in select(recs, "resample")
             if r.value is not None and r.step is not None}
        if f:
            rows.append(f)
    steps = sorted({i for f in rows for i in f})
    if not steps:
        return []
    col = {i: k for k, i in enumerate(steps)}
    matrix = np.zeros((len(rows), 2 * len(steps)))  # (traces, [sums per step, counts per step])
    for t, f in enumerate(rows):
        for i, v in f.items():
            matrix[t, col[i]] = v
            matrix[t, len(steps) + col[i]] = 1.0
    reps = list(replicate_sums(matrix, n_boot, seed))
    out = []
    for k, i in enumerate(steps):
        n = matrix[:, len(steps) + k].sum()
        mean = float(matrix[:, k].sum() / n)
        lo, hi = percentile_interval(mean, [float(r[k] / r[len(steps) + k])
                                            if r[len(steps) + k] > 0 else None for r in reps])
        out.append((i, mean, lo, hi, int(n)))
    return out


def coverage_curve(records: Sequence[Record], thresholds: Sequence[float] = COVERAGE_THRESHOLDS
                   ) -> list[tuple[float, float, float | None]]:
    """(threshold, share of "none" records with pred_prob >= threshold, accuracy on those).

    Accuracy is None at a threshold no record with a gold answer reaches.
    """
    check_one_checkpoint(records)
    pts = [(float(r.pred_prob), r.correct) for r in records
           if r.intervention == "none" and is_usable(r) and r.pred_prob is not None]
    if not pts:
        return []
    out: list[tuple[float, float, float | None]] = []
    for t in thresholds:
        kept = [c for p, c in pts if p >= t]
        graded = [float(c) for c in kept if c is not None]
        out.append((float(t), len(kept) / len(pts),
                    sum(graded) / len(graded) if graded else None))
    return out


def step_effects(records: Sequence[Record], *, continuation: str | None = None,
                 interventions: tuple[str, ...] = ("corrupt", "delete")
                 ) -> dict[int, list[float]]:
    """Step index -> the ``kl`` of each ok corrupted/deleted record at that step (sorted steps).

    Corrupt records are those of the chosen continuation, as in ``adding_mistakes_aoc``.
    """
    check_one_checkpoint(records)
    cont = resolve_continuation(records, continuation)
    out: dict[int, list[float]] = {}
    for r in records:
        if (r.intervention in interventions and is_usable(r) and r.kl is not None
                and r.step is not None
                and (r.intervention != "corrupt" or r.detail.get("continuation") == cont)):
            out.setdefault(r.step, []).append(float(r.kl))
    return {k: out[k] for k in sorted(out)}


def _site_key(site: str) -> tuple[int, int, str]:
    m = BLOCK_SITE.match(site)
    if m:
        return (1, int(m.group(1)), m.group(2))
    # embeddings come before block 0, anything else (ln_final...) after the last block
    return (0, 0, site) if site.startswith(("hook_", "embed", "pos_embed")) else (2, 0, site)


def patch_corruption(r: Record) -> str:
    """Which corrupted run a patch record's step was patched from or into: ``each`` (that
    step alone corrupted) or ``all`` (every step at once; records written before the setting
    existed are of this kind)."""
    variant = r.detail.get("variant") if isinstance(r.detail, dict) else None
    return str(variant.get("corrupted", "all")) if isinstance(variant, dict) else "all"


def patching_grid(records: Sequence[Record], trace_id: str | None = None,
                  corrupted: str | None = None) -> tuple[list[int], list[str], np.ndarray]:
    """Mean patching share per (step, site) of noising "patch" records (the share of the
    clean answer's logit difference that patching the step at the site removes).

    Args:
        trace_id: one trace only; default all traces (the mean over them).
        corrupted: only records patched from this corrupted run (``each`` or ``all``,
            :func:`patch_corruption`); default every record.

    Returns:
        (steps, sites, matrix) with ``matrix[i, j]`` the mean effect of step ``steps[i]`` at
        ``sites[j]``; a cell no record measured is NaN (so a plot leaves it blank). Sites are
        ordered by layer (``blocks.<L>.``) and then component name.
    """
    check_one_checkpoint(records)
    cells: dict[tuple[int, str], list[float]] = {}
    for r in records:
        if (r.intervention == "patch" and is_usable(r) and r.value is not None
                and r.step is not None and r.site is not None and is_noising(r)
                and (trace_id is None or r.trace_id == trace_id)
                and (corrupted is None or patch_corruption(r) == corrupted)):
            cells.setdefault((r.step, r.site), []).append(float(r.value))
    steps = sorted({s for s, _ in cells})
    sites = sorted({site for _, site in cells}, key=lambda s: (_site_key(s), s))
    matrix = np.full((len(steps), len(sites)), np.nan)  # (steps, sites)
    row = {s: i for i, s in enumerate(steps)}
    col = {s: j for j, s in enumerate(sites)}
    for (step, site), vals in cells.items():
        matrix[row[step], col[site]] = sum(vals) / len(vals)
    return steps, sites, matrix


def infogain_drop(summary: dict[str, Any], a: str, b: str) -> float | None:
    """Wu et al.'s "InfoGain drop" ``(IG_a - IG_b) / IG_a`` on ``infogain_mean``, or None."""
    try:
        ig_a = summary["checkpoints"][a]["infogain_mean"]["value"]
        ig_b = summary["checkpoints"][b]["infogain_mean"]["value"]
    except (KeyError, TypeError):
        return None
    if ig_a is None or ig_b is None or ig_a == 0:
        return None
    return (ig_a - ig_b) / ig_a
