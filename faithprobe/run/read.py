"""Reading a run folder someone else wrote: every part checked before it is used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faithprobe.errors import FaithprobeError
from faithprobe.io import check_regular_file, read_json
from faithprobe.records import Record, read_records
from faithprobe.run.config import check_limit, check_run_pairs
from faithprobe.run.layout import HEADER, RECORDS, SCHEMA_VERSION

__all__ = ["load_run"]


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
