"""bfloat16 that can be trusted: SmolLM2-135M on CPU in bf16 against float32 (slow).

- The text suite's answers agree with float32 on at least 95% of edits.
- The fast patching path equals the reference loop within the documented half-precision
  tolerance (5e-2, relative to the largest reference logit difference, at least 1), and the
  self-check keeps the fast path.
- Metrics read float32 log-probabilities whatever the model's dtype.
- The oracle of both is float32: bf16 answer log-probabilities are within 0.5 nats of float32's
  (measured: at most 0.15), and bf16 fast patching is within 0.15, relative to the largest
  logit difference, of float32's reference loop (measured: 0.07; the whole model runs in bf16,
  so this is wider than the fast path's own tolerance against the bf16 reference).
"""

from __future__ import annotations

import pytest
import torch

from faithprobe.activation import Answer, check_fast_path, patch_steps
from faithprobe.data.prompts import PromptTemplate
from faithprobe.data.traces import Trace
from faithprobe.models.checkpoints import load_checkpoint
from faithprobe.stages.probe import ProbeConfig, probe

pytestmark = pytest.mark.slow

HALF_TOLERANCE = 5e-2  # faithprobe.activation.core.tolerance for bf16 / fp16
LOGPROB_VS_FLOAT32 = 0.5  # nats: a bf16 answer log-probability against float32's
PATCHING_VS_FLOAT32 = 0.15  # relative to the largest float32 reference logit difference
TRACES = [
    Trace("a", "What is 23 + 48 - 15?", ("23 + 48 = 71.", "71 - 15 = 56."), "56"),
    Trace("b", "What is 7 * 6 + 9?", ("7 * 6 = 42.", "42 + 9 = 51."), "51"),
    Trace("c", "What is 90 - 35 + 12?", ("90 - 35 = 55.", "55 + 12 = 67."), "67"),
]


@pytest.fixture(scope="module")
def models(smollm2_tokenizer):
    torch.set_num_threads(2)
    return {dt: load_checkpoint("smollm2", dtype=dt) for dt in ("float32", "bfloat16")}


def test_text_suite_answers_agree_with_float32(models):
    template = PromptTemplate(suffix=" Therefore, the answer is", answer_sep=" ")
    cfg = ProbeConfig(interventions=("truncate", "corrupt", "delete", "filler"),
                      infogain=False, infogain_ppl=False, ki=False, max_new_tokens=8,
                      options={"corrupt": {"corrupter": "number", "continuations": ["keep"]}})
    runs = {dt: probe(m, dt, TRACES, cfg, template=template) for dt, m in models.items()}
    assert next(models["bfloat16"].bridge.parameters()).dtype == torch.bfloat16
    pairs = [(a, b) for a, b in zip(runs["float32"], runs["bfloat16"])
             if a.intervention != "none" and a.status == "ok" and b.status == "ok"]
    assert len(pairs) >= 15
    for a, b in pairs:
        assert (a.trace_id, a.intervention, a.step) == (b.trace_id, b.intervention, b.step)
        assert isinstance(b.answer_logprob, float)
        assert abs(a.answer_logprob - b.answer_logprob) <= LOGPROB_VS_FLOAT32, (a, b)
    agree = sum(a.pred == b.pred for a, b in pairs) / len(pairs)
    assert agree >= 0.95, agree


def test_fast_patching_equals_reference_in_bf16(models):
    ckpt = models["bfloat16"]
    tok = ckpt.tokenizer
    text = "Q: 23 + 48 - 15? 23 + 48 = 71. 71 - 15 = 56. Therefore, the answer is"
    bad = "Q: 23 + 48 - 15? 23 + 48 = 74. 74 - 15 = 59. Therefore, the answer is"
    clean, corrupted = tok.encode(text)[0], tok.encode(bad)[0]
    assert len(clean) == len(corrupted)
    diff = [i for i, (x, y) in enumerate(zip(clean, corrupted)) if x != y]
    spans = [(diff[0], diff[0] + 1), (diff[-1], diff[-1] + 1)]
    five, nine = tok.encode(" 5")[0][-1], tok.encode(" 9")[0][-1]
    answer = Answer.of(len(clean) - 1, five, nine)
    fast_path = check_fast_path(ckpt.bridge)
    assert fast_path.method == "fast", fast_path.reason
    layers = [0, 10, 20, 29]
    inputs = (torch.tensor([clean]), torch.tensor([corrupted]), spans, answer)
    ref = patch_steps(ckpt.bridge, *inputs, layers=layers, method="reference")
    fast = patch_steps(ckpt.bridge, *inputs, layers=layers, method="fast")
    scale = max(1.0, float(ref.logit_diff.abs().max()))
    assert float((fast.logit_diff - ref.logit_diff).abs().max()) <= HALF_TOLERANCE * scale
    assert fast.logit_diff.dtype == torch.float32  # metrics read float32 from bf16 logits
    # the oracle computed another way: the float32 model's reference loop
    ref32 = patch_steps(models["float32"].bridge, *inputs, layers=layers, method="reference")
    scale32 = max(1.0, float(ref32.logit_diff.abs().max()))
    assert float((fast.logit_diff - ref32.logit_diff).abs().max()) <= PATCHING_VS_FLOAT32 * scale32
