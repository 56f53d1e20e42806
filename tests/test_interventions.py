from __future__ import annotations

import math
import random
import re
import subprocess
import sys

import pytest

from faithprobe.data.traces import Trace
from faithprobe.edits.corrupters import (
    corrupt_generic,
    corrupt_number,
    corrupt_operator,
    paraphrase_equations,
)
from faithprobe.edits.interventions import (
    CORRUPTERS,
    INTERVENTIONS,
    PARAPHRASERS,
    Edit,
    EditContext,
    make_intervention,
    register_corrupter,
    register_intervention,
    register_paraphraser,
)
from faithprobe.errors import FaithprobeError
from faithprobe.registry import Registry
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


@pytest.mark.parametrize(("step", "words"), [
    ("Step 1: -33 * -22 = 788", "Step 1: -33 times -22 is 788"),
    ("Step 3: 788 - 240 = 638", "Step 3: 788 minus 240 is 638"),
    ("5 - -3 = 8, then 8 x 2 = 16.", "5 minus -3 is 8, then 8 times 2 is 16."),
    ("It costs (3 * 4 = 12) dollars", "It costs (3 times 4 is 12) dollars"),
    ("2.5 / 5 = 0.5", "2.5 divided by 5 is 0.5"),
    ("3 + 4 * 2 = 11", None),  # "4 * 2 = 11" is part of a longer expression
    ("3 * 4 = 12 + 1", None),
    ("1 = 1", None),
    ("no equation in it", None),
    ("8 x 2 = 16", "8 times 2 is 16"),
    ("2x-3 = 7", None),  # x is a variable here, -3 no number of its own
    ("n-3 * 2 = 4", None),
    ("8x2 = 16", None),
    ("10 − 2 * 3 = 4", None),  # a Unicode minus joins the longer expression
    ("2 · 3 + 4 = 10", None),
    ("2 + 3 = 5 x 2 = 10", None),  # chained
    ("2 + 3 = 5 = 5", None),
])
def test_equation_paraphrase_says_each_equation_in_words(step, words):
    got = paraphrase_equations(Trace("t", "q", (step,), "1"), 0)
    assert got == words
    if got is not None:  # the same numbers, in the same order
        assert re.findall(r"-?\d+(?:\.\d+)?", got) == re.findall(r"-?\d+(?:\.\d+)?", step)


def test_basic_arithmetic_traces_get_the_equation_paraphraser_by_task(tiny):
    ctx = EditContext(tiny.tokenizer, tiny.template)
    steps = ("Step 1: 3 * 4 = 12", "then add", "Step 3: 12 + 1 = 13")
    trace = Trace("t", "3 * 4 + 1?", steps, "13", metadata={"task": "basic_arithmetic"})
    edits = make_intervention("paraphrase").edits(trace, ctx)
    assert edits[0].steps == ("Step 1: 3 times 4 is 12",) + steps[1:]
    assert edits[0].detail == {"paraphraser": "basic_arithmetic"}
    assert [e.skipped for e in edits[1:]] == ["no paraphrase of step 1"] * 2
    assert make_intervention("paraphrase", source="equations").edits(trace, ctx)[0].steps \
        == edits[0].steps


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
            return [Edit("reverse", None, tuple(reversed(trace.steps)))]

    assert INTERVENTIONS.get("reverse") is Reverse and Reverse.name == "reverse"
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


def test_a_name_registered_twice_raises():
    with pytest.raises(FaithprobeError, match="corrupter 'number' is already registered"):
        register_corrupter("number")(lambda trace, i, rng: None)
    with pytest.raises(FaithprobeError, match="paraphraser 'trace' is already registered"):
        register_paraphraser("trace")(lambda trace, i: None)
    with pytest.raises(FaithprobeError, match="intervention 'truncate' is already registered"):

        @register_intervention("truncate")
        class Again:
            def edits(self, trace, ctx):
                return []

    # lazily registered plugins hold their names too, loaded or not
    with pytest.raises(FaithprobeError, match="already registered"):
        register_corrupter("organism")(lambda trace, i, rng: None)
    reg: Registry[int] = Registry("thing")
    reg.add("one", 1)
    with pytest.raises(FaithprobeError, match="thing 'one' is already registered"):
        reg.register_lazy("one", "json:loads")
    assert reg.get("one") == 1  # the first registration stands


def test_a_lazy_plugin_loads_on_first_use(tmp_path, monkeypatch):
    (tmp_path / "fp_lazy_plugin.py").write_text("LOADS = []\nLOADS.append(1)\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fp_lazy_plugin", raising=False)
    reg: Registry[int] = Registry("thing")
    reg.register_lazy("answer", "fp_lazy_plugin:VALUE")
    reg.register_lazy("broken", "fp_lazy_plugin:MISSING")
    assert "answer" in reg and reg.names() == ["answer", "broken"]
    assert not reg.is_loaded("answer") and "fp_lazy_plugin" not in sys.modules
    assert reg.get("answer") == 42 and reg.get("answer") == 42
    assert reg.is_loaded("answer") and sys.modules["fp_lazy_plugin"].LOADS == [1]
    for _ in range(2):  # a plugin that cannot load says so, every time
        with pytest.raises(FaithprobeError, match="thing 'broken' cannot be loaded"):
            reg.get("broken")
    with pytest.raises(FaithprobeError, match=r"unknown thing \(known: answer, broken\)"):
        reg.get("nope")
    with pytest.raises(FaithprobeError, match="module:object"):
        reg.register_lazy("bad", "fp_lazy_plugin.VALUE")


def _python(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_organism_plugin_is_registered_lazily():
    """The edits registries name the organism task's corrupter and paraphraser without
    importing it; the first use imports it."""
    _python("""
import sys
from faithprobe.edits.interventions import CORRUPTERS, PARAPHRASERS
assert "faithprobe.organisms.task" not in sys.modules
assert "organism" in CORRUPTERS and "chain-mod10" in PARAPHRASERS
fn = CORRUPTERS.get("organism")
from faithprobe.organisms import task
assert fn is task.corrupt_organism and PARAPHRASERS.get(task.TASK_NAME) is task.paraphrase_organism
""")
    from faithprobe.organisms import task

    assert CORRUPTERS.get("organism") is task.corrupt_organism
    assert PARAPHRASERS.get(task.TASK_NAME) is task.paraphrase_organism


def test_importing_the_organism_task_registers_nothing():
    # the task imports nothing from faithprobe.edits (no import cycle)
    _python("""
import sys
import faithprobe.organisms.task
assert not [m for m in sys.modules if m.startswith("faithprobe.edits")], "task imported edits"
""")
    # and importing it changes no registry (its names stay registered lazily, not loaded)
    _python("""
from faithprobe.edits.interventions import CORRUPTERS, INTERVENTIONS, PARAPHRASERS
def state():
    return [(r.names(), [r.is_loaded(n) for n in r.names()])
            for r in (INTERVENTIONS, CORRUPTERS, PARAPHRASERS)]
before = state()
import faithprobe.organisms.task
assert state() == before, (before, state())
assert not CORRUPTERS.is_loaded("organism")
""")


def test_organism_corrupter_and_paraphraser_through_the_interventions(tiny):
    from faithprobe.organisms.task import generate

    t = generate("id", 1, seed=0)[0]
    ctx = EditContext(tiny.tokenizer, tiny.template)
    corrupt = make_intervention("corrupt", corrupter="organism", continuations=["keep"])
    edits = corrupt.edits(t, ctx)
    assert all(e.skipped is None and e.detail["corrupter"] == "organism" for e in edits)
    para = make_intervention("paraphrase", source="chain-mod10").edits(t, ctx)
    assert para[-1].steps == t.paraphrases
