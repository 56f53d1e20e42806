"""Comparisons across run folders: checkpoints of different runs paired by trace id.

Two runs that probed the same traces (the same trace file, or the same problems with each
checkpoint writing its own reasoning) can be compared as one run would compare its own
checkpoints: every record is relabelled ``<run>/<label>``, and each checkpoint of a run is
compared with each checkpoint of every later run, with the same paired cluster bootstrap over
the traces both sides share, the same minimal meaningful differences and the same verdict rules.
A pair of runs with no trace in common gives no comparison (``no_shared_trace``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from faithprobe.metrics.bootstrap import summarize
from faithprobe.metrics.selection import checkpoint_labels
from faithprobe.records import Record

__all__ = ["cross_run_pairs", "cross_run_summary", "relabel"]


def relabel(records: Sequence[Record], run: str) -> list[Record]:
    """``records`` with each checkpoint label prefixed by the run's name (``run/label``)."""
    return [replace(r, checkpoint=f"{run}/{r.checkpoint}") for r in records]


def cross_run_pairs(runs: Sequence[tuple[str, Sequence[Record]]]) -> list[tuple[str, str]]:
    """Each checkpoint of a run against each checkpoint of every later run that shares a trace
    with it, as relabelled ``(a, b)`` pairs, in run and label order."""
    labels = [checkpoint_labels(list(recs)) for _, recs in runs]
    ids = [{r.trace_id for r in recs} for _, recs in runs]
    pairs = []
    for i, (name_i, _) in enumerate(runs):
        for j in range(i + 1, len(runs)):
            if not ids[i] & ids[j]:
                continue
            name_j = runs[j][0]
            pairs += [(f"{name_i}/{a}", f"{name_j}/{b}") for a in labels[i] for b in labels[j]]
    return pairs


def cross_run_summary(runs: Sequence[tuple[str, Sequence[Record]]], *, n_boot: int = 1000,
                      seed: int = 0) -> dict[str, Any] | None:
    """The summary (``metrics.summarize``) of every run's records relabelled ``run/label``,
    comparing the :func:`cross_run_pairs`; None when no two runs share a trace. Run names must
    be distinct."""
    pairs = cross_run_pairs(runs)
    if not pairs:
        return None
    records = [r for name, recs in runs for r in relabel(recs, name)]
    return summarize(records, n_boot=n_boot, seed=seed, pairs=pairs, base=pairs[0][0])
