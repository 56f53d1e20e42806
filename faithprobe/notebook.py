"""A run folder as pandas DataFrames, for notebooks: ``faithprobe.load_run(dir)``.

pandas is an optional dependency (``pip install 'faithprobe[pandas]'``), imported only when
``load_run`` is called; without it ``load_run`` raises a one-line ``FaithprobeError``.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from faithprobe.errors import FaithprobeError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

__all__ = ["RunFrames", "load_run"]


class RunFrames(NamedTuple):
    """A run folder as DataFrames (``load_run``).

    Attributes:
        records: one row per record (``records.jsonl``), one column per ``Record`` field in
            schema order; ``step`` and ``n_steps`` nullable integers, ``same_answer`` and
            ``correct`` nullable booleans, the float fields NaN where absent, ``detail`` a dict.
        summary: one row per checkpoint and metric of the catalogue (then any other metric of
            ``summary.json``): ``checkpoint``, ``metric``, ``label``, ``unit``, ``value``,
            ``ci_low``, ``ci_high`` (the 95% percentile interval of a cluster bootstrap over
            traces), ``n``, ``status`` (``ok``, ``not measured`` or ``undefined``) and
            ``reason`` (why there is no value).
        comparisons: one row per comparison of ``summary.json``: ``a``, ``b``, ``metric``,
            ``label``, ``unit``, ``delta`` (b - a), ``ci_low``, ``ci_high``,
            ``relative_change``, ``n``, ``mmd`` (the minimal meaningful difference) and
            ``reading`` (clear increase / clear decrease / no practical change / no clear
            change, as in the report).
        header: ``header.json`` as a dict.
        traces: one row per (checkpoint, trace, step): ``checkpoint``, ``trace_id``, ``step``
            (0-based, as in the records), ``text`` and ``n_steps``, from the trace file each
            checkpoint was probed on (its own ``traces-<label>.jsonl`` where it wrote its
            reasoning, else ``traces.jsonl``), so records join to step texts on
            (checkpoint, trace_id, step). Empty when the folder holds no trace file.
    """

    records: pd.DataFrame
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    header: dict[str, Any]
    traces: pd.DataFrame | None = None


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise FaithprobeError("load_run needs pandas, which is not installed: "
                              "pip install 'faithprobe[pandas]'") from None
    return pandas


def _records_frame(pd: Any, records: list[Any]) -> Any:
    from faithprobe.records import Record

    columns = [f.name for f in fields(Record)]
    frame = pd.DataFrame([[getattr(r, c) for c in columns] for r in records], columns=columns)
    types = {"step": "Int64", "n_steps": "Int64", "same_answer": "boolean",
             "correct": "boolean"}
    types.update({c: "float64" for c in ("answer_logprob", "pred_prob", "logit_diff", "kl",
                                         "value")})
    return frame.astype(types)


def _summary_frames(pd: Any, summary: dict[str, Any], records: list[Any]) -> tuple[Any, Any]:
    from faithprobe.metrics import METRICS
    from faithprobe.report.absence import absences
    from faithprobe.report.readings import metric_display, metric_mmd, reading

    absent = absences(records, summary)
    rows = []
    for label, ests in (summary.get("checkpoints") or {}).items():
        names = list(METRICS) + [m for m in ests if m not in METRICS]
        for m in names:
            name, unit, _ = metric_display(m)
            e = ests.get(m)
            why = absent.get(label, {}).get(m)
            rows.append({
                "checkpoint": label, "metric": m, "label": name, "unit": unit,
                "value": e["value"] if e else None, "ci_low": e["ci_low"] if e else None,
                "ci_high": e["ci_high"] if e else None, "n": e["n"] if e else None,
                "status": "ok" if e else (why.kind if why else "not measured"),
                "reason": None if e or why is None else why.reason})
    summary_frame = pd.DataFrame(rows, columns=["checkpoint", "metric", "label", "unit", "value",
                                                "ci_low", "ci_high", "n", "status", "reason"])
    summary_frame = summary_frame.astype({"value": "float64", "ci_low": "float64",
                                          "ci_high": "float64", "n": "Int64"})
    comp = [{"a": c["a"], "b": c["b"], "metric": c["metric"],
             "label": metric_display(c["metric"])[0], "unit": metric_display(c["metric"])[1],
             "delta": c["delta"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
             "relative_change": c.get("relative_change"), "n": c["n"],
             "mmd": metric_mmd(c["metric"]) or None, "reading": reading(c)}
            for c in summary.get("comparisons") or []]
    comp_frame = pd.DataFrame(comp, columns=["a", "b", "metric", "label", "unit", "delta",
                                             "ci_low", "ci_high", "relative_change", "n", "mmd",
                                             "reading"])
    comp_frame = comp_frame.astype({"delta": "float64", "ci_low": "float64",
                                    "ci_high": "float64", "relative_change": "float64",
                                    "n": "Int64", "mmd": "float64"})
    return summary_frame, comp_frame


def load_run(run_dir: str | Path) -> RunFrames:
    """The records, summary and comparisons of a run folder as pandas DataFrames.

    Args:
        run_dir: a run folder (``faithprobe run``/``demo``/``score`` output).

    Returns:
        ``RunFrames(records, summary, comparisons, header, traces)``. Where the folder has no
        ``summary.json`` (a killed run), the summary is computed from the records with the
        run's ``n_boot`` and seed, as ``faithprobe score`` would.

    Raises:
        FaithprobeError: pandas is not installed, or the folder is not a readable run (a
            damaged record or summary names its file, line and field; a summary that disagrees
            with the records is a ``UserWarning``). No other error comes out of a damaged
            folder: whatever pandas or Arrow would raise on it is a FaithprobeError too.
    """
    pd = _pandas()
    run_dir = Path(run_dir)
    try:
        return _load(pd, run_dir)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError,
            RecursionError) as exc:  # Arrow's errors are ValueErrors and TypeErrors
        raise FaithprobeError(f"run folder is damaged and cannot be read as tables "
                              f"({type(exc).__name__}: {str(exc)[:120]})",
                              source=str(run_dir)) from None


def _load(pd: Any, run_dir: Path) -> RunFrames:
    import warnings

    from faithprobe.run.layout import SUMMARY
    from faithprobe.run.read import load_run as read_folder
    from faithprobe.run.read import read_summary

    header, records = read_folder(run_dir)
    if (run_dir / SUMMARY).is_file():
        summary, disagree = read_summary(run_dir, records)
        for line in disagree:
            warnings.warn(line, UserWarning, stacklevel=3)
    else:
        from faithprobe.metrics import checkpoint_labels, summarize
        from faithprobe.run.config import summary_plan

        metrics_cfg = header["config"].get("metrics") or {}
        summary = summarize(records, n_boot=metrics_cfg.get("n_boot", 1000),
                            seed=header["config"].get("seed", 0),
                            **summary_plan(header["config"], checkpoint_labels(records)))
    if not isinstance(summary, dict) or not isinstance(summary.get("checkpoints"), dict):
        raise FaithprobeError("not a faithprobe summary (no checkpoints)",
                              source=str(run_dir / SUMMARY))
    summary_frame, comp_frame = _summary_frames(pd, summary, records)
    return RunFrames(_records_frame(pd, records), summary_frame, comp_frame, header,
                     _traces_frame(pd, run_dir, records))


def _traces_frame(pd: Any, run_dir: Path, records: list[Any]) -> Any:
    from faithprobe.metrics import checkpoint_labels
    from faithprobe.run.tracefiles import run_traces

    rows = [(label, t.id, i, text, t.n_steps)
            for label, traces in run_traces(run_dir, checkpoint_labels(records)).items()
            for t in traces for i, text in enumerate(t.steps)]
    frame = pd.DataFrame(rows, columns=["checkpoint", "trace_id", "step", "text", "n_steps"])
    return frame.astype({"step": "Int64", "n_steps": "Int64"})
