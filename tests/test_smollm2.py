"""SmolLM2-135M-Instruct end to end on CPU (slow: run with `python -m pytest -m slow`)."""

from __future__ import annotations

import json

import pytest

from faithprobe.cli import main
from faithprobe.records import read_records

pytestmark = pytest.mark.slow


def test_smollm2_study_on_two_problems(tmp_path, smollm2_tokenizer):
    cfg = tmp_path / "smol.toml"
    cfg.write_text("""
seed = 0
[checkpoints]
base = "smollm2"
[data]
source = "reasoning_gym"
task = "basic_arithmetic"
count = 2
seed = 0
traces = "generate"
[data.task_options]
min_terms = 2
max_terms = 2
min_digits = 1
max_digits = 1
[generation]
max_new_tokens = 48
[probe]
interventions = ["truncate", "corrupt", "filler", "delete"]
max_new_tokens = 16
[probe.corrupt]
corrupter = "number"
continuations = ["keep"]
[patching]
max_traces = 1
components = ["resid_pre"]
knockout = false
[metrics]
n_boot = 50
""")
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    header = json.loads((out / "header.json").read_text())
    assert header["status"] == "success"
    generated = (out / "traces-base.jsonl").read_text().splitlines()
    assert len(generated) == 2
    records = read_records(out / "records.jsonl")
    kinds = {r.intervention for r in records}
    assert "none" in kinds and {r.trace_id for r in records} == {
        json.loads(line)["id"] for line in generated}
    summary = json.loads((out / "summary.json").read_text())
    assert "accuracy" in summary["checkpoints"]["base"] or \
        summary["checkpoints"]["base"]["no_answer_count"]["value"] > 0
    assert (out / "report.html").is_file()
