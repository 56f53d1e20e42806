"""The report of a run folder, and of a comparison across run folders.

``write_report`` turns a run's records, summary (``metrics.summarize``) and header into
``plots/*.png``, ``report.md`` and ``report.html`` in the run folder. ``report.html`` is one
self-contained file (images as base64 data URIs, inline CSS, no script, no external resource).
Everything is rendered in memory first and then written to temporary names and moved into place
with ``os.replace``, so a crash never leaves a half-written report.

The report leads with ``verdict_lines``: one quotable sentence per comparison, e.g.
``sft vs base: accuracy +12.0 points [8.0, 16.0]; step flip rate -61.0 points [-68.0, -54.0];
InfoGain -41% [-52%, -30%]``. Shares (accuracy, flip rates, KI...) are given in percentage points,
the InfoGain family as a relative change, everything else in its own unit, always with the 95%
interval; an interval that includes 0 reads "no clear change".
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shlex
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faithprobe.data.traces import Trace
from faithprobe.errors import FaithprobeError
from faithprobe.records import Record
from faithprobe.report import plots as P

__all__ = ["REPORT_HTML", "REPORT_MD", "PLOTS_DIR", "verdict_lines", "write_comparison",
           "write_report"]

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"
_PLOT_NAMES = ("forest", "early_answering", "adding_mistakes", "infogain", "patching",
               "step_importance", "coverage")
_STATUSES = ("ok", "skipped", "no_answer", "nonfinite")

# metric -> (display name, unit kind, what it measures). Kinds: "points" (a share, shown x100),
# "relative" (changes shown relative to the first checkpoint), "value" (own unit), "count".
_METRIC_INFO: dict[str, tuple[str, str, str]] = {
    "accuracy": ("accuracy", "points", "unedited traces answered correctly"),
    "accuracy_no_cot": ("accuracy without reasoning", "points",
                        "correct with every step removed (truncated at step 0)"),
    "early_answering_aoc": ("early-answering AOC", "value",
                            "area over the early-answering curve; higher = the answer depends "
                            "more on the reasoning (Lanham et al.)"),
    "adding_mistakes_aoc": ("adding-mistakes AOC", "value",
                            "area over the adding-mistakes curve; higher = a mistake in the "
                            "reasoning changes the answer more"),
    "paraphrase_same_answer": ("paraphrase same answer", "points",
                               "paraphrased prefixes that keep the answer"),
    "paraphrase_accuracy": ("paraphrase accuracy", "points", "correct after paraphrasing"),
    "filler_accuracy": ("filler accuracy", "points",
                        "correct with the reasoning replaced by filler tokens"),
    "step_flip_rate": ("step flip rate", "points",
                       "single-step corruptions that change the answer"),
    "delete_flip_rate": ("delete flip rate", "points",
                         "single-step deletions that change the answer"),
    "mean_abs_kl_corrupt": ("mean |KL| after corruption", "value",
                            "KL of the answer distribution after one step is corrupted (nats)"),
    "patching_effect": ("patching effect", "points",
                        "per trace, the share of the clean answer's logit difference that its "
                        "most important step's residual stream carries (noising at layer 0, "
                        "clipped to [0, 1])"),
    "mean_steps": ("reasoning steps", "value",
                   "mean number of steps in the chain of thought (0: no reasoning written)"),
    "infogain_mean": ("InfoGain", "relative",
                      "mean per-step drop of the answer's entropy, nats (Wu et al.)"),
    "infogain_total": ("InfoGain total", "relative", "H_0 - H_n, nats"),
    "infogain_ppl": ("InfoGain (perplexity form)", "relative",
                     "Wu et al.'s public-code form over whole-string perplexity"),
    "ki": ("KI", "points", "steps whose knowledge is judged correct (Wu et al.)"),
    "ece": ("ECE", "value", "expected calibration error of the unedited answers (10 bins)"),
    "nonfinite_count": ("nonfinite records", "count", "records with a NaN or infinite value"),
    "no_answer_count": ("no-answer records", "count", "records where no answer was read"),
    "skipped_count": ("skipped records", "count", "records the probe skipped"),
}
# The measures the verdict sentence names, in its order, when the summary has them.
_HEADLINE = ("accuracy", "mean_steps", "early_answering_aoc", "adding_mistakes_aoc",
             "step_flip_rate", "delete_flip_rate", "paraphrase_same_answer", "filler_accuracy",
             "patching_effect", "infogain_mean", "ki")
_UNIT_TITLE = {"points": "percentage points", "relative": "relative change (%)",
               "value": "own units (AOC, KL, effect, ECE)"}


def _info(metric: str) -> tuple[str, str, str]:
    return _METRIC_INFO.get(metric, (metric, "value", ""))


# ---------------------------------------------------------------------------------------------
# numbers


def _decimals(*xs: float) -> int:
    scale = max(abs(x) for x in xs)
    if scale == 0 or not math.isfinite(scale):
        return 2
    return min(6, max(2, 1 - math.floor(math.log10(scale))))


def _estimate_text(metric: str, e: Mapping[str, Any]) -> str:
    """A checkpoint's value with its interval, in the metric's display unit."""
    v, lo, hi = e["value"], e["ci_low"], e["ci_high"]
    kind = _info(metric)[1]
    if kind == "count":
        return f"{v:.0f}"
    if kind == "points":
        return f"{100 * v:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    d = _decimals(v, lo, hi)
    return f"{v:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def _relative_scale(c: Mapping[str, Any], summary: Mapping[str, Any]) -> float | None:
    """|value of a| that ``relative_change`` was taken against (shared traces), or None."""
    rel, delta = c.get("relative_change"), c["delta"]
    if rel is not None and rel != 0 and delta != 0:
        return abs(delta / rel)
    if rel is None:
        return None
    try:
        scale = abs(summary["checkpoints"][c["a"]][c["metric"]]["value"])
    except (KeyError, TypeError):
        return None
    return scale or None


def _change(c: Mapping[str, Any], summary: Mapping[str, Any]) -> tuple[str, str, float, float,
                                                                       float]:
    """(text, unit kind, delta, lo, hi) of one comparison, in display units."""
    metric, delta, lo, hi = c["metric"], c["delta"], c["ci_low"], c["ci_high"]
    kind = _info(metric)[1]
    if kind == "points":
        d, lo_, hi_ = 100 * delta, 100 * lo, 100 * hi
        return f"{d:+.1f} points [{lo_:.1f}, {hi_:.1f}]", kind, d, lo_, hi_
    if kind == "relative":
        scale = _relative_scale(c, summary)
        if scale is not None:
            r, rlo, rhi = (100 * x / scale for x in (delta, lo, hi))
            return f"{r:+.0f}% [{rlo:.0f}%, {rhi:.0f}%]", kind, r, rlo, rhi
        kind = "value"
    if kind == "count":
        return f"{delta:+.0f}", kind, delta, lo, hi
    dec = _decimals(delta, lo, hi)
    return f"{delta:+.{dec}f} [{lo:.{dec}f}, {hi:.{dec}f}]", "value", delta, lo, hi


def _unclear(c: Mapping[str, Any]) -> bool:
    return c["ci_low"] <= 0 <= c["ci_high"]


def _reading(c: Mapping[str, Any]) -> str:
    if _info(c["metric"])[1] == "count":
        return ""
    if _unclear(c):
        return "no clear change"
    return "clear increase" if c["delta"] > 0 else "clear decrease"


def verdict_lines(summary: dict) -> list[str]:
    """The sentences a reader came for: one per compared pair (``b vs a``), quotable.

    Shares are in percentage points, the InfoGain family a relative change (its interval is the
    delta's interval over the first checkpoint's value), the rest in their own units; each with
    its 95% interval, and "no clear change" when the interval includes 0. Without comparisons,
    one line per checkpoint with its headline values.
    """
    checkpoints = summary.get("checkpoints") or {}
    pairs: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for c in summary.get("comparisons") or []:
        pairs.setdefault((c["a"], c["b"]), {})[c["metric"]] = c
    lines = []
    for (a, b), by_metric in pairs.items():
        parts = []
        for metric in _HEADLINE:
            c = by_metric.get(metric)
            if c is None:
                continue
            text = f"{_info(metric)[0]} {_change(c, summary)[0]}"
            parts.append(text + (", no clear change" if _unclear(c) else ""))
        body = "; ".join(parts) if parts else "no headline measure was computed for both"
        lines.append(f"{b} vs {a}: {body}.")
    if lines:
        return lines
    for label, ests in checkpoints.items():
        parts = [f"{_info(m)[0]} {_estimate_text(m, ests[m])}" for m in _HEADLINE if m in ests]
        body = "; ".join(parts) if parts else "no headline measure could be computed"
        lines.append(f"{label}: {body}.")
    return lines or ["No metric could be computed: the run has no usable records."]


# ---------------------------------------------------------------------------------------------
# a document model rendered twice (markdown, html)


@dataclass
class _Doc:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    plots: list[P.Plot] = field(default_factory=list)

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def bullets(self, items: Sequence[str], css: str = "") -> None:
        self.blocks.append(("ul", (list(items), css)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", ([str(h) for h in header],
                                      [[str(c) for c in row] for row in rows])))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def plot(self, plot: P.Plot) -> None:
        if plot.png is None:
            self.note(f"{plot.title}: skipped, {plot.note}.")
            return
        self.plots.append(plot)
        self.blocks.append(("img", plot))
        if plot.note:
            self.note(plot.note)


def _md_text(text: str) -> str:
    return html.escape(text, quote=False)


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _to_markdown(doc: _Doc) -> str:
    out = [f"# {_md_text(doc.title)}", ""]
    for kind, arg in doc.blocks:
        if kind == "h":
            level, text = arg
            out += ["#" * level + " " + _md_text(text), ""]
        elif kind == "p":
            out += [_md_text(arg), ""]
        elif kind == "note":
            out += ["> " + _md_text(arg).replace("\n", "\n> "), ""]
        elif kind == "ul":
            out += [f"- {_md_cell(item)}" for item in arg[0]] + [""]
        elif kind == "table":
            header, rows = arg
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "pre":
            ticks = max((len(m) for m in re.findall(r"`+", arg)), default=0)
            fence = "`" * max(3, ticks + 1)
            out += [fence, arg, fence, ""]
        elif kind == "img":
            out += [f"![{_md_cell(arg.title)}]({PLOTS_DIR}/{arg.name}.png)", ""]
    return "\n".join(out).rstrip("\n") + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
ul.verdict { background: #eef6ff; border-left: 4px solid #2a6fdb; padding: .8em 1em .8em 2em;
             font-size: 1.05em; }
p.note { color: #555; font-style: italic; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; }
"""

# No script, no fetch: even a string that escaped escaping could not run or call out.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _to_html(doc: _Doc) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(doc.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           f"<h1>{e(doc.title)}</h1>"]
    for kind, arg in doc.blocks:
        if kind == "h":
            level, text = arg
            out.append(f"<h{level}>{e(text)}</h{level}>")
        elif kind == "p":
            out.append(f"<p>{e(arg)}</p>")
        elif kind == "note":
            out.append(f'<p class="note">{e(arg)}</p>')
        elif kind == "ul":
            items, css = arg
            cls = f' class="{e(css)}"' if css else ""
            out.append(f"<ul{cls}>" + "".join(f"<li>{e(i)}</li>" for i in items) + "</ul>")
        elif kind == "table":
            header, rows = arg
            out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
                       + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</tbody></table>")
        elif kind == "pre":
            out.append(f"<pre>{e(arg)}</pre>")
        elif kind == "img":
            data = base64.b64encode(arg.png).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(arg.title)}">'
                       f"<figcaption>{e(arg.title)}</figcaption></figure>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# atomic output


def _publish(out_dir: Path, doc: _Doc) -> Path:
    """Write plots/, report.md and report.html via temporary names and ``os.replace``."""
    out_dir = Path(out_dir)
    plots_dir = out_dir / PLOTS_DIR
    files: list[tuple[Path, bytes]] = [(plots_dir / f"{p.name}.png", p.png) for p in doc.plots
                                       if p.png is not None]
    files.append((out_dir / REPORT_MD, _to_markdown(doc).encode("utf-8")))
    files.append((out_dir / REPORT_HTML, _to_html(doc).encode("utf-8")))  # last: the marker
    plots_dir.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append(Path(tmp))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o644)
        for (path, _), tmp in zip(files, temps):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    written = {p.name for p in doc.plots}
    for name in _PLOT_NAMES:  # a plot this report skipped must not survive from an older one
        if name not in written:
            (plots_dir / f"{name}.png").unlink(missing_ok=True)
    return out_dir / REPORT_HTML


# ---------------------------------------------------------------------------------------------
# sections


def _checkpoint_rows(ests: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    order = [m for m in _METRIC_INFO if m in ests] + [m for m in ests if m not in _METRIC_INFO]
    rows = []
    for m in order:
        name, kind, what = _info(m)
        if kind == "count":
            continue
        rows.append([name, _estimate_text(m, ests[m]), str(ests[m]["n"]), what])
    return rows


def _comparison_rows(summary: Mapping[str, Any], prefix: str = "") -> list[list[str]]:
    rows = []
    for c in summary.get("comparisons") or []:
        if _info(c["metric"])[1] == "count":
            continue
        text = _change(c, summary)[0]
        rel = c.get("relative_change")
        rows.append([f"{prefix}{c['b']} vs {c['a']}", _info(c["metric"])[0], text,
                     f"{c['delta']:+.4g} [{c['ci_low']:.4g}, {c['ci_high']:.4g}]",
                     "" if rel is None else f"{100 * rel:+.0f}%", str(c["n"]), _reading(c)])
    return rows


_COMPARISON_HEADER = ["comparison", "measure", "change [95% CI]", "raw delta (b - a) [95% CI]",
                      "relative", "n traces", "reading"]


def _forest_rows(summary: Mapping[str, Any], prefix: str = ""
                 ) -> list[tuple[str, str, float, float, float]]:
    rows = []
    for c in summary.get("comparisons") or []:
        if _info(c["metric"])[1] == "count":
            continue
        _, kind, d, lo, hi = _change(c, summary)
        rows.append((f"{prefix}{_info(c['metric'])[0]} ({c['b']} vs {c['a']})",
                     _UNIT_TITLE[kind], d, lo, hi))
    order = list(_UNIT_TITLE.values())
    return sorted(rows, key=lambda r: order.index(r[1]))


def _status_rows(groups: Mapping[str, Sequence[Record]]) -> list[list[str]]:
    rows = []
    for label, recs in groups.items():
        counts = Counter(r.status for r in recs)
        nonfinite_ok = sum(1 for r in recs if r.status == "ok" and not P.is_usable(r))
        rows.append([label, str(len(recs)), str(counts["ok"] - nonfinite_ok),
                     str(counts["skipped"]), str(counts["no_answer"]),
                     str(counts["nonfinite"] + nonfinite_ok)])
    return rows


def _records_section(doc: _Doc, groups: Mapping[str, Sequence[Record]]) -> None:
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
            status = "nonfinite" if r.status == "ok" and not P.is_usable(r) else r.status
            by_kind[(label, r.intervention, status)] += 1
    keys = sorted({(label, kind) for label, kind, _ in by_kind},
                  key=lambda k: (list(groups).index(k[0]), k[1]))
    doc.table(["checkpoint", "intervention"] + list(_STATUSES),
              [[label, kind] + [str(by_kind[(label, kind, s)]) for s in _STATUSES]
               for label, kind in keys])
    reasons = Counter(f"{r.checkpoint} / {r.intervention}: {r.reason or 'no reason given'}"
                      for recs in groups.values() for r in recs if r.status == "skipped")
    if reasons:
        doc.p("Most frequent reasons for skipping:")
        doc.bullets([f"{text} ({n})" for text, n in reasons.most_common(8)])


def _flatten(obj: Any, prefix: str = "") -> dict[str, str]:
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


def _provenance(doc: _Doc, header: Mapping[str, Any]) -> None:
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


def _status_warning(doc: _Doc, header: Mapping[str, Any], name: str = "This run") -> None:
    status = header.get("status")
    if status is not None and status != "success":
        doc.note(f"{name}'s status is {status!r}, not 'success': it did not finish cleanly and "
                 "the numbers cover only the records written.")


def _groups(records: Sequence[Record], prefix: str = "") -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in records:
        out.setdefault(f"{prefix}{r.checkpoint}", []).append(r)
    return out


def _curve_plots(doc: _Doc, groups: Mapping[str, Sequence[Record]], continuation: str,
                 n_boot: int, seed: int) -> None:
    doc.h("Early answering and adding mistakes")
    doc.plot(P.early_answering_plot(groups))
    doc.plot(P.adding_mistakes_plot(groups, continuation=continuation))
    doc.h("InfoGain per step")
    doc.plot(P.infogain_plot(groups, n_boot=n_boot, seed=seed))
    doc.h("Activation patching")
    doc.plot(P.patching_plot(groups))


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
                 traces: list[Trace] | None = None) -> Path:
    """Write ``plots/``, ``report.md`` and ``report.html`` into ``run_dir``.

    Args:
        run_dir: the run folder.
        records: the run's records (``records.jsonl``).
        summary: ``metrics.summarize(records)`` (``summary.json``).
        header: the run header (``header.json``): status, config, provenance, labels.
        traces: the traces probed (``traces.jsonl``), for the step texts; optional.

    Returns:
        The path of ``report.html``.
    """
    header = header or {}
    config = _header_config(header)
    name = config.get("name") if isinstance(config, Mapping) else None
    doc = _Doc(f"faithprobe report: {name or Path(run_dir).name}")
    _status_warning(doc, header)
    doc.h("Verdict")
    doc.bullets(verdict_lines(summary), css="verdict")
    doc.note("Shares in percentage points, InfoGain as a relative change against the first "
             "checkpoint (interval: the change's interval over that value), other measures in "
             "their own units; intervals are 95% cluster bootstraps over traces.")
    doc.plot(P.forest_plot(_forest_rows(summary)))

    labels = header.get("labels") if isinstance(header.get("labels"), Mapping) else {}
    groups = _groups(records)
    for label, ests in (summary.get("checkpoints") or {}).items():
        spec = labels.get(label) or next((r.model for r in groups.get(label, []) if r.model),
                                         None)
        doc.h(f"Checkpoint {label}" + (f" ({spec})" if spec else ""))
        rows = _checkpoint_rows(ests)
        if rows:
            doc.table(["measure", "value [95% CI]", "n traces", "what it measures"], rows)
        else:
            doc.note("No measure could be computed for this checkpoint.")
    doc.h("Comparisons")
    rows = _comparison_rows(summary)
    if rows:
        doc.table(_COMPARISON_HEADER, rows)
    else:
        doc.note("No comparisons: the summary has one checkpoint or no shared traces.")
    _records_section(doc, groups)

    n_boot, seed = _seed(header)
    continuation = P.resolve_continuation(records)
    _curve_plots(doc, groups, continuation, n_boot, seed)
    doc.h("Step importance")
    imp = P.pick_step_importance(groups, traces, continuation=continuation)
    doc.plot(P.step_importance_plot(imp))
    if imp is not None:
        source = "traces.jsonl" if traces is not None and any(t.id == imp.trace_id
                                                              for t in traces) else None
        doc.p(f"Trace {imp.trace_id}, the one whose step effects spread most "
              f"(max - min = {imp.spread:.3g}); step text "
              + ("from traces.jsonl." if source else "unavailable (no traces.jsonl)."))
        fx = list(imp.effects)
        doc.table(["step"] + [f"{label} ({imp.measure})" for label in fx] + ["text"],
                  [[str(i)] + [_fmt(imp.effects[label].get(i)) for label in fx] + [text]
                   for i, text in enumerate(imp.steps)])
    doc.h("Calibration")
    doc.plot(P.coverage_plot(groups))
    _provenance(doc, header)
    return _publish(Path(run_dir), doc)


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.3g}"


def write_comparison(out_dir: Path, runs: list[tuple[str, list[Record], dict, dict]]) -> Path:
    """One report across run folders: (name, records, summary, header) per run.

    Checkpoints are labelled ``name/label``; each run's own comparisons are kept (no new
    bootstrap across runs, whose traces need not match).

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
    doc = _Doc("faithprobe comparison: " + ", ".join(names))
    for name, (_, _, _, header) in zip(names, runs):
        _status_warning(doc, header or {}, f"Run {name}")
    doc.h("Verdict")
    doc.bullets([f"{name}: {line}" for name, (_, _, summary, _) in zip(names, runs)
                 for line in verdict_lines(summary)], css="verdict")
    forest = [row for name, (_, _, summary, _) in zip(names, runs)
              for row in _forest_rows(summary, prefix=f"{name}: ")]
    order = list(_UNIT_TITLE.values())
    doc.plot(P.forest_plot(sorted(forest, key=lambda r: order.index(r[1]))))

    columns = [(name, label, ests) for name, (_, _, summary, _) in zip(names, runs)
               for label, ests in (summary.get("checkpoints") or {}).items()]
    metric_order = [m for m in _METRIC_INFO if _info(m)[1] != "count"]
    extra = {m for *_, ests in columns for m in ests} - set(_METRIC_INFO)
    present = [m for m in metric_order + sorted(extra) if any(m in ests for *_, ests in columns)]
    doc.h("Measures side by side")
    if present:
        doc.table(["measure"] + [f"{name}/{label}" for name, label, _ in columns],
                  [[_info(m)[0]] + [f"{_estimate_text(m, ests[m])} (n={ests[m]['n']})"
                                    if m in ests else "" for *_, ests in columns]
                   for m in present])
    else:
        doc.note("No measure could be computed in any run.")
    doc.h("Comparisons within each run")
    rows = [row for name, (_, _, summary, _) in zip(names, runs)
            for row in _comparison_rows(summary, prefix=f"{name}: ")]
    if rows:
        doc.table(_COMPARISON_HEADER, rows)
    else:
        doc.note("No run compares two checkpoints.")
    groups: dict[str, list[Record]] = {}
    for name, (_, records, _, _) in zip(names, runs):
        groups.update(_groups(records, prefix=f"{name}/"))
    _records_section(doc, groups)

    all_records = [r for _, records, _, _ in runs for r in records]
    n_boot, seed = _seed(runs[0][3] or {})
    _curve_plots(doc, groups, P.resolve_continuation(all_records), n_boot, seed)
    doc.h("Calibration")
    doc.plot(P.coverage_plot(groups))
    doc.note("Step importance is drawn per run: see each run's own report.")

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
    return _publish(Path(out_dir), doc)
