"""The report of a run folder, and of a comparison across run folders.

``write_report`` turns a run's records, summary (``metrics.summarize``) and header into
``plots/*.png``, ``report.md`` and ``report.html`` in the run folder. ``report.html`` is one
self-contained file (images as base64 data URIs, inline CSS, no script, no external resource).
Everything is rendered in memory first and then published all or nothing
(``faithprobe.report.render.publish``), so a crash never leaves a half-written report.

The report leads with the verdict (``faithprobe.report.verdict.verdict_lines``: plain sentences
decided by documented rules, what moved clearly, what did not, what could not be measured and
why, and the caveats the data raise), then the forest plot, the measure tables (a metric without
a value reads "not measured (...)" or "undefined (...)"), KI with its coverage and judge, the
comparisons with the fine-tuning question (``faithprobe.report.seed``), the cue tests
(``faithprobe.report.cues``), declining to answer (``faithprobe.report.abstain``), the records
with their skip reasons grouped by kind, the curves, one trace's step x method heat map,
calibration, an appendix with the perplexity-form InfoGain, the metric definitions and the
provenance.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from faithprobe.data.traces import Trace
from faithprobe.errors import FaithprobeError
from faithprobe.metrics import (
    CATALOGUE,
    METRICS_BY_NAME,
    TABLE_METRICS,
    is_usable,
    resolve_continuation,
)
from faithprobe.metrics.crossrun import cross_run_summary, relabel
from faithprobe.records import STATUSES, Record
from faithprobe.report import calibration as C
from faithprobe.report import plots as P
from faithprobe.report import steps as S
from faithprobe.report.absence import Absence, absences, group_reasons
from faithprobe.report.abstain import abstain_section
from faithprobe.report.caveats import ppl_disagrees
from faithprobe.report.cues import cue_section
from faithprobe.report.readings import INTERVAL_SHORT, checkpoint_value, is_appendix, value_text
from faithprobe.report.render import PLOTS_DIR, REPORT_HTML, REPORT_MD, Doc, publish
from faithprobe.report.seed import ki_lines, seed_question_section
from faithprobe.report.suppression import suppression_section
from faithprobe.report.unlearn import unlearn_section
from faithprobe.report.verdict import (
    COMPARISON_HEADER,
    DOCS,
    checkpoint_rows,
    comparison_rows,
    estimate_text,
    forest_rows,
    metric_display,
    mmd_text,
    reading_notes,
    sort_forest_rows,
    verdict_lines,
)

__all__ = ["REPORT_HTML", "REPORT_MD", "PLOTS_DIR", "verdict_lines", "write_comparison",
           "write_report"]

MAX_REASON_GROUPS = 20  # rows of the grouped skip reasons table (the rest counted)


# ---------------------------------------------------------------------------------------------
# sections


def _status_rows(groups: Mapping[str, Sequence[Record]]) -> list[list[str]]:
    rows = []
    for label, recs in groups.items():
        counts = Counter(r.status for r in recs)
        nonfinite_ok = sum(1 for r in recs if r.status == "ok" and not is_usable(r))
        rows.append([label, str(len(recs)), str(counts["ok"] - nonfinite_ok),
                     str(counts["skipped"]), str(counts["no_answer"]),
                     str(counts["nonfinite"] + nonfinite_ok)])
    return rows


def _records_section(doc: Doc, groups: Mapping[str, Sequence[Record]]) -> None:
    doc.h("Records")
    if not any(groups.values()):
        doc.note("No records.")
        return
    doc.table(["checkpoint", "records", "usable", "skipped", "no_answer", "nonfinite"],
              _status_rows(groups))
    doc.note("Only usable records (status ok, every value finite) enter a metric; an ok record "
             "carrying a NaN or infinity is counted as nonfinite.")
    by_kind: Counter[tuple[str, str, str]] = Counter()
    for label, recs in groups.items():
        for r in recs:
            status = "nonfinite" if r.status == "ok" and not is_usable(r) else r.status
            by_kind[(label, r.intervention, status)] += 1
    keys = sorted({(label, kind) for label, kind, _ in by_kind},
                  key=lambda k: (list(groups).index(k[0]), k[1]))
    doc.table(["checkpoint", "intervention"] + list(STATUSES),
              [[label, kind] + [str(by_kind[(label, kind, s)]) for s in STATUSES]
               for label, kind in keys])
    reasons = group_reasons([r for recs in groups.values() for r in recs])
    if reasons:
        doc.p("Why records could not be used, grouped by kind of reason (a number that varies "
              "within a kind is shown as its range):")
        doc.table(["checkpoint", "intervention", "status", "reason", "records", "traces"],
                  [[g.checkpoint, g.intervention, g.status, g.text, str(g.records),
                    str(g.traces)] for g in reasons[:MAX_REASON_GROUPS]])
        if len(reasons) > MAX_REASON_GROUPS:
            rest = reasons[MAX_REASON_GROUPS:]
            doc.note(f"{len(rest)} more kinds of reason ({sum(g.records for g in rest)} "
                     "records) are not listed.")


def _flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, Mapping) and not obj and prefix:
        return {prefix: "none"}
    if isinstance(obj, Mapping) and obj:
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if prefix.split(".")[-1] == "argv" and isinstance(obj, list):
        return {prefix: shlex.join(str(a) for a in obj)}
    if isinstance(obj, str):
        return {prefix: obj}
    return {prefix: json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str)}


def _header_config(header: Mapping[str, Any]) -> Any:
    return header.get("config")


def _provenance(doc: Doc, header: Mapping[str, Any]) -> None:
    doc.h("Config and provenance")
    if not header:
        doc.note("No header: the run's provenance is unknown.")
        return
    flat = _flatten({k: v for k, v in header.items() if k != "config"})
    doc.table(["field", "value"], [[k, v] for k, v in flat.items()])
    config = _header_config(header)
    if config is not None:
        doc.p("Config:")
        doc.pre(json.dumps(config, indent=2, ensure_ascii=False, sort_keys=True, default=str))


def _status_warning(doc: Doc, header: Mapping[str, Any], name: str = "This run") -> None:
    status = header.get("status")
    if status is not None and status != "success":
        doc.note(f"{name}'s status is {status!r}, not 'success': it did not finish cleanly and "
                 "the numbers cover only the records written.")
    if isinstance(header.get("partial"), str):  # a merge of some of a study's shards
        doc.note(f"{header['partial']}: the numbers cover only these shards' traces.")


def _groups(records: Sequence[Record], prefix: str = "") -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in records:
        out.setdefault(f"{prefix}{r.checkpoint}", []).append(r)
    return out


def _curve_plots(doc: Doc, groups: Mapping[str, Sequence[Record]], continuation: str,
                 n_boot: int, seed: int) -> None:
    doc.h("Early answering and adding mistakes")
    doc.plot(P.early_answering_plot(groups))
    doc.plot(P.adding_mistakes_plot(groups, continuation=continuation))
    doc.h("InfoGain per step")
    doc.plot(P.infogain_plot(groups, n_boot=n_boot, seed=seed))
    doc.h("Activation patching")
    doc.plot(P.patching_plot(groups))
    doc.h("Resampling importance per step")
    doc.plot(P.resampling_plot(groups, n_boot=n_boot, seed=seed))


def _step_section(doc: Doc, groups: Mapping[str, Sequence[Record]],
                  traces: Mapping[str, Sequence[Trace]] | None, continuation: str) -> None:
    doc.h("Step importance")
    imp = S.pick_step_importance(groups, traces, continuation=continuation)
    doc.plot(S.step_importance_plot(imp))
    if imp is None or not imp.methods:
        return
    chosen = "mean KL after corrupting or deleting a step" if imp.chosen_by == "kl" else (
        "share of corruptions and deletions that flip the answer")
    if imp.text_from is None:
        where = "unavailable (the run folder holds no trace file for it)."
    elif imp.own_texts:
        where = (f"from {imp.text_from}'s own trace (each checkpoint wrote its own reasoning: "
                 "the others' texts differ; see traces-<label>.jsonl).")
    else:
        where = (f"from {imp.text_from}'s trace (every checkpoint's trace of it holds the same "
                 "steps).")
    doc.p(f"Trace {imp.trace_id}, the one whose steps differ most in {chosen} (max - min = "
          f"{imp.spread:.3g}); step text " + where)
    header, rows = S.step_table(imp)
    doc.table(header, rows)


def _calibration_section(doc: Doc, groups: Mapping[str, Sequence[Record]]) -> None:
    doc.h("Calibration")
    doc.plot(C.calibration_plot(groups))


def _ppl_appendix(doc: Doc, summary: Mapping[str, Any], records: Sequence[Record],
                  absent: Mapping[str, Mapping[str, Absence]]) -> None:
    metric = "infogain_ppl"
    checkpoints = summary.get("checkpoints") or {}
    if not any(metric in ests for ests in checkpoints.values()) and not any(
            r.intervention == metric for r in records):
        return
    doc.h("Appendix: InfoGain, perplexity form")
    doc.p("Wu et al.'s public code computes InfoGain over the perplexity of the whole string "
          "(question, steps 1..j, an answer cue, the answer): PPL_j = exp(mean negative "
          "log-likelihood over all its tokens). A trace's value is (PPL_0 - PPL_n) / (n + 1), "
          "in perplexity units per step; positive = the whole string's perplexity falls as "
          "steps are added. It averages over every token, the steps' own included, so it mixes "
          "how predictable the reasoning text is with how much the reasoning informs the "
          "answer, and its scale is the model's perplexity (not comparable across models). The "
          "verdict uses the answer-only form.")
    rows = []
    for label, ests in checkpoints.items():
        if metric in ests:
            rows.append([label, estimate_text(metric, ests[metric]), str(ests[metric]["n"])])
        else:
            why = absent.get(label, {}).get(metric)
            rows.append([label, why.text() if why else "not measured", ""])
    doc.table(["checkpoint", f"value [{INTERVAL_SHORT}]", "n traces"], rows)
    comp = comparison_rows(summary, absent, appendix=True)
    if comp:
        doc.table(COMPARISON_HEADER, comp)
    for c in summary.get("comparisons") or []:
        if c["metric"] == metric and ppl_disagrees(summary, c["a"], c["b"]):
            ig = [checkpoint_value(summary, x, "infogain_mean") for x in (c["a"], c["b"])]
            pp = [checkpoint_value(summary, x, metric) for x in (c["a"], c["b"])]
            doc.note(f"{c['b']} vs {c['a']}: the two forms move in opposite directions "
                     f"(answer-only InfoGain {value_text('infogain_mean', ig[0])} -> "
                     f"{value_text('infogain_mean', ig[1])}, perplexity form "
                     f"{value_text(metric, pp[0])} -> {value_text(metric, pp[1])}). The "
                     "perplexity form follows how predictable the whole string is, not the "
                     "answer; read the answer-only form.")


def _definitions(doc: Doc) -> None:
    doc.h("Metric definitions")
    ways = {1: "the answer depends more on the reasoning",
            -1: "the answer depends less on the reasoning", 0: ""}
    doc.table(["measure", "key", "unit", "minimal meaningful difference", "higher means",
               "what it measures"],
              [[m.label, m.name, m.suffix or ("percent" if m.unit == "points" else m.unit),
                mmd_text(m.name), ways[m.direction], m.description]
               for m in sorted(CATALOGUE, key=lambda m: m.table) if m.unit != "count"])
    doc.note(f"Definitions with their formulas, the minimal meaningful differences and why, "
             f"the verdict's rules and the caveats: {DOCS} in the faithprobe source.")


def _seed(header: Mapping[str, Any]) -> tuple[int, int]:
    config = header.get("config") if isinstance(header.get("config"), Mapping) else {}
    metrics_cfg = config.get("metrics") if isinstance(config.get("metrics"), Mapping) else {}
    n_boot = metrics_cfg.get("n_boot", 1000)
    seed = metrics_cfg.get("seed", config.get("seed", 0))
    n_boot = n_boot if isinstance(n_boot, int) and not isinstance(n_boot, bool) else 1000
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
    return min(n_boot, 1000), seed


# ---------------------------------------------------------------------------------------------
# public


def write_report(run_dir: Path, records: list[Record], summary: dict, header: dict,
                 traces: Mapping[str, Sequence[Trace]] | Sequence[Trace] | None = None
                 ) -> Path:
    """Write ``plots/``, ``report.md`` and ``report.html`` into ``run_dir``.

    Args:
        run_dir: the run folder.
        records: the run's records (``records.jsonl``).
        summary: ``metrics.summarize(records)`` (``summary.json``).
        header: the run header (``header.json``): status, config, provenance, labels.
        traces: the traces probed, for the step texts, per checkpoint label
            (``faithprobe.run.tracefiles.run_traces``) or one list for every checkpoint;
            optional.

    Returns:
        The path of ``report.html``.
    """
    header = header or {}
    config = _header_config(header)
    name = config.get("name") if isinstance(config, Mapping) else None
    doc = Doc(f"faithprobe report: {name or Path(run_dir).name}")
    _status_warning(doc, header)
    doc.h("Verdict")
    doc.bullets(verdict_lines(summary, records), css="verdict")
    for note in reading_notes(summary):
        doc.note(note)
    doc.plot(P.forest_plot(forest_rows(summary)))

    labels = header.get("labels") if isinstance(header.get("labels"), Mapping) else {}
    groups = _groups(records)
    absent = absences(records, summary)
    for label, ests in (summary.get("checkpoints") or {}).items():
        spec = labels.get(label) or next((r.model for r in groups.get(label, []) if r.model),
                                         None)
        doc.h(f"Checkpoint {label}" + (f" ({spec})" if spec else ""))
        doc.table(["measure", f"value [{INTERVAL_SHORT}]", "n traces", "what it measures"],
                  checkpoint_rows(ests, absent.get(label)))
    ki = ki_lines(summary, records)
    if ki:
        doc.h("KI: coverage and judge")
        doc.bullets(ki)
    doc.h("Comparisons")
    rows = comparison_rows(summary, absent)
    if rows:
        doc.table(COMPARISON_HEADER, rows)
    else:
        doc.note("No comparisons: the summary has one checkpoint or no shared traces.")
    seed_question_section(doc, summary)
    cue_section(doc, summary, records)
    abstain_section(doc, summary, groups)
    suppression_section(doc, summary, records, traces)
    unlearn_section(doc, summary, records, traces)
    _records_section(doc, groups)

    n_boot, seed = _seed(header)
    continuation = resolve_continuation(records)
    _curve_plots(doc, groups, continuation, n_boot, seed)
    if traces is not None and not isinstance(traces, Mapping):
        traces = {label: list(traces) for label in groups}
    _step_section(doc, groups, traces, continuation)
    _calibration_section(doc, groups)
    _ppl_appendix(doc, summary, records, absent)
    _definitions(doc)
    _provenance(doc, header)
    return publish(Path(run_dir), doc)


def write_comparison(out_dir: Path, runs: list[tuple[str, list[Record], dict, dict]],
                     warnings: Mapping[str, Any] | None = None) -> Path:
    """One report across run folders: (name, records, summary, header) per run.

    Checkpoints are labelled ``name/label``. Each run's own comparisons are kept, and each
    checkpoint of a run is compared with each checkpoint of every later run over the traces they
    share (``faithprobe.metrics.crossrun``: the paired bootstrap, minimal meaningful
    differences and verdict rules of a run). ``warnings`` (kind -> ``{"count", "pairs"}``, from
    the command line) are listed in the report.

    Returns:
        The path of ``out_dir/report.html``.
    """
    if not runs:
        raise FaithprobeError("write_comparison needs at least one run", field="runs")
    names: list[str] = []
    for name, *_ in runs:
        unique, k = str(name), 2
        while unique in names:
            unique, k = f"{name}#{k}", k + 1
        names.append(unique)
    doc = Doc("faithprobe comparison: " + ", ".join(names))
    for name, (_, _, _, header) in zip(names, runs):
        _status_warning(doc, header or {}, f"Run {name}")
    if warnings:
        doc.h("Warnings")
        doc.bullets([f"{kind} ({entry.get('count', 0)}): " + "; ".join(
            str(p) for p in entry.get("pairs", [])) for kind, entry in warnings.items()])
        doc.note("self_compare: a run compared with itself (the same folder or the same "
                 "records); no_shared_trace: two runs without a trace in common, so nothing "
                 "between them is paired.")
    n_boot, seed = _seed(runs[0][3] or {})
    cross = cross_run_summary([(name, records) for name, (_, records, _, _)
                               in zip(names, runs)], n_boot=n_boot, seed=seed)
    doc.h("Verdict")
    across = [] if cross is None else verdict_lines(
        {**cross, "checkpoints": cross["checkpoints"]},
        [r for name, (_, records, _, _) in zip(names, runs) for r in relabel(records, name)])
    doc.bullets([f"across runs: {line}" for line in across if not line.startswith("Caveat")]
                + [f"{name}: {line}" for name, (_, records, summary, _) in zip(names, runs)
                   for line in verdict_lines(summary, records)], css="verdict")
    merged = {"checkpoints": {f"{name}/{label}": ests for name, (_, _, summary, _)
                              in zip(names, runs)
                              for label, ests in (summary.get("checkpoints") or {}).items()}}
    for note in reading_notes(merged):
        doc.note(note)
    forest = [row for name, (_, _, summary, _) in zip(names, runs)
              for row in forest_rows(summary, prefix=f"{name}: ")]
    doc.plot(P.forest_plot(sort_forest_rows(forest)))

    run_absent = {name: absences(records, summary)
                  for name, (_, records, summary, _) in zip(names, runs)}
    columns = [(name, label, ests) for name, (_, _, summary, _) in zip(names, runs)
               for label, ests in (summary.get("checkpoints") or {}).items()]
    metric_order = [m for m in TABLE_METRICS
                    if metric_display(m)[1] != "count" and not is_appendix(m)]
    extra = {m for *_, ests in columns for m in ests} - set(METRICS_BY_NAME)
    present = metric_order + sorted(extra)
    doc.h("Measures side by side")
    if columns:
        def cell(name: str, label: str, ests: Mapping[str, Any], m: str) -> str:
            if m in ests:
                return f"{estimate_text(m, ests[m])} (n={ests[m]['n']})"
            why = run_absent[name].get(label, {}).get(m)
            return why.text() if why else "not measured"

        doc.table(["measure"] + [f"{name}/{label}" for name, label, _ in columns],
                  [[metric_display(m)[0]] + [cell(name, label, ests, m)
                                             for name, label, ests in columns]
                   for m in present])
    else:
        doc.note("No measure could be computed in any run.")
    doc.h("Comparisons across runs")
    if cross is not None and cross.get("comparisons"):
        doc.p("Each checkpoint of a run against each checkpoint of every later run, paired over "
              "the traces both share (by trace id).")
        doc.table(COMPARISON_HEADER, comparison_rows(cross))
    else:
        doc.note("No two runs share a trace: nothing across runs can be paired.")
    doc.h("Comparisons within each run")
    rows = [row for name, (_, _, summary, _) in zip(names, runs)
            for row in comparison_rows(summary, run_absent[name], prefix=f"{name}: ")]
    if rows:
        doc.table(COMPARISON_HEADER, rows)
    else:
        doc.note("No run compares two checkpoints.")
    groups: dict[str, list[Record]] = {}
    for name, (_, records, _, _) in zip(names, runs):
        groups.update(_groups(records, prefix=f"{name}/"))
    _records_section(doc, groups)

    all_records = [r for _, records, _, _ in runs for r in records]
    _curve_plots(doc, groups, resolve_continuation(all_records), n_boot, seed)
    _calibration_section(doc, groups)
    doc.note("Step importance is drawn per run: see each run's own report.")
    _definitions(doc)

    doc.h("Provenance")
    flats = [_flatten({k: v for k, v in (h or {}).items() if k != "config"})
             for *_, h in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    doc.table(["field"] + names, [[k] + [f.get(k, "") for f in flats] for k in keys])
    configs = [_flatten(_header_config(h or {}) or {}, "config") for *_, h in runs]
    ckeys = list(dict.fromkeys(k for c in configs for k in c))
    differ = [k for k in ckeys if len({c.get(k) for c in configs}) > 1]
    if differ:
        doc.p("Config keys that differ between runs (identical keys are not shown):")
        doc.table(["config key"] + names, [[k] + [c.get(k, "") for c in configs]
                                           for k in differ])
    else:
        doc.note("The runs' configs are identical." if any(configs)
                 else "No run header carries a config.")
    return publish(Path(out_dir), doc)
