"""A run folder's file names and the small helpers every run module shares."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

__all__ = ["HEADER", "MAX_WARNING_IDS", "PROGRESS", "RECORDS", "REPORT_FILES", "SCHEMA_VERSION",
           "SUMMARY", "TRACES", "content", "now"]

SCHEMA_VERSION = 1
HEADER = "header.json"
RECORDS = "records.jsonl"
PROGRESS = "progress.jsonl"
TRACES = "traces.jsonl"
SUMMARY = "summary.json"
REPORT_FILES = ("report.md", "report.html")
MAX_WARNING_IDS = 20  # trace ids kept per warning kind (the count is always whole)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def content(out: Path) -> list[Path]:
    """What a folder holds, less the temporary files a killed writer leaves (``.NAME.*.tmp``)."""
    return [p for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))]
