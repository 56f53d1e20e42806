"""The run report and the comparison report, over hand-built records (no model)."""

from __future__ import annotations

import base64
import binascii
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from faithprobe.data.traces import Trace
from faithprobe.metrics import METRICS_BY_NAME, VERDICT_METRICS, summarize
from faithprobe.records import Record
from faithprobe.report import document as report_mod
from faithprobe.report.document import verdict_lines, write_comparison, write_report

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


# ---------------------------------------------------------------------------------------------


def test_write_report_writes_self_contained_html(tmp_path, run_data) -> None:
    traces, records, summary = run_data
    out = write_report(tmp_path, records, summary, HEADER, traces)
    assert out == tmp_path / "report.html"
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    page = out.read_text(encoding="utf-8")
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == sorted(f"{n}.png" for n in ("forest", "early_answering", "adding_mistakes",
                                               "infogain", "patching", "step_importance",
                                               "coverage"))
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
    assert page.index("<h2>Comparisons") < page.index("<h2>Config and provenance")
    assert "organism:sft" in page and "abc123" in page and "faithprobe run study.json" in page
    for label in ("base", "sft"):
        assert f"Checkpoint {label}" in md


def test_verdict_mentions_labels_and_intervals(run_data) -> None:
    _, _, summary = run_data
    lines = verdict_lines(summary)
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("sft vs base: accuracy ")
    assert re.search(r"accuracy [+-]\d+\.\d points \[-?\d+\.\d, -?\d+\.\d\]", line)
    assert re.search(r"InfoGain [+-]\d+% \[-?\d+%, -?\d+%\]", line)
    assert "step flip rate" in line and "early-answering AOC" in line


def test_verdict_formats_points_relative_and_no_clear_change() -> None:
    summary = {
        "schema_version": 1,
        "checkpoints": {"base": {"infogain_mean": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6,
                                                   "n": 6}}},
        "comparisons": [
            {"a": "base", "b": "sft", "metric": "accuracy", "delta": 0.12, "ci_low": 0.08,
             "ci_high": 0.16, "relative_change": 0.2, "n": 50},
            {"a": "base", "b": "sft", "metric": "step_flip_rate", "delta": -0.61,
             "ci_low": -0.68, "ci_high": -0.54, "relative_change": -0.8, "n": 50},
            {"a": "base", "b": "sft", "metric": "early_answering_aoc", "delta": 0.01,
             "ci_low": -0.02, "ci_high": 0.04, "relative_change": 0.05, "n": 50},
            {"a": "base", "b": "sft", "metric": "infogain_mean", "delta": -0.205,
             "ci_low": -0.25, "ci_high": -0.15, "relative_change": -0.41, "n": 50},
        ],
    }
    assert verdict_lines(summary) == [
        "sft vs base: accuracy +12.0 points [8.0, 16.0]; "
        "early-answering AOC +0.010 [-0.020, 0.040], no clear change; "
        "step flip rate -61.0 points [-68.0, -54.0]; InfoGain -41% [-50%, -30%]."]


def test_verdict_without_comparisons_or_data() -> None:
    one = {"checkpoints": {"base": {"accuracy": {"value": 0.7, "ci_low": 0.6, "ci_high": 0.8,
                                                 "n": 10}}}, "comparisons": []}
    assert verdict_lines(one) == ["base: accuracy 70.0% [60.0, 80.0]."]
    assert verdict_lines({"checkpoints": {}, "comparisons": []})[0].startswith("No metric")


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


def test_text_from_records_and_traces_is_escaped(tmp_path, run_data) -> None:
    traces, records, summary = run_data
    write_report(tmp_path, records, summary, HEADER, traces)
    for name in ("report.html", "report.md"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        # a fenced code block in markdown is literal text: the config may appear there as is
        prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
        assert "<script" not in text and "<b>study" not in prose
        assert "&lt;script&gt;alert(" in text  # the step text and the skip reason, shown inert
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
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

    monkeypatch.setattr(report_mod.P, "coverage_plot", boom)
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


def test_verdict_follows_the_catalogue_order(run_data) -> None:
    summary = run_data[2]
    line = verdict_lines(summary)[0]
    names = [METRICS_BY_NAME[m].label for m in VERDICT_METRICS
             if any(c["metric"] == m for c in summary["comparisons"])]
    positions = [line.index(f"{name} ") for name in names]
    assert len(names) >= 5 and positions == sorted(positions)


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
    assert "run-a: sft vs base:" in page and "run-b: sft vs base:" in page
    assert "run-a/base" in page and "run-b/sft" in page
    assert "config.seed" in page  # the config key that differs
    assert assert_pngs(page) >= 5
    assert not leftovers(tmp_path)


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
