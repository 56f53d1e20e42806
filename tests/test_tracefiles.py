"""Step texts of a run folder per checkpoint: the report and load_run read each checkpoint's
own trace file where it wrote its reasoning."""

from __future__ import annotations

import pytest
from studies import ONLY_TRUNCATION

import faithprobe as fp
from faithprobe.cli import main
from faithprobe.data.traces import read_traces
from faithprobe.run.tracefiles import generated_traces_file, run_traces

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    cfg = tmp / "gen.toml"
    cfg.write_text("""
[checkpoints]
base = "organism:base"
sft = "organism:sft"
[data]
source = "organism"
count = 4
traces = "generate"
[generation]
max_new_tokens = 24
split = "lines"
[probe]
interventions = ["corrupt", "delete"]
max_new_tokens = 24
[probe.corrupt]
corrupter = "organism"
[infogain]
enabled = false
[patching]
enabled = false
[metrics]
n_boot = 20
""", encoding="utf-8")
    out = tmp / "run"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    return out


def test_generated_traces_give_the_report_its_step_texts(generated_run):
    traces = run_traces(generated_run, ["base", "sft"])
    assert set(traces) == {"base", "sft"}
    assert traces["base"] == read_traces(generated_traces_file(generated_run, "base"))
    report = (generated_run / "report.md").read_text()
    assert "step text unavailable" not in report
    section = report.split("## Step importance")[1].split("\n## ")[0]
    assert "step text from base's trace" in section or "own trace" in section
    tid = section.split("Trace ")[1].split(",")[0]
    (trace,) = [t for t in traces["base"] if t.id == tid]
    texts = [line.split("|")[-2].strip() for line in section.splitlines()
             if line.startswith("| ") and not line.startswith("| step")]
    assert texts == list(trace.steps)


def test_load_run_joins_records_to_step_texts(generated_run):
    run = fp.load_run(generated_run)
    frame = run.traces
    assert list(frame.columns) == ["checkpoint", "trace_id", "step", "text", "n_steps"]
    own = run_traces(generated_run, ["base", "sft"])
    for label in ("base", "sft"):
        rows = frame[frame.checkpoint == label]
        assert len(rows) == sum(t.n_steps for t in own[label])
        t = own[label][0]
        got = rows[rows.trace_id == t.id].sort_values("step").text.tolist()
        assert got == list(t.steps)
    joined = run.records.merge(frame, on=["checkpoint", "trace_id", "step"], how="inner")
    assert len(joined) > 0 and joined.text.notna().all()


def test_a_run_on_a_trace_file_shares_it(tmp_path):
    from faithprobe.organisms.task import generate as organism_traces

    traces = organism_traces("id", 3, seed=4)
    fp.write_traces(tmp_path / "traces.jsonl", traces)
    got = run_traces(tmp_path, ["base", "sft"])
    assert got["base"] == got["sft"] == traces
    assert run_traces(tmp_path / "nowhere", ["base"]) == {}


def test_truncated_generations_are_said_and_can_be_left_out(tmp_path):
    """A generation cut by max_new_tokens is flagged in its unedited record and counted in the
    header's warnings; with drop_truncated it is not probed (the saved file keeps it)."""
    import json

    base = """
[checkpoints]
base = "organism:base"
[data]
source = "organism"
count = 8
traces = "generate"
[generation]
max_new_tokens = 18
split = "lines"
""" + ONLY_TRUNCATION + """[metrics]
n_boot = 10
"""
    for drop in (False, True):
        cfg = tmp_path / f"t{drop}.toml"
        cfg.write_text(base.replace("split = \"lines\"",
                                    f"split = \"lines\"\ndrop_truncated = {str(drop).lower()}"))
        out = tmp_path / f"run{drop}"
        assert main(["run", str(cfg), "--out", str(out), "--quiet"]) in (0,)
        saved = read_traces(out / "traces-base.jsonl")
        cut = {t.id for t in saved if t.metadata.get("generation_stopped") is False}
        assert cut and len(cut) < len(saved), "18 new tokens finish 3-step chains only"
        header = json.loads((out / "header.json").read_text())
        assert header["warnings"]["truncated_generation.base"]["count"] == len(cut)
        recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        probed = {r["trace_id"] for r in recs}
        if drop:
            assert probed == {t.id for t in saved} - cut
        else:
            flagged = {r["trace_id"] for r in recs if r["intervention"] == "none"
                       and r["detail"].get("generation_truncated")}
            assert flagged == cut
