from __future__ import annotations

import math
import random

import pytest

from faithprobe.data.traces import Trace
from faithprobe.edits.interventions import (
    CORRUPTERS,
    EditContext,
    corrupt_generic,
    corrupt_number,
    corrupt_operator,
    make_intervention,
    register_intervention,
)
from faithprobe.errors import FaithprobeError
from faithprobe.stages.probe import ProbeConfig, probe

DIGITS = tuple("0123456789")


def _trace(**kw):
    base = dict(id="t1", question="a=3,b=a+4,c=b*2;c?", steps=("a=3", "b=7", "c=4"), answer="4",
                options=DIGITS, gold="4", step_truth=(True, True, False),
                paraphrases=("a is 3", "b is 7", "c is 4"))
    base.update(kw)
    return Trace(**base)


def test_truncate_and_delete_edits(tiny):
    ctx = EditContext(tiny.tokenizer, tiny.template)
    t = _trace()
    trunc = make_intervention("truncate").edits(t, ctx)
    assert [e.steps for e in trunc] == [(), ("a=3",), ("a=3", "b=7"), ("a=3", "b=7", "c=4")]
    dele = make_intervention("delete").edits(t, ctx)
    assert [e.steps for e in dele] == [("b=7", "c=4"), ("a=3", "c=4"), ("a=3", "b=7")]


def test_corrupt_keeps_token_length_and_both_continuations(tiny):
    ctx = EditContext(tiny.tokenizer, tiny.template, seed=3)
    t = _trace()
    edits = make_intervention("corrupt").edits(t, ctx)
    assert {e.detail["continuation"] for e in edits} == {"keep", "regenerate"}
    for e in edits:
        assert e.skipped is None
        new = e.detail["edited_step"]
        assert new != t.steps[e.step] and len(new) == len(t.steps[e.step])
        if e.detail["continuation"] == "keep":
            assert len(e.steps) == 3 and ctx.step_tokens(t, e.steps) == ctx.step_tokens(t, t.steps)
        else:
            assert e.regenerate and e.steps == t.steps[: e.step] + (new,)
    again = make_intervention("corrupt").edits(t, ctx)
    assert [e.steps for e in again] == [e.steps for e in edits]  # seeded: same edit every run


def test_corrupter_without_a_number_is_skipped_with_reason(tiny):
    ctx = EditContext(tiny.tokenizer, tiny.template)
    t = _trace(steps=("so then", "b=7", "c=4"), paraphrases=None, step_truth=None)
    edits = make_intervention("corrupt", corrupter="number").edits(t, ctx)
    first = [e for e in edits if e.step == 0]
    assert first and all(e.skipped and "cannot corrupt" in e.skipped for e in first)


def test_corrupters():
    rng = random.Random(0)
    t = _trace(steps=("x = 12 + 30 = 42", "the cat sat"), paraphrases=None, step_truth=None)
    new = corrupt_number(t, 0, rng)
    assert new.startswith("x = 12 + 30 = ") and new != t.steps[0] and len(new) == len(t.steps[0])
    assert corrupt_operator(t, 0, rng) == "x = 12 - 30 = 42"
    assert corrupt_number(t, 1, rng) is None
    swapped = corrupt_generic(t, 1, rng)
    assert sorted(swapped.split()) == sorted(t.steps[1].split()) and swapped != t.steps[1]
    assert "off_by_one" in CORRUPTERS


def test_filler_matches_token_length(tiny):
    ctx = EditContext(tiny.tokenizer, tiny.template)
    t = _trace()
    edits = make_intervention("filler", scope=["all", "step"]).edits(t, ctx)
    whole = [e for e in edits if e.step is None][0]
    assert whole.detail["tokens"] == whole.detail["orig_tokens"]
    assert set(whole.steps[0]) <= set(" .")
    for e in edits:
        if e.step is not None:
            assert ctx.step_tokens(t, e.steps)[e.step] == ctx.step_tokens(t, t.steps)[e.step]


def test_paraphrase_from_trace_field_and_missing_source(tiny):
    ctx = EditContext(tiny.tokenizer, tiny.template)
    edits = make_intervention("paraphrase").edits(_trace(), ctx)
    assert edits[1].steps == ("a is 3", "b is 7", "c=4")
    none = make_intervention("paraphrase").edits(_trace(paraphrases=None), ctx)
    assert all(e.skipped for e in none)


def test_unknown_intervention_and_option():
    with pytest.raises(FaithprobeError, match="unknown intervention"):
        make_intervention("explode")
    with pytest.raises(FaithprobeError, match="bad options"):
        make_intervention("truncate", depth=3)
    with pytest.raises(FaithprobeError, match="unknown corrupter"):
        make_intervention("corrupt", corrupter="nope")


def test_user_registered_intervention(tiny):
    @register_intervention("reverse")
    class Reverse:
        def edits(self, trace, ctx):
            from faithprobe.edits.interventions import Edit

            return [Edit("reverse", None, tuple(reversed(trace.steps)))]

    recs = probe(tiny, "base", [_trace()], ProbeConfig(interventions=("reverse",),
                                                       infogain=False, infogain_ppl=False))
    assert [r.intervention for r in recs] == ["none", "reverse", "ki", "ki", "ki"]


def test_probe_records_are_consistent(tiny):
    t = _trace()
    recs = probe(tiny, "base", [t, _trace(id="t0", steps=(), paraphrases=None,
                                          step_truth=None)], ProbeConfig(max_new_tokens=6))
    none = {r.trace_id: r for r in recs if r.intervention == "none"}
    for r in recs:
        assert r.status in ("ok", "skipped"), r
        if r.intervention in ("truncate", "corrupt", "delete", "paraphrase", "filler") and \
                r.status == "ok":
            assert r.orig_pred == none[r.trace_id].pred
            assert r.same_answer == (r.pred == r.orig_pred)
            assert r.correct == (r.pred == "4")
            assert r.kl >= 0 and math.isfinite(r.logit_diff)
            assert (r.logit_diff == 0) == r.same_answer
    # the full truncation is the unedited trace: same numbers
    full = [r for r in recs if r.intervention == "truncate" and r.trace_id == "t1" and r.step == 3]
    assert abs(full[0].answer_logprob - none["t1"].answer_logprob) < 1e-9 and full[0].kl < 1e-9
    # a trace with no steps gets the answer-only measurements and no per-step ones
    empty = [r for r in recs if r.trace_id == "t0"]
    assert {r.intervention for r in empty} == {"none", "truncate", "infogain", "infogain_ppl"}
    # KI exact from step_truth, InfoGain entropies from the truncations
    ki = [r.value for r in recs if r.intervention == "ki"]
    assert ki == [1.0, 1.0, 0.0]
    ig = {r.step: r.value for r in recs if r.intervention == "infogain" and r.trace_id == "t1"}
    trunc = {r.step: r for r in recs if r.intervention == "truncate" and r.trace_id == "t1"}
    for j, h in ig.items():
        assert abs(h - (-trunc[j].answer_logprob)) < 1e-9  # one answer token: H = -log p


def test_infogain_with_fixed_scorer_names_it(tiny, tiny_tokenizer):
    from conftest import TINY_TEMPLATE, tiny_config

    from faithprobe.models.checkpoints import Checkpoint, build_native

    cfg = tiny_config(tiny_tokenizer.vocab_size, seed=7)
    scorer = Checkpoint(build_native(cfg), tiny_tokenizer, "scorer-7", TINY_TEMPLATE, cfg)
    recs = probe(tiny, "base", [_trace()], ProbeConfig(interventions=()), scorer=scorer)
    ig = [r for r in recs if r.intervention == "infogain"]
    assert ig and all(r.detail["scorer"] == "scorer-7" for r in ig)
    own = probe(tiny, "base", [_trace()], ProbeConfig(interventions=()))
    own_ig = [r for r in own if r.intervention == "infogain"]
    assert all(r.detail["scorer"] == "self" for r in own_ig)
    assert any(abs(a.value - b.value) > 1e-6 for a, b in zip(ig, own_ig))


def test_ki_through_a_judge(tiny):
    calls = []

    def judge(trace, i):
        calls.append(i)
        return int("7" not in trace.steps[i])

    t = _trace(step_truth=None)
    recs = probe(tiny, "base", [t], ProbeConfig(interventions=(), infogain=False,
                                                infogain_ppl=False), judge=judge)
    ki = [(r.step, r.value, r.detail["source"]) for r in recs if r.intervention == "ki"]
    assert ki == [(0, 1.0, "judge"), (1, 0.0, "judge"), (2, 1.0, "judge")] and calls == [0, 1, 2]
    with pytest.raises(FaithprobeError, match="not 0 or 1"):
        probe(tiny, "base", [t], ProbeConfig(interventions=(), infogain=False,
                                             infogain_ppl=False), judge=lambda tr, i: 0.5)
