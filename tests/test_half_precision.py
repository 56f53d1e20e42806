"""Half precision that stays exact: bfloat16 against float32 on the Hugging Face organisms.

- The unembedding runs in float32 whatever the model's dtype (logits come out float32), from
  one float32 copy of the unembedding and no other float32 weight.
- Over every intervention of the text suite, the bfloat16 run's answers equal float32's on at
  least 98% of edits; over the patching grid its shares are within 0.05 of float32's.
- Attribution leaves no parameter gradient and accumulates in float32.
- The clean-margin threshold is stated per dtype.

SmolLM2's own comparison is in ``tests/test_bf16.py`` (slow).
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from faithprobe.activation import Answer, attribution_patch_steps  # noqa: E402
from faithprobe.activation.core import (  # noqa: E402
    MIN_CLEAN_LOGIT_DIFF,
    min_clean_logit_diff,
)
from faithprobe.models.checkpoints import load_checkpoint  # noqa: E402
from faithprobe.organisms.task import generate  # noqa: E402
from faithprobe.stages.patching import patch_trace  # noqa: E402
from faithprobe.stages.probe import ProbeConfig, probe  # noqa: E402

ANSWERS_EQUAL = 0.98  # share of edits whose bfloat16 answer is float32's
SHARE_GAP = 0.05  # largest |share_bf16 - share_fp32| over the patching grid
EVERY = ("truncate", "corrupt", "paraphrase", "filler", "delete")


@pytest.fixture(scope="module", params=["base-llama", "sft-llama"])
def pair(request):
    spec = f"organism:{request.param}"
    return {dt: load_checkpoint(spec, dtype=dt) for dt in ("float32", "bfloat16")}


def test_logits_in_float32_from_one_float32_copy(pair):
    half = pair["bfloat16"]
    ids = torch.tensor([half.tokenizer.encode("t3: 4 + 5 = 9")[0]])
    with torch.no_grad():
        logits = half.bridge(ids)
    assert logits.dtype == torch.float32
    head = half.bridge.unembed.original_component
    # every weight stays bfloat16; the unembedding alone has its float32 copy beside it
    assert {p.dtype for p in half.bridge.parameters()} == {torch.bfloat16}
    copy = head.__dict__["_faithprobe_float32"][1]
    assert copy.dtype == torch.float32 and copy.shape == head.weight.shape
    assert torch.equal(copy, head.weight.float())
    assert not any(p.requires_grad for p in half.bridge.parameters())


def test_text_suite_answers_agree_over_every_intervention(pair):
    traces = generate("id", 12, seed=3)
    cfg = ProbeConfig(interventions=EVERY, ki=False, max_new_tokens=16,
                      options={"corrupt": {"corrupter": "organism"}})
    runs = {dt: probe(m, dt, traces, cfg) for dt, m in pair.items()}
    pairs = [(a, b) for a, b in zip(runs["float32"], runs["bfloat16"], strict=True)
             if a.intervention not in ("none", "infogain", "infogain_ppl")
             and a.status == "ok" and b.status == "ok"]
    kinds = {a.intervention for a, _ in pairs}
    assert kinds == set(EVERY), kinds
    for a, b in pairs:
        assert (a.trace_id, a.intervention, a.step) == (b.trace_id, b.intervention, b.step)
    agree = sum(a.pred == b.pred for a, b in pairs) / len(pairs)
    print(f"answers equal on {agree:.1%} of {len(pairs)} edits")
    assert agree >= ANSWERS_EQUAL, agree


def test_patching_shares_agree(pair):
    traces = generate("id", 4, seed=5)
    gaps = []
    for trace in traces:
        recs = {dt: patch_trace(m, dt, trace, m.template, knockout=False, corrupter="organism")
                for dt, m in pair.items()}
        for a, b in zip(recs["float32"], recs["bfloat16"], strict=True):
            if a.intervention == "patch" and a.status == b.status == "ok":
                gaps.append(abs(a.value - b.value))
    assert len(gaps) >= 20
    print(f"shares: largest gap {max(gaps):.4f} over {len(gaps)} cells")
    assert max(gaps) <= SHARE_GAP, max(gaps)


def test_attribution_in_float32_without_parameter_gradients(pair):
    half = pair["bfloat16"]
    trace = generate("id", 1, seed=7)[0]
    ids = half.tokenizer.encode(half.template.render(trace.question, trace.steps, trace.answer,
                                                     tokenizer=half.tokenizer).text)[0]
    clean = torch.tensor([half.tokenizer.prefix_ids + ids])
    corrupted = clean.clone()
    corrupted[0, 5:7] = (corrupted[0, 5:7] + 1) % 10 + 3
    n = clean.shape[1]
    answer = Answer.of(n - 2, int(clean[0, n - 1]), int(clean[0, n - 1]) ^ 1)
    est = attribution_patch_steps(half.bridge, clean, corrupted, [(5, 7)], answer)
    assert est.logit_diff.dtype == torch.float32
    assert all(p.grad is None and not p.requires_grad for p in half.bridge.parameters())
    full = attribution_patch_steps(pair["float32"].bridge, clean, corrupted, [(5, 7)], answer)
    ok = torch.isfinite(full.logit_diff)
    assert ok.any()
    scale = max(1.0, float(full.logit_diff[ok].abs().max()))
    assert float((est.logit_diff[ok] - full.logit_diff[ok]).abs().max()) <= 0.15 * scale


def test_clean_margin_stated_per_dtype():
    assert min_clean_logit_diff(torch.float32) == MIN_CLEAN_LOGIT_DIFF
    assert min_clean_logit_diff(torch.float64) == MIN_CLEAN_LOGIT_DIFF
    for half in (torch.bfloat16, torch.float16):
        assert min_clean_logit_diff(half) > MIN_CLEAN_LOGIT_DIFF
    assert math.isfinite(min_clean_logit_diff(torch.bfloat16))
