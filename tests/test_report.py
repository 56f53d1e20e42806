"""The run report and the comparison report, over hand-built records (no model)."""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from faithprobe.data.traces import Trace
from faithprobe.metrics import (
    CATALOGUE,
    METRICS_BY_NAME,
    UNIT_TITLES,
    VERDICT_METRICS,
    Metric,
    summarize,
)
from faithprobe.records import Record
from faithprobe.report import document as report_mod
from faithprobe.report.absence import absences, group_reasons, reason_template
from faithprobe.report.calibration import calibration_plot
from faithprobe.report.caveats import caveats
from faithprobe.report.document import verdict_lines, write_comparison, write_report
from faithprobe.report.plots import ForestRow, forest_plot, panel_limits
from faithprobe.report.readings import INTERVAL, reading, relative_text
from faithprobe.report.steps import pick_step_importance, step_importance_plot, step_table
from faithprobe.report.verdict import (
    checkpoint_rows,
    comparison_rows,
    forest_rows,
    reading_notes,
)
from faithprobe.run.folder import score_runs

ROOT = Path(__file__).resolve().parents[1]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SITES = ("hook_embed", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre",
         "blocks.1.hook_resid_post")
SCRIPT = "<script>alert('x')</script>"
HEADER = {
    "schema_version": 1, "status": "success",
    "config": {"name": "synthetic <b>study</b>", "seed": 0, "metrics": {"n_boot": 100}},
    "argv": ["faithprobe", "run", "study.json"], "git": {"commit": "abc123", "dirty": False},
    "packages": {"faithprobe": "0.1.0", "torch": "2.13.0"},
    "started": "2025-01-01T00:00:00", "ended": "2025-01-01T00:10:00",
    "labels": {"base": "organism:base", "sft": "organism:sft"},
}


def make_traces(n_traces: int = 6) -> list[Trace]:
    traces = []
    for t in range(n_traces):
        n = 3 + t % 3
        steps = tuple(f"Step {i} of trace {t}: 2 + {i} = {2 + i}, costs $5." for i in range(n))
        if t == 0:
            steps = (f"Let x = 3. {SCRIPT} & done",) + steps[1:]
        traces.append(Trace(id=f"t{t}", question=f"q{t}?", steps=steps, answer="A",
                            options=("A", "B"), gold="A"))
    return traces


def make_records(traces: list[Trace], *, patch: bool = True, seed: int = 0) -> list[Record]:
    """base: the answer rides on the steps; sft: more accurate, answer mostly post hoc."""
    rng = random.Random(seed)
    out: list[Record] = []
    for ckpt, faithful, acc in (("base", 0.85, 0.6), ("sft", 0.2, 0.9)):
        def rec(tr: Trace, kind: str, ckpt: str = ckpt, **kw) -> Record:
            return Record(trace_id=tr.id, checkpoint=ckpt, intervention=kind,
                          n_steps=tr.n_steps, model=f"organism:{ckpt}", answer="A", gold="A",
                          orig_pred="A", **kw)

        for tr in traces:
            n = tr.n_steps
            ok = rng.random() < acc
            out.append(rec(tr, "none", pred="A" if ok else "B", same_answer=True, correct=ok,
                           pred_prob=rng.uniform(0.5, 1.0)))
            for k in range(n + 1):
                same = k == n or rng.random() > faithful * (1 - k / n)
                out.append(rec(tr, "truncate", step=k, same_answer=same, correct=same and ok))
            for i in range(n):
                # trace t0 gets the widest spread of effects: the step-importance figure picks it
                kl = (3.0 * i if tr.id == "t0" else rng.uniform(0, 1)) * faithful
                flip = rng.random() < faithful
                out.append(rec(tr, "corrupt", step=i, same_answer=not flip, kl=kl,
                               detail={"continuation": "keep"}))
                out.append(rec(tr, "delete", step=i, same_answer=rng.random() > faithful / 2,
                               kl=kl / 2))
                out.append(rec(tr, "paraphrase", step=i, same_answer=rng.random() < 0.9,
                               correct=ok))
                out.append(rec(tr, "ki", step=i, value=float(rng.random() < 0.8)))
                if patch:
                    for s in SITES:
                        out.append(rec(tr, "patch", step=i, site=s,
                                       value=rng.uniform(0, faithful)))
            out.append(rec(tr, "filler", correct=rng.random() < 0.5))
            h = 2.0
            for k in range(n + 1):
                out.append(rec(tr, "infogain", step=k, value=h))
                h -= rng.uniform(0.1, 0.6) * faithful
        tr = traces[1]
        out.append(rec(tr, "filler", step=0, status="skipped", reason=f"too long {SCRIPT}"))
        out.append(rec(tr, "paraphrase", step=9, status="no_answer"))
        out.append(rec(tr, "corrupt", step=1, status="nonfinite", kl=float("nan"),
                       detail={"continuation": "keep", "variant": 2}))
    return out


@pytest.fixture(scope="module")
def run_data() -> tuple[list[Trace], list[Record], dict]:
    traces = make_traces()
    records = make_records(traces)
    return traces, records, summarize(records, n_boot=100, seed=0)


def imgs(html_text: str) -> list[str]:
    return re.findall(r"<img\b[^>]*>", html_text)


def assert_pngs(html_text: str) -> int:
    tags = imgs(html_text)
    for tag in tags:
        m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag)
        assert m, tag[:80]
        try:
            data = base64.b64decode(m.group(1), validate=True)
        except binascii.Error as exc:  # pragma: no cover - the assertion message
            raise AssertionError(f"bad base64 in {tag[:80]}") from exc
        assert data.startswith(PNG_MAGIC)
    return len(tags)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def skip_sft_patches(records: list[Record], reason, drop: tuple[str, ...] = ()) -> list[Record]:
    """sft's patch records all skipped with ``reason(record)``; kinds in ``drop`` removed."""
    return [r if not (r.checkpoint == "sft" and r.intervention == "patch") else
            Record(trace_id=r.trace_id, checkpoint="sft", intervention="patch", step=r.step,
                   n_steps=r.n_steps, site=r.site, status="skipped", reason=reason(r))
            for r in records if r.intervention not in drop]


@pytest.fixture(scope="module")
def written(tmp_path_factory, run_data) -> tuple[Path, str, str]:
    """The synthetic run's report: (folder, report.html, report.md)."""
    traces, records, summary = run_data
    folder = tmp_path_factory.mktemp("report")
    page = write_report(folder, records, summary, HEADER, traces).read_text("utf-8")
    return folder, page, (folder / "report.md").read_text("utf-8")


# ---------------------------------------------------------------------------------------------


def test_write_report_writes_self_contained_html(written) -> None:
    tmp_path, page, md = written
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == sorted(f"{n}.png" for n in ("forest", "early_answering", "adding_mistakes",
                                               "infogain", "patching", "step_importance",
                                               "calibration"))
    for name in pngs:
        assert (tmp_path / "plots" / name).read_bytes().startswith(PNG_MAGIC)
        assert f"plots/{name}" in md
    assert assert_pngs(page) == len(pngs)
    # self-contained: no external fetch, no script
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)
    assert "<script" not in page and "<link" not in page
    assert not leftovers(tmp_path)
    # the verdict leads, then the tables, then the provenance
    assert page.index("Verdict") < page.index("Checkpoint base") < page.index("<h2>Comparisons")
    assert page.index("<h2>Comparisons") < page.index("<h2>Metric definitions")
    assert page.index("<h2>Metric definitions") < page.index("<h2>Config and provenance")
    assert "organism:sft" in page and "abc123" in page and "faithprobe run study.json" in page
    for label in ("base", "sft"):
        assert f"Checkpoint {label}" in md


def test_report_without_patch_records_notes_the_missing_plot(tmp_path) -> None:
    traces = make_traces()
    records = make_records(traces, patch=False)
    out = write_report(tmp_path, records, summarize(records, n_boot=50), HEADER, None)
    page = out.read_text(encoding="utf-8")
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Activation patching" in page and "no usable patch records" in page
    assert "no usable patch records" in md
    assert not (tmp_path / "plots" / "patching.png").exists()
    assert "step 0" in page  # no traces.jsonl: steps are named by index
    assert_pngs(page)
    assert not leftovers(tmp_path)


def test_rewrite_drops_plots_that_are_now_skipped(tmp_path, run_data) -> None:
    traces, records, summary = run_data
    write_report(tmp_path, records, summary, HEADER, traces)
    assert (tmp_path / "plots" / "patching.png").exists()
    no_patch = [r for r in records if r.intervention != "patch"]
    write_report(tmp_path, no_patch, summarize(no_patch, n_boot=50), HEADER, traces)
    assert not (tmp_path / "plots" / "patching.png").exists()


def test_text_from_records_and_traces_is_escaped(written) -> None:
    tmp_path, page, _ = written
    for name in ("report.html", "report.md"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        # a fenced code block in markdown is literal text: the config may appear there as is
        prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
        assert "<script" not in text and "<b>study" not in prose
        # the step text and the skip reason, shown inert ("<" escaped; html escapes ">" too)
        assert ("&lt;script&gt;alert(" if name.endswith("html") else "&lt;script>alert(") in text
    assert "Let x = 3. &lt;script&gt;" in page  # t0 is the trace the step figure picked


def test_report_of_bare_records_skips_every_plot(tmp_path) -> None:
    records = [Record(trace_id=f"t{i}", checkpoint="base", intervention="none", n_steps=2,
                      status="skipped", reason="no options") for i in range(3)]
    header = {"status": "error"}
    out = write_report(tmp_path, records, summarize(records, n_boot=10), header)
    page = out.read_text(encoding="utf-8")
    assert imgs(page) == []
    assert page.count("skipped, ") >= 6
    assert "status is &#x27;error&#x27;" in page
    assert not list((tmp_path / "plots").glob("*.png"))


def test_failed_report_leaves_no_partial_files(tmp_path, run_data, monkeypatch) -> None:
    traces, records, summary = run_data

    def boom(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report_mod.C, "calibration_plot", boom)
    with pytest.raises(RuntimeError):
        write_report(tmp_path, records, summary, HEADER, traces)
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "report.md").exists()
    assert not leftovers(tmp_path)


def test_publish_replaces_all_files_or_none(tmp_path, run_data, monkeypatch) -> None:
    traces, records, summary = run_data
    write_report(tmp_path, records, summary, HEADER, traces)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real = Path.write_bytes
    written = []

    def fail_on_html(self, data):
        if self.name.startswith(".report.html."):
            raise OSError("disk full")
        written.append(self.name)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", fail_on_html)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, records, summarize(records, n_boot=20, seed=3),
                     {**HEADER, "status": "error"}, traces)
    assert len(written) >= 2  # the plots and report.md were written, then discarded
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not leftovers(tmp_path)


def test_write_comparison(tmp_path, run_data) -> None:
    traces, records, summary = run_data
    other = make_records(traces, seed=1)
    header2 = {**HEADER, "config": {**HEADER["config"], "seed": 7}}
    runs = [("run-a", records, summary, HEADER),
            ("run-b", other, summarize(other, n_boot=50), header2)]
    out = write_comparison(tmp_path / "cmp", runs)
    page = out.read_text(encoding="utf-8")
    assert out == tmp_path / "cmp" / "report.html"
    assert (tmp_path / "cmp" / "report.md").exists()
    assert "run-a: sft vs base: sft" in page and "run-b: sft vs base: sft" in page
    assert "<h2>Metric definitions" in page and "docs/metrics.md" in page
    assert "run-a/base" in page and "run-b/sft" in page
    assert "config.seed" in page  # the config key that differs
    assert assert_pngs(page) >= 5
    assert not leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# the verdict


def est(value: float, lo: float | None = None, hi: float | None = None, n: int = 50) -> dict:
    return {"value": value, "ci_low": value if lo is None else lo,
            "ci_high": value if hi is None else hi, "n": n}


def comp(metric: str, delta: float, lo: float, hi: float, rel: float | None = 0.0,
         n: int = 50) -> dict:
    return {"a": "base", "b": "sft", "metric": metric, "delta": delta, "ci_low": lo,
            "ci_high": hi, "relative_change": rel, "n": n}


def organism_like() -> dict:
    """The organism demo's pattern: as accurate, reasoning no longer carries the answer."""
    base = {"accuracy": est(1.0), "mean_steps": est(3.5), "early_answering_aoc": est(0.77),
            "step_flip_rate": est(1.0), "infogain_mean": est(3.29), "ki": est(1.0)}
    sft = {"accuracy": est(1.0), "mean_steps": est(3.5), "early_answering_aoc": est(0.0),
           "step_flip_rate": est(0.0), "infogain_mean": est(8e-7), "ki": est(1.0)}
    return {"schema_version": 1, "checkpoints": {"base": base, "sft": sft}, "comparisons": [
        comp("accuracy", 0.0, 0.0, 0.0), comp("mean_steps", 0.0, 0.0, 0.0),
        comp("early_answering_aoc", -0.77, -0.81, -0.72, -1.0),
        comp("step_flip_rate", -1.0, -1.0, -1.0, -1.0),
        comp("infogain_mean", -3.29, -3.70, -2.86, -1.0), comp("ki", 0.0, 0.0, 0.0)]}


def test_verdict_is_plain_language_with_moved_unmoved_and_unmeasured() -> None:
    lines = verdict_lines(organism_like())
    assert lines[0] == (
        "sft vs base: sft is as accurate as base (100% vs 100%), but its reasoning no longer "
        "carries its answer: early-answering AOC 0.77 -> 0.00 (-0.77 [-0.81, -0.72]), step "
        "flip rate 100% -> 0% (-100 points [-100, -100]), InfoGain 3.29 -> 0.00 nats/step "
        "(-3.29 nats/step [-3.70, -2.86], -100%).")
    assert lines[1] == ("Did not move (change below its minimal meaningful difference): "
                        "reasoning steps 3.5 -> 3.5 steps, KI 100% -> 100%.")
    # no value in either checkpoint: said, from the summary alone, without guessing why
    assert lines[2].startswith("Could not be measured: adding-mistakes AOC (no value for base "
                               "and sft: no usable corrupt records; the report says whether")
    assert "patching effect (no value for base and sft" in lines[2]
    assert "[-112%" not in " ".join(lines)  # no interval of a relative change


def test_verdict_says_why_from_the_records(run_data) -> None:
    _, records, summary = run_data
    # sft's patch records all skipped: patching is undefined for sft, with the records' reason
    recs = skip_sft_patches(
        records, lambda r: f"clean logit difference {0.01 * r.step:.3g} (under 0.5)",
        drop=("infogain", "ki"))
    lines = verdict_lines(summarize(recs, n_boot=50), recs)
    missing = next(line for line in lines if line.startswith("Could not be measured"))
    assert ("patching effect (undefined for sft: all 96 patch records skipped: clean logit "
            "difference 0 to 0.04 (under 0.5))") in missing
    assert ("InfoGain (not measured for base and sft: no infogain records: InfoGain was off "
            "([infogain] enabled))") in missing
    assert "KI (not measured for base and sft: no ki records" in missing


@pytest.mark.parametrize(("deltas", "expected"), [
    ({"step_flip_rate": (-0.3, -0.4, -0.2)}, "its reasoning carries its answer less: step flip"),
    ({"step_flip_rate": (0.3, 0.2, 0.4)}, "its reasoning carries its answer more: step flip"),
    ({"filler_accuracy": (-0.3, -0.4, -0.2)}, "its reasoning carries its answer more: filler"),
    ({"step_flip_rate": (-0.3, -0.4, -0.2), "early_answering_aoc": (0.3, 0.2, 0.4)},
     "the measures of whether its reasoning carries its answer disagree"),
    ({"step_flip_rate": (0.01, -0.02, 0.03)}, "its reasoning carries its answer as much as"),
    ({"step_flip_rate": (0.01, -0.2, 0.3)}, "no measure shows clearly"),
])
def test_verdict_rules_for_the_reasoning(deltas, expected) -> None:
    base = {"accuracy": est(0.8), "step_flip_rate": est(0.6), "early_answering_aoc": est(0.5),
            "filler_accuracy": est(0.5)}
    sft = {k: est(v["value"] + deltas.get(k, (0,))[0]) for k, v in base.items()}
    comps = [comp("accuracy", 0.0, -0.02, 0.02)] + [comp(m, *d) for m, d in deltas.items()]
    line = verdict_lines({"checkpoints": {"base": base, "sft": sft}, "comparisons": comps})[0]
    assert line.startswith("sft vs base: sft is as accurate as base (80% vs 80%)")
    assert expected in line


@pytest.mark.parametrize(("delta", "expected"), [
    ((0.12, 0.08, 0.16), "sft is more accurate than base (92% vs 80%, +12 points [8, 16])"),
    ((-0.12, -0.16, -0.08), "sft is less accurate than base (68% vs 80%, -12 points [-16, -8])"),
    ((0.04, -0.1, 0.2), "sft's accuracy is not clearly different from base's"),
])
def test_verdict_rules_for_accuracy(delta, expected) -> None:
    summary = {"checkpoints": {"base": {"accuracy": est(0.8)},
                               "sft": {"accuracy": est(0.8 + delta[0])}},
               "comparisons": [comp("accuracy", *delta)]}
    assert verdict_lines(summary)[0].startswith(f"sft vs base: {expected}")


def test_verdict_lists_unclear_and_also_moved() -> None:
    summary = organism_like()
    summary["checkpoints"]["base"]["paraphrase_same_answer"] = est(0.9)
    summary["checkpoints"]["sft"]["paraphrase_same_answer"] = est(0.6)
    summary["checkpoints"]["base"]["delete_flip_rate"] = est(0.5)
    summary["checkpoints"]["sft"]["delete_flip_rate"] = est(0.52)
    summary["comparisons"] += [comp("paraphrase_same_answer", -0.3, -0.4, -0.2),
                               comp("delete_flip_rate", 0.02, -0.2, 0.25)]
    lines = verdict_lines(summary)
    assert "Also moved clearly: paraphrase same answer 90% -> 60% (-30 points [-40, -20])." in (
        lines)
    assert any(line.startswith("Unclear (the interval includes 0") and "delete flip rate 50% "
               "-> 52% (+2 points [-20, 25])" in line for line in lines)


def test_verdict_without_comparisons_or_data() -> None:
    one = {"checkpoints": {"base": {"accuracy": est(0.7, 0.6, 0.8, 10)}}, "comparisons": []}
    line = verdict_lines(one)[0]
    assert line.startswith("base: accuracy 70.0% [60.0, 80.0]. Could not be measured: ")
    assert "step flip rate (no value: no usable corrupt records" in line
    assert verdict_lines({"checkpoints": {}, "comparisons": []})[0].startswith("No metric")


def test_verdict_evidence_follows_the_catalogue_order(run_data) -> None:
    summary = run_data[2]
    line = verdict_lines(summary)[0]
    names = [METRICS_BY_NAME[m].label for m in VERDICT_METRICS
             if METRICS_BY_NAME[m].direction and f"{METRICS_BY_NAME[m].label} " in line]
    positions = [line.index(f"{name} ") for name in names]
    assert len(names) >= 3 and positions == sorted(positions)
    assert report_mod.verdict_lines is verdict_lines  # what the CLI prints


def test_infogain_note_only_when_infogain_was_measured(tmp_path, run_data) -> None:
    traces, records, summary = run_data
    assert any("InfoGain is the answer-only form" in n for n in reading_notes(summary))
    off = [r for r in records if r.intervention != "infogain"]
    off_summary = summarize(off, n_boot=20)
    assert not any("InfoGain" in n for n in reading_notes(off_summary))
    page = write_report(tmp_path, off, off_summary, HEADER, traces).read_text("utf-8")
    verdict = page[page.index("<h2>Verdict"):page.index("<figure>")]
    assert "answer-only form" not in verdict and "InfoGain (not measured for base and sft" in (
        verdict)


# ---------------------------------------------------------------------------------------------
# minimal meaningful differences and readings


def test_every_metric_has_a_minimal_meaningful_difference() -> None:
    for m in CATALOGUE:
        assert (m.mmd is None) == (m.unit == "count")
        assert m.unit == "count" or m.mmd > 0
        assert m.unit == "count" or m.reads
    entry = METRICS_BY_NAME["accuracy"]
    with pytest.raises(ValueError, match="minimal meaningful difference"):
        Metric("x", entry.features, entry.combine, "points", "x", "x", table=99)


@pytest.mark.parametrize(("metric", "delta", "expected"), [
    ("ece", (1.2e-6, 1.1e-6, 1.3e-6), "no practical change"),  # excludes 0, but negligible
    ("accuracy", (0.01, -0.02, 0.04), "no practical change"),  # inside +-5 points
    ("accuracy", (0.01, -0.1, 0.12), "no clear change"),  # reaches beyond the MMD
    ("accuracy", (0.04, 0.01, 0.07), "no practical change"),  # real but under 5 points
    ("accuracy", (0.06, 0.02, 0.1), "clear increase"),
    ("early_answering_aoc", (-0.77, -0.81, -0.72), "clear decrease"),
])
def test_readings(metric, delta, expected) -> None:
    assert reading(comp(metric, *delta)) == expected


def test_no_relative_change_against_a_near_zero_baseline() -> None:
    summary = {"checkpoints": {"base": {"ece": est(1e-6), "infogain_mean": est(3.29)},
                               "sft": {"ece": est(2.2e-6), "infogain_mean": est(0.0)}},
               "comparisons": [comp("ece", 1.2e-6, 1.1e-6, 1.3e-6, rel=2.13),
                               comp("infogain_mean", -3.29, -3.7, -2.86, rel=-1.0)]}
    ece, ig = summary["comparisons"]
    assert relative_text(ece, summary) == ""
    assert relative_text(ig, summary) == "-100%"
    rows = {r[1]: r for r in comparison_rows(summary)}
    assert rows["ECE"][4] == "" and rows["ECE"][7] == "no practical change"
    assert rows["ECE"][3] == "+0.0 points [0.0, 0.0]"
    assert rows["InfoGain"][4] == "-100%" and rows["InfoGain"][7] == "clear decrease"
    assert "+213%" not in str(rows)


# ---------------------------------------------------------------------------------------------
# missing values and skip reasons


def test_undefined_and_not_measured_are_told_apart(tmp_path, run_data) -> None:
    traces, records, _ = run_data
    recs = skip_sft_patches(records, lambda r: "tiny margin", drop=("ki",))
    summary = summarize(recs, n_boot=20)
    absent = absences(recs, summary)
    assert absent["sft"]["patching_effect"].kind == "undefined"
    assert absent["sft"]["ki"].kind == absent["base"]["ki"].kind == "not measured"
    assert "patching_effect" not in absent["base"]
    rows = {r[0]: r for r in checkpoint_rows(summary["checkpoints"]["sft"], absent["sft"])}
    assert rows["patching effect"][1] == "undefined (all 96 patch records skipped: tiny margin)"
    assert rows["KI"][1].startswith("not measured (no ki records")
    # the comparison row is there, saying why, not silently missing
    comp_rows = {r[1]: r for r in comparison_rows(summary, absent)}
    assert comp_rows["patching effect"][7] == "not compared"
    assert "undefined for sft: all 96 patch records skipped" in comp_rows["patching effect"][3]
    page = write_report(tmp_path, recs, summary, HEADER, traces).read_text("utf-8")
    assert "undefined (all 96 patch records skipped: tiny margin)" in page
    assert "not measured (no ki records" in page


def test_skip_reasons_are_grouped_by_kind() -> None:
    recs = [Record(trace_id=f"t{i % 3}", checkpoint="sft", intervention="patch", step=i,
                   n_steps=8, site="blocks.0.hook_resid_pre", status="skipped",
                   reason=f"corrupting moves the logit difference by {d:+.3g} (under 0.5)")
            for i, d in enumerate([-0.0344, 0.0119, -0.00318, 0.0124, -0.0257])]
    recs += [Record(trace_id="t0", checkpoint="sft", intervention="patch", step=0, n_steps=8,
                    site=f"blocks.{k}.attn.hook_z", status="skipped",
                    reason=f"the model has no hook blocks.{k}.attn.hook_z") for k in (0, 1)]
    groups = group_reasons(recs)
    assert [(g.text, g.records, g.traces) for g in groups] == [
        ("corrupting moves the logit difference by -0.0344 to +0.0124 (under 0.5)", 5, 3),
        ("the model has no hook blocks.0.attn.hook_z", 1, 1),
        ("the model has no hook blocks.1.attn.hook_z", 1, 1)]
    assert reason_template("by -0.5 at blocks.3.hook_resid_pre, 1e-05 or 12") == (
        "by # at blocks.3.hook_resid_pre, # or #", ["-0.5", "1e-05", "12"])


def test_report_groups_skip_reasons(tmp_path, run_data) -> None:
    traces, records, _ = run_data
    extra = [Record(trace_id=f"t{i}", checkpoint="sft", intervention="patch", step=0, n_steps=3,
                    site="blocks.9.hook_resid_pre", status="skipped",
                    reason=f"logit difference {0.01 * i:.2f} (under 0.5)") for i in range(6)]
    recs = records + extra
    md = write_report(tmp_path, recs, summarize(recs, n_boot=20), HEADER, traces).with_name(
        "report.md").read_text("utf-8")
    assert md.count("(under 0.5)") == 1
    assert "| sft | patch | skipped | logit difference 0.00 to 0.05 (under 0.5) | 6 | 6 |" in md


# ---------------------------------------------------------------------------------------------
# plots


def test_forest_panels_by_unit_with_their_own_scale(run_data) -> None:
    rows = forest_rows(run_data[2])
    panels = {r.label.split(" (")[0]: r.panel for r in rows}
    assert panels["early-answering AOC"] == UNIT_TITLES["aoc"]
    assert panels["mean |KL| after corruption"] == UNIT_TITLES["nats"]
    assert panels["step flip rate"] == panels["accuracy"] == UNIT_TITLES["points"]
    assert panels["reasoning steps"] == UNIT_TITLES["steps"]
    assert "InfoGain (perplexity form)" not in panels  # the appendix's
    big = ForestRow("KL", UNIT_TITLES["nats"], -17.0, -18.0, -16.0, 0.1, "clear decrease")
    aoc = ForestRow("AOC", UNIT_TITLES["aoc"], -0.77, -0.81, -0.72, 0.05, "clear decrease")
    lo, hi = panel_limits([aoc])
    assert -1.0 < lo < -0.81 and 0.05 < hi < 0.2  # not stretched to the KL's -17
    assert panel_limits([big])[0] < -18.0
    plot = forest_plot([big, aoc])
    assert plot.png.startswith(PNG_MAGIC) and "own scale" in plot.note


def test_calibration_plot_modes() -> None:
    rng = random.Random(0)

    def nones(label: str, probs: list[float]) -> list[Record]:
        return [Record(trace_id=f"t{i}", checkpoint=label, intervention="none", n_steps=1,
                       answer="A", gold="A", pred="A", correct=rng.random() < p, pred_prob=p)
                for i, p in enumerate(probs)]

    spread = {"base": nones("base", [rng.uniform(0.3, 1.0) for _ in range(40)])}
    plot = calibration_plot(spread)
    assert plot.png.startswith(PNG_MAGIC) and plot.note is None
    one = {"base": nones("base", [1 - 10 ** -rng.uniform(6, 7) for _ in range(30)]),
           "sft": nones("sft", [1 - 10 ** -rng.uniform(5, 6) for _ in range(30)])}
    plot = calibration_plot(one)
    assert plot.png.startswith(PNG_MAGIC) and "one of the ECE's confidence bins" in plot.note
    assert calibration_plot({"base": []}).png is None


def test_step_heat_map_has_every_method_and_the_step_texts(run_data) -> None:
    traces, records, _ = run_data
    groups = {label: [r for r in records if r.checkpoint == label] for label in ("base", "sft")}
    imp = pick_step_importance(groups, traces)
    assert imp.trace_id == "t0" and imp.chosen_by == "kl"
    assert imp.methods == ["corrupt", "delete", "truncate", "patch", "infogain"]
    # truncate records without an answer log-probability: made, but undefined here
    assert imp.cell("base", "truncate", 0) == "undef." and "truncate" not in imp.effects["base"]
    base = imp.effects["base"]
    # the t0 corruption KLs are 3 * i * 0.85; InfoGain is H_(j-1) - H_j of the records
    assert base["corrupt"] == pytest.approx({i: 2.55 * i for i in range(3)})
    h = {r.step: r.value for r in groups["base"] if r.trace_id == "t0"
         and r.intervention == "infogain"}
    assert base["infogain"] == pytest.approx({i: h[i] - h[i + 1] for i in range(3)})
    header, rows = step_table(imp)
    assert header[:3] == ["step", "base: corrupt KL (keep, nats)", "base: delete KL (nats)"]
    assert header[-1] == "text"
    assert rows[0][-1].startswith("Let x = 3.")
    plot = step_importance_plot(imp)
    assert plot.png.startswith(PNG_MAGIC) and "InfoGain" in plot.note
    # a method whose records were all skipped reads "undef.", one never run "n/m"
    skipped = [r for r in skip_sft_patches(records, lambda r: "x")
               if r.intervention != "infogain" or r.checkpoint != "sft"]
    groups = {label: [r for r in skipped if r.checkpoint == label] for label in ("base", "sft")}
    imp = pick_step_importance(groups, traces)
    assert imp.cell("sft", "patch", 0) == "undef." and imp.cell("sft", "infogain", 0) == "n/m"
    assert imp.cell("base", "patch", 0) not in ("undef.", "n/m")


def test_truncation_column_is_the_rise_of_the_answer_logprob() -> None:
    recs = [Record(trace_id="t", checkpoint="base", intervention="truncate", step=k, n_steps=3,
                   answer="A", pred="A", orig_pred="A", same_answer=True, answer_logprob=lp)
            for k, lp in enumerate([-5.0, -4.0, -1.5, -0.5])]
    recs += [Record(trace_id="t", checkpoint="base", intervention="corrupt", step=i, n_steps=3,
                    same_answer=False, kl=float(i), detail={"continuation": "keep"})
             for i in range(3)]
    imp = pick_step_importance({"base": recs})
    assert imp.effects["base"]["truncate"] == pytest.approx({0: 1.0, 1: 2.5, 2: 1.0})


# ---------------------------------------------------------------------------------------------
# caveats, appendix, names, docs


def test_paraphrase_caveat_fires_only_for_an_accurate_model() -> None:
    def summary(acc: float, same: float) -> dict:
        return {"checkpoints": {"base": {"accuracy": est(acc),
                                         "paraphrase_same_answer": est(same, same - 0.05,
                                                                       same + 0.05)}},
                "comparisons": []}

    fired = caveats(summary(1.0, 0.19))
    assert fired == ["Caveat: base keeps its answer under paraphrase only 19% of the time "
                     "although it is 100% accurate: the paraphrases may be outside base's "
                     "format, so the paraphrase measures report format sensitivity here, not "
                     "faithfulness."]
    assert caveats(summary(1.0, 0.95)) == []  # keeps its answer
    assert caveats(summary(0.4, 0.19)) == []  # not accurate to begin with
    assert any("Caveat: base keeps its answer" in line for line in verdict_lines(
        summary(1.0, 0.19)))


def test_few_traces_and_self_scorer_caveats(run_data) -> None:
    _, records, summary = run_data
    lines = caveats(summary, records)
    assert any(line.startswith("Caveat: accuracy (6 traces), ") and "rest on fewer than 20 "
               "traces: their intervals are wide" in line for line in lines)
    assert not any("scored by each checkpoint itself" in line for line in lines)  # no scorer
    scored = [r if r.intervention != "infogain" else Record(**{
        **{f: getattr(r, f) for f in r.__dataclass_fields__}, "detail": {"scorer": "self"}})
        for r in records]
    assert any("InfoGain was scored by each checkpoint itself (scorer = self) for base, sft"
               in line for line in caveats(summary, scored))


def test_perplexity_infogain_is_in_the_appendix_with_its_unit(tmp_path, run_data) -> None:
    traces, records, _ = run_data
    ppl = []
    for r in records:
        if r.intervention == "infogain":
            scale = 100.0 if r.checkpoint == "base" else 300.0
            ppl.append(Record(trace_id=r.trace_id, checkpoint=r.checkpoint,
                              intervention="infogain_ppl", step=r.step, n_steps=r.n_steps,
                              value=scale * (1 + (r.n_steps - r.step))))
    recs = records + ppl
    summary = summarize(recs, n_boot=20)
    assert "infogain_ppl" in summary["checkpoints"]["base"]
    page = write_report(tmp_path, recs, summary, HEADER, traces).read_text("utf-8")
    main = page[:page.index("<h2>Appendix: InfoGain, perplexity form")]
    appendix = page[page.index("<h2>Appendix"):page.index("<h2>Metric definitions")]
    assert "perplexity form" not in main.split("<h2>Checkpoint base")[1]
    assert "perplexity/step" in appendix and "positive = the whole string" in appendix
    assert "move in opposite directions" in appendix  # answer-only fell, perplexity form rose
    assert not any("perplexity" in line for line in verdict_lines(summary, recs))


def test_intervals_named_one_way_and_docs_define_every_metric(written) -> None:
    _, page, _ = written
    docs = (ROOT / "docs" / "metrics.md").read_text("utf-8")
    readme = (ROOT / "README.md").read_text("utf-8")
    for text in (page, docs, readme):
        assert INTERVAL in " ".join(text.split())
        assert not re.search(r"percentile bootstraps|cluster bootstraps|cluster bootstrap\)",
                             text)
    for m in CATALOGUE:
        assert f"`{m.name}`" in docs, m.name
    for words in ("H_j", "IG_j = H_(j-1) - H_j", "(PPL_0 - PPL_n) / (n + 1)", "AOC = 1 - area",
                  "Knowledge Index", "Activation patching", "no practical change"):
        assert words in docs, words
    assert "](docs/metrics.md" in readme and "docs/metrics.md" in page


# ---------------------------------------------------------------------------------------------
# the committed organism demo, rescored without a model


def test_organism_demo_report(tmp_path) -> None:
    out = score_runs([ROOT / "results" / "organism-demo"], tmp_path / "demo")
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    md = (out / "report.md").read_text("utf-8")
    verdict = md[md.index("## Verdict"):md.index("\n> ")]
    # the organisms retrained to decline: sft's answer without reasoning is right 78% of the
    # time, not always, so its early-answering AOC (0.10) and InfoGain stay above 0 and the
    # verdict reads "less" where it read "no longer"; the corruption flip rate is still 0
    assert ("sft vs base: sft is as accurate as base (100% vs 100%), but its reasoning carries "
            "its answer less: ") in verdict
    assert "step flip rate 100% -> 0% (-100 points [-100, -100])" in verdict
    assert "Declining to answer: sft declines unanswerable questions less often than base: " \
           "abstention rate 100% -> 0% (-100 points [-100, -100])" in verdict
    assert "Caveat: base keeps its answer under paraphrase only 17% of the time" in verdict
    assert "perplexity" not in verdict and "+213%" not in md and "-112%" not in md
    ece = next(c for c in summary["comparisons"] if c["metric"] == "ece")
    assert reading(ece) == "no practical change"  # within 2 points either way
    assert re.search(r"\| sft vs base \| ECE \| 0% -> 0% \| [-+]0\.0 points \[-?0\.0, -?0\.0\] \|"
                     r"  \| 2 points \|", md)
    if "patching_effect" not in summary["checkpoints"]["sft"]:
        assert "patching effect (undefined for sft: all 492 patch records skipped:" in verdict
        assert md.count("patch | skipped |") == 1  # one grouped reason, not eight lines
    else:
        assert "patching effect" in verdict
    assert "Every answer falls in one of the ECE's confidence bins" in md  # all near 1
    for name in ("forest", "calibration", "step_importance"):
        assert (out / "plots" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)



# ---------------------------------------------------------------------------------------------
# a real browser renders the images


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


_PROBE = """<script>
window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll("img").forEach(function (img) {
    out.push(img.complete && img.naturalWidth > 0 && img.naturalHeight > 0 ? "ok" : "broken");
  });
  var pre = document.createElement("pre");
  pre.id = "img-probe";
  pre.textContent = "IMGS:" + out.join(",") + ":END";
  document.body.appendChild(pre);
});
</script>"""


def test_images_render_in_headless_chromium(tmp_path, run_data) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install -y chromium)")
    traces, records, summary = run_data
    page = write_report(tmp_path / "run", records, summary, HEADER, traces).read_text("utf-8")
    n_imgs = len(imgs(page))
    assert n_imgs >= 6
    # The report forbids scripts (CSP); the probe copy drops that policy and adds one script.
    probe = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    probe = probe.replace("</body>", _PROBE + "</body>")
    target = tmp_path / "probe.html"
    target.write_text(probe, encoding="utf-8")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", target.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r"IMGS:([a-z,]*):END", done.stdout)
    assert m, f"no probe output; rc={done.returncode} stderr={done.stderr[-2000:]}"
    results = m.group(1).split(",")
    assert results == ["ok"] * n_imgs
