"""A run folder's summary and report, computed from its records alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faithprobe.io import write_json
from faithprobe.records import Record, read_records
from faithprobe.run.layout import HEADER, RECORDS, SUMMARY, now

__all__ = ["finish_run", "headline"]


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """Label -> the values of the catalogue's headline metrics the summary has."""
    from faithprobe.metrics import HEADLINE_METRICS

    return {label: {k: m[k]["value"] for k in HEADLINE_METRICS if k in m}
            for label, m in summary.get("checkpoints", {}).items()}


def finish_run(out: Path, header: dict[str, Any], records: list[Record] | None = None, *,
               mark_success: bool = False) -> dict[str, Any]:
    """Summary and report of a run folder from its records; with ``mark_success`` the report is
    written from a header that says ``success`` (with the headline numbers), and the header file
    says so only once the report is written."""
    from faithprobe.metrics import checkpoint_labels, summarize
    from faithprobe.report.document import write_report
    from faithprobe.run.config import summary_plan
    from faithprobe.run.tracefiles import run_traces

    if records is None:
        records = read_records(out / RECORDS)
    summary = summarize(records, n_boot=header["config"]["metrics"]["n_boot"],
                        seed=header["config"]["seed"],
                        **summary_plan(header["config"], checkpoint_labels(records)))
    write_json(out / SUMMARY, summary)
    final = dict(header, status="success", ended=now(), summary=headline(summary)) \
        if mark_success else header
    write_report(out, records, summary, final,
                 run_traces(out, checkpoint_labels(records)) or None)
    if mark_success:  # last: a run killed before this line is resumed, report and all
        header.update(final)
        write_json(out / HEADER, header)
    return summary
