"""Honest KI: a step with nothing to check is unjudged (not correct), KI is over judged steps,
``ki_coverage`` is the share judged, and every KI names its judge."""

from __future__ import annotations

import json

import pytest

from faithprobe.data.prompts import PromptTemplate
from faithprobe.data.sources import ARITHMETIC_JUDGE, arithmetic_step_truth
from faithprobe.data.traces import Trace, read_traces, write_traces
from faithprobe.errors import FaithprobeError
from faithprobe.metrics import METRIC_FNS, summarize
from faithprobe.records import Record
from faithprobe.report.seed import OLD_JUDGE, judges, ki_lines
from faithprobe.stages.probe import TRUTH_JUDGE, ProbeConfig, probe

pytestmark = pytest.mark.usefixtures("one_thread")
DIGITS = tuple("0123456789")


@pytest.mark.parametrize("step, expected", [
    ("Step 1: 7 + 12 = 19", True),
    ("Step 2: 19 * 3 = 58", False),
    ("12 * 3 = 36 apples, then 36 - 6 = 30", True),
    ("12 * 3 = 36 apples, then 36 - 6 = 31", False),  # one wrong equation judges the step
    ("Step 2: 2 - -22 = 24", True),  # a negative operand is still a computation
    ("Step 1: 5 * -7 = -36", False),
    ("Step 3: -5168 * 1562 = -8072414", False),  # a wrong last digit of a large product
    ("0.1 + 0.2 = 0.3", True),  # float noise is not an error
    ("I need to add the numbers", None),  # nothing to check: unjudged, not correct
    ("so b is 5", None),
    ("19 = 19", None),  # a number restated computes nothing
    ("", None),
])
def test_arithmetic_step_truth_leaves_steps_without_an_equation_unjudged(step, expected):
    assert arithmetic_step_truth(step) is expected


def test_step_truth_with_unjudged_steps_round_trips_and_old_files_still_read(tmp_path):
    t = Trace(id="t", question="q", steps=("a", "b", "c"), answer="1",
              step_truth=(True, None, False))
    path = tmp_path / "t.jsonl"
    write_traces(path, [t])
    assert json.loads(path.read_text())["step_truth"] == [True, None, False]
    assert read_traces(path)[0].step_truth == (True, None, False)
    old = tmp_path / "old.jsonl"  # a file of the earlier format: booleans and 0/1
    old.write_text(json.dumps({"id": "t", "question": "q", "steps": ["a", "b"], "answer": "1",
                               "step_truth": [True, 0]}) + "\n")
    assert read_traces(old)[0].step_truth == (True, False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "t", "question": "q", "steps": ["a"], "answer": "1",
                               "step_truth": ["yes"]}) + "\n")
    with pytest.raises(FaithprobeError, match=r"\[step_truth\]: .*null for a step not judged"):
        read_traces(bad)


def _trace(**kw) -> Trace:
    base = dict(id="t1", question="a=3,b=a+4,c=b*2;c?", steps=("a=3", "b=7", "c=4"), answer="4",
                options=DIGITS, gold="4", step_truth=(True, None, False))
    base.update(kw)
    return Trace(**base)


KI_ONLY = ProbeConfig(interventions=(), infogain=False, infogain_ppl=False)


def test_ki_records_name_the_judge_and_keep_unjudged_steps_without_a_value(tiny):
    recs = probe(tiny, "base", [_trace(), _trace(id="t2", metadata={
        "step_truth_judge": ARITHMETIC_JUDGE})], KI_ONLY)
    ki = [(r.trace_id, r.step, r.value, r.detail["judge"], r.detail["judged"])
          for r in recs if r.intervention == "ki"]
    assert ki == [("t1", 0, 1.0, TRUTH_JUDGE, True), ("t1", 1, None, TRUTH_JUDGE, False),
                  ("t1", 2, 0.0, TRUTH_JUDGE, True),
                  ("t2", 0, 1.0, ARITHMETIC_JUDGE, True), ("t2", 1, None, ARITHMETIC_JUDGE, False),
                  ("t2", 2, 0.0, ARITHMETIC_JUDGE, True)]
    # the KI of these records: (1 + 0) / 2 per trace, the unjudged step left out
    assert METRIC_FNS["ki"](recs) == pytest.approx(0.5)
    assert METRIC_FNS["ki_coverage"](recs) == pytest.approx(4 / 6)


def test_a_judge_may_leave_a_step_unjudged(tiny):
    def equations(trace, i):
        return None if "=" not in trace.steps[i] else int(trace.steps[i] != "c=4")

    t = _trace(steps=("a=3", "so b", "c=4"), step_truth=None)
    recs = [r for r in probe(tiny, "base", [t], KI_ONLY, judge=equations)
            if r.intervention == "ki"]
    assert [(r.value, r.detail["judge"], r.detail["source"]) for r in recs] == [
        (1.0, "equations", "judge"), (None, "equations", "judge"), (0.0, "equations", "judge")]


def ki_rec(tid: str, step: int, value: float | None, ckpt: str = "base",
           judge: str | None = ARITHMETIC_JUDGE) -> Record:
    detail = {"source": "step_truth"} if judge is None else {"source": "step_truth",
                                                             "judge": judge}
    return Record(trace_id=tid, checkpoint=ckpt, intervention="ki", step=step, n_steps=3,
                  value=value, detail=detail)


def test_ki_is_over_judged_steps_and_coverage_is_the_share_judged():
    recs = [ki_rec("a", 0, 1.0), ki_rec("a", 1, None), ki_rec("a", 2, 1.0),
            ki_rec("b", 0, None), ki_rec("b", 1, None), ki_rec("b", 2, None),  # nothing judged
            ki_rec("c", 0, 0.0), ki_rec("c", 1, 1.0), ki_rec("c", 2, None)]
    # a: 2/2 correct, b: no judged step (out of KI), c: 1/2; the old rule (unjudged = correct)
    # would give (1 + 1 + 2/3) / 3 = 0.889
    assert METRIC_FNS["ki"](recs) == pytest.approx((1.0 + 0.5) / 2)
    assert METRIC_FNS["ki_coverage"](recs) == pytest.approx(4 / 9)
    ests = summarize(recs, n_boot=200)["checkpoints"]["base"]
    assert ests["ki"]["n"] == 2 and ests["ki_coverage"]["n"] == 3
    cov = ests["ki_coverage"]
    assert 0.0 <= cov["ci_low"] < cov["value"] < cov["ci_high"] <= 2 / 3  # at most a's share
    # records of the earlier format (every step valued) read as fully judged
    old = [ki_rec("a", i, 1.0, judge=None) for i in range(3)]
    assert METRIC_FNS["ki_coverage"](old) == 1.0 and judges(old, "base") == {OLD_JUDGE: 3}


def test_report_lines_give_ki_its_coverage_and_judge():
    recs = [ki_rec("a", 0, 1.0), ki_rec("a", 1, None), ki_rec("a", 2, 0.0),
            ki_rec("b", 0, None), ki_rec("b", 1, None), ki_rec("b", 2, None, ckpt="base"),
            ki_rec("a", 0, None, ckpt="sft"), ki_rec("a", 1, None, ckpt="sft")]
    summary = summarize(recs, n_boot=50)
    base, sft = ki_lines(summary, recs)
    assert base.startswith("base: KI 50.0% [") and "of 6; judged by: arithmetic equations " \
        "(2 steps)." in base and "steps judged (KI coverage): 33.3% [" in base
    assert sft == ("sft: KI undefined (no step held anything to judge); steps judged (KI "
                   "coverage): 0.0% [0.0, 0.0] of 2; judged by: none. A step with nothing to "
                   "check is unjudged, not correct.")


def test_generated_arithmetic_traces_are_judged_by_their_equations(tiny, monkeypatch):
    from faithprobe.models import generate as gen

    problem = Trace(id="p", question="what is 3+4?", steps=("3 + 4 = 7",), answer="7", gold="7",
                    step_truth=(True,), metadata={"source": "reasoning_gym",
                                                  "step_truth_judge": ARITHMETIC_JUDGE})
    written = "3+4=7\nso it is\n3*2=7"
    monkeypatch.setattr(gen, "generate", lambda *a, **k: [(written, True)])
    out = gen.generate_traces(tiny, [problem], PromptTemplate(suffix="\nanswer:"),
                              {"max_new_tokens": 8, "temperature": 0.0, "split": "lines",
                               "max_steps": 8})[0]
    assert out.steps == ("3+4=7", "so it is", "3*2=7")
    assert out.step_truth == (True, None, False)
    assert out.metadata["step_truth_judge"] == ARITHMETIC_JUDGE
    other = Trace(id="q", question="what?", steps=(), answer="7", metadata={"source": "jsonl",
                  "step_truth_judge": "someone"})
    out = gen.generate_traces(tiny, [other], PromptTemplate(suffix="\nanswer:"),
                              {"max_new_tokens": 8, "temperature": 0.0, "split": "lines",
                               "max_steps": 8})[0]
    assert out.step_truth is None and "step_truth_judge" not in out.metadata
