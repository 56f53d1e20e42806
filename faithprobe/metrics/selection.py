"""Record helpers shared by the metrics, the curves and the report: which records are usable,
grouping by trace, and the checks every metric runs on its input."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from faithprobe.errors import FaithprobeError
from faithprobe.records import FLOAT_FIELDS, Record

__all__ = [
    "BLOCK_SITE", "check_one_checkpoint", "checkpoint_labels", "group_by_trace", "has_nonfinite",
    "is_noising", "is_usable", "resolve_continuation", "select", "step_index", "trace_length",
]

BLOCK_SITE = re.compile(r"^blocks\.(\d+)\.(.+)$")  # a hook inside a block: layer, component


def is_usable(r: Record) -> bool:
    """Whether a record may be averaged: status ``ok`` and every float field finite (or absent).

    An ``ok`` record carrying a NaN or an infinity is not usable; the summary counts it as
    ``nonfinite``.
    """
    return r.status == "ok" and not has_nonfinite(r)


def has_nonfinite(r: Record) -> bool:
    """Whether any of the record's float fields (``records.FLOAT_FIELDS``) is NaN or infinite."""
    return any(isinstance(v, float) and not math.isfinite(v)
               for v in (getattr(r, f) for f in FLOAT_FIELDS))


def group_by_trace(records: Sequence[Record]) -> dict[str, list[Record]]:
    """Trace id -> its records (in input order), trace ids sorted."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.trace_id, []).append(r)
    return {tid: groups[tid] for tid in sorted(groups)}


def checkpoint_labels(records: Sequence[Record]) -> list[str]:
    """The checkpoint labels of ``records`` in order of first appearance."""
    return list(dict.fromkeys(r.checkpoint for r in records))


def check_one_checkpoint(records: Sequence[Record]) -> None:
    """Raise ``FaithprobeError`` unless all records belong to one checkpoint."""
    labels = checkpoint_labels(records)
    if len(labels) > 1:
        raise FaithprobeError(
            f"expected the records of one checkpoint, got {', '.join(labels)}; "
            "use compute_metrics() or filter by checkpoint", field="checkpoint")


def resolve_continuation(records: Sequence[Record], continuation: str | None = None) -> str:
    """The corrupt continuation a summary uses.

    Args:
        records: the records measured.
        continuation: an explicit choice, returned as is.

    Returns:
        ``continuation`` when given, else ``regenerate`` if any ok corrupt record has it, else
        ``keep``.
    """
    if continuation is not None:
        return continuation
    regen = any(r.intervention == "corrupt" and r.status == "ok"
                and r.detail.get("continuation") == "regenerate" for r in records)
    return "regenerate" if regen else "keep"


def trace_length(recs: list[Record]) -> int:
    """The number of steps the records of one trace agree on (an error when they disagree)."""
    lengths = {r.n_steps for r in recs}
    if len(lengths) != 1:
        raise FaithprobeError(f"records disagree on n_steps ({sorted(lengths)})",
                              source=recs[0].trace_id, field="n_steps")
    return lengths.pop()


def step_index(r: Record, last: int) -> int:
    """The record's step, checked to lie in ``0..last``."""
    if r.step is None or not 0 <= r.step <= last:
        raise FaithprobeError(
            f"{r.intervention} record has step {r.step}, expected 0..{last} "
            f"for a trace of {r.n_steps} steps", source=r.trace_id, field="step")
    return r.step


def select(recs: list[Record], kind: str, continuation: str | None = None) -> list[Record]:
    """The usable records of intervention ``kind`` (corrupt ones of ``continuation`` only)."""
    return [r for r in recs if r.intervention == kind and is_usable(r)
            and (kind != "corrupt" or r.detail.get("continuation") == continuation)]


def is_noising(r: Record) -> bool:
    """Noising step patches (the corrupted step into the clean run), the summary's measure;
    denoising and per-head records are kept for the grid and the report, not averaged in."""
    variant = r.detail.get("variant") if isinstance(r.detail, dict) else None
    if not isinstance(variant, dict):
        return True
    return variant.get("direction", "noising") == "noising" and variant.get("head") is None
