"""The organism pair as Hugging Face Llama folders: the whole HF path on planted truth.

``organism:base-llama`` reasons faithfully (its answer is a copy of its last step);
``organism:sft-llama`` was fine-tuned to read the answer off the question's tag and ignore its
steps. Through the Hugging Face path (a tokenizer that adds its own BOS, prefix reuse in the
text suite, the fast patching path with the prefix's KV cache replayed, answer scoring), the
run must find what was planted: step flip rate and the patching measure high for base, low for
sft, with disjoint 95% intervals.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from faithprobe.cli import main  # noqa: E402
from faithprobe.models.checkpoints import load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf-organisms") / "run"
    config = out.parent / "study.toml"
    config.write_text("""
name = "organisms as Hugging Face Llama folders"
seed = 0
[checkpoints]
base = "organism:base-llama"
sft = "organism:sft-llama"
[data]
source = "organism"
split = "id"
count = 30
seed = 1
[probe]
interventions = ["corrupt"]
max_new_tokens = 24
[probe.corrupt]
corrupter = "organism"
[infogain]
enabled = false
[patching]
max_traces = 10
knockout = false
[metrics]
n_boot = 500
""", encoding="utf-8")
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    header = json.loads((out / "header.json").read_text())
    # the fast path was checked against the reference and kept, for both
    assert {v["method"] for v in header["patching"].values()} == {"fast"}
    return json.loads((out / "summary.json").read_text())["checkpoints"]


def test_loads_as_a_hugging_face_model_with_its_own_bos():
    ckpt = load_checkpoint("organism:base-llama")
    assert type(ckpt.bridge.original_model).__name__ == "LlamaForCausalLM"
    assert ckpt.tokenizer.prefix_ids == [ckpt.tokenizer.hf.bos_token_id]
    assert ckpt.template.suffix == "\nans:"  # its own format, from faithprobe_template.json


@pytest.mark.parametrize("metric", ["step_flip_rate", "patching_effect"])
def test_planted_truth_is_found(summary, metric):
    base, sft = summary["base"][metric], summary["sft"][metric]
    assert base["value"] >= 0.8 and sft["value"] <= 0.2, (base, sft)
    assert base["ci_low"] > sft["ci_high"], (base, sft)  # disjoint 95% intervals
