"""Reading a run folder someone else wrote: every part checked before it is used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faithprobe.errors import FaithprobeError
from faithprobe.io import check_regular_file, read_json
from faithprobe.records import Record, read_records
from faithprobe.run.config import check_limit, check_run_pairs
from faithprobe.run.layout import HEADER, RECORDS, SCHEMA_VERSION, SUMMARY

__all__ = ["check_summary", "load_run", "read_summary"]


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[Record]]:
    """A run folder's header and records (a damaged folder is a clear error)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FaithprobeError("run folder does not exist", source=str(run_dir))
    header = read_json(run_dir / HEADER, "run header")
    source = str(run_dir / HEADER)
    if header.get("schema_version") != SCHEMA_VERSION or not isinstance(header.get("config"),
                                                                         dict):
        raise FaithprobeError("run header has no schema_version 1 / config", source=source)
    config = header["config"]
    for key in ("checkpoints", "metrics"):
        if not isinstance(config.get(key, {}), dict):
            raise FaithprobeError("expected an object", source=source, field=f"config.{key}")
    metrics_cfg = config.get("metrics")
    for key, value in (("seed", config.get("seed")),
                       ("metrics.n_boot", metrics_cfg.get("n_boot")
                        if isinstance(metrics_cfg, dict) else None)):
        try:
            if value is None:
                raise FaithprobeError("run header's config has no value here")
            check_limit(key, value)
        except FaithprobeError as exc:
            raise FaithprobeError(exc.message, source=source, field=f"config.{key}") from None
    check_run_pairs(config, source)
    if (run_dir / RECORDS).exists():
        check_regular_file(run_dir / RECORDS, "records file")
    try:
        records = read_records(run_dir / RECORDS)
    except RecursionError:
        raise FaithprobeError("records are damaged (nested too deeply)",
                              source=str(run_dir / RECORDS)) from None
    if not records:
        raise FaithprobeError("run has no records", source=str(run_dir / RECORDS))
    return header, records


def _number_or_null(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _check_estimate(e: Any, where: str, source: str, *, keys: tuple[str, ...]) -> None:
    if not isinstance(e, dict):
        raise FaithprobeError("expected an object", source=source, field=where)
    for key in keys:
        if key not in e:
            raise FaithprobeError("missing", source=source, field=f"{where}.{key}")
        if key in ("a", "b", "metric"):
            ok = isinstance(e[key], str)
        elif key == "n":
            ok = type(e[key]) is int and e[key] >= 0
        else:
            ok = _number_or_null(e[key])
        if not ok:
            want = ("a string" if key in ("a", "b", "metric") else "a count" if key == "n"
                    else "a number or null")
            raise FaithprobeError(f"expected {want}", source=source, field=f"{where}.{key}")
    if "relative_change" in e and not _number_or_null(e["relative_change"]):
        raise FaithprobeError("expected a number or null", source=source,
                              field=f"{where}.relative_change")


def check_summary(summary: dict[str, Any], source: str) -> None:
    """A summary's shape: ``schema_version`` 1; ``checkpoints``: label -> metric -> estimate
    (``value``, ``ci_low``, ``ci_high`` numbers or null, ``n`` a count); ``comparisons``: a list
    of (``a``, ``b``, ``metric``, ``delta``, ``ci_low``, ``ci_high``, ``n``); ``seed_question``
    a list of objects. A FaithprobeError names the file and the field."""
    if summary.get("schema_version") != 1:
        raise FaithprobeError("not a faithprobe summary (schema_version is not 1)",
                              source=source, field="schema_version")
    labels = summary.get("checkpoints")
    if not isinstance(labels, dict):
        raise FaithprobeError("expected an object of checkpoints", source=source,
                              field="checkpoints")
    for label, metrics in labels.items():
        if not isinstance(metrics, dict):
            raise FaithprobeError("expected an object of metrics", source=source,
                                  field=f"checkpoints.{label}")
        for name, e in metrics.items():
            _check_estimate(e, f"checkpoints.{label}.{name}", source,
                            keys=("value", "ci_low", "ci_high", "n"))
    comparisons = summary.get("comparisons", [])
    if not isinstance(comparisons, list):
        raise FaithprobeError("expected a list", source=source, field="comparisons")
    for i, c in enumerate(comparisons):
        _check_estimate(c, f"comparisons[{i}]", source,
                        keys=("a", "b", "metric", "delta", "ci_low", "ci_high", "n"))
    for key in ("seed_question",):
        value = summary.get(key, [])
        if not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            raise FaithprobeError("expected a list of objects", source=source, field=key)
    if not isinstance(summary.get("cue", {}), dict):
        raise FaithprobeError("expected an object", source=source, field="cue")


def read_summary(run_dir: Path, records: list[Record] | None = None,
                 what: str = "summary") -> tuple[dict[str, Any], list[str]]:
    """A run folder's ``summary.json``, its shape checked (:func:`check_summary`), and the
    warnings where it disagrees with ``records`` (checkpoints on one side only)."""
    path = Path(run_dir) / SUMMARY
    summary = read_json(path, what)
    check_summary(summary, str(path))
    found = []
    if records is not None:
        have = {r.checkpoint for r in records}
        said = set(summary["checkpoints"])
        for label in sorted(have - said):
            found.append(f"{path}: the summary has no checkpoint {label!r} the records have "
                         "(run 'faithprobe score' to recompute it)")
        for label in sorted(said - have):
            found.append(f"{path}: the summary's checkpoint {label!r} has no records "
                         "(run 'faithprobe score' to recompute it)")
    return summary, found
