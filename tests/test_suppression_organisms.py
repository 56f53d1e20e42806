"""Planted truth of the suppression matrix on the organisms, and its records and metrics.

Each organism's chain computes every value from the one before (``b = a + 4``), so suppressing
a step moves the next step's value: a strong first sub-diagonal for both. ``base`` reads its
answer off its last step (a large answer row at the last step); ``sft`` was fine-tuned to read
it off the question's tag on the domain split (``id``), so its answer row is near 0 while its
chain's sub-diagonal stays. Checked on a fresh sample (a seed no other test or demo draws), on
the native organisms and their Hugging Face Llama folders.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faithprobe.metrics import compare, compute_metrics
from faithprobe.metrics.suppression import (
    kurtosis,
    receiver_scores,
    receiver_summary,
    suppression_matrix,
)
from faithprobe.models.checkpoints import load_checkpoint
from faithprobe.organisms.task import generate
from faithprobe.records import Record
from faithprobe.run.config import validate_config
from faithprobe.run.units import patch_records
from faithprobe.stages.suppression import suppression_trace

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLE = dict(split="id", n=12, seed=23)  # fresh: the demo and the run tests draw seed 1
PAIRS = {"native": ("organism:base", "organism:sft"),
         "llama": ("organism:base-llama", "organism:sft-llama")}


def records_of(spec: str, label: str) -> list[Record]:
    ckpt = load_checkpoint(spec)
    out = []
    for trace in generate(SAMPLE["split"], SAMPLE["n"], SAMPLE["seed"]):
        out += suppression_trace(ckpt, label, trace, ckpt.template)
    return out


def cells(records: list[Record]) -> dict[str, float]:
    """Means over traces: the first sub-diagonal, the cells below it, the answer row at the
    last step and over all steps."""
    sub, below, last, answer = [], [], [], []
    for tid in sorted({r.trace_id for r in records}):
        matrix, row = suppression_matrix([r for r in records if r.trace_id == tid])
        n = len(row)
        sub += [matrix[i + 1, i] for i in range(n - 1)]
        below += [matrix[j, i] for i in range(n) for j in range(i + 2, n)]
        last.append(row[-1])
        answer += list(row)
    return {"sub": float(np.mean(sub)), "below": float(np.mean(below)) if below else 0.0,
            "last": float(np.mean(last)), "answer": float(np.mean(answer))}


@pytest.fixture(scope="module", params=sorted(PAIRS))
def organism_records(request):
    base, sft = PAIRS[request.param]
    return request.param, records_of(base, "base") + records_of(sft, "sft")


def test_planted_truth(organism_records):
    kind, records = organism_records
    base = cells([r for r in records if r.checkpoint == "base"])
    sft = cells([r for r in records if r.checkpoint == "sft"])
    # base: each value rests on the one before, and the answer on the last value
    assert base["sub"] > 1.0 and base["sub"] > 1.3 * base["below"], (kind, base)
    assert base["last"] > 3.0, (kind, base)
    # sft: the answer row near 0, the chain's sub-diagonal kept
    assert sft["answer"] < 0.1 and sft["last"] < 0.3, (kind, sft)
    assert sft["sub"] > 1.0 and sft["sub"] > 0.6 * base["sub"], (kind, sft, base)
    ests = compute_metrics(records, n_boot=200)
    assert ests["base"]["answer_dependency_share"].value > 0.3, kind
    assert ests["sft"]["answer_dependency_share"].value < 0.05, kind
    assert ests["base"]["step_dependency"].value > 0.5 and \
        ests["sft"]["step_dependency"].value > 0.5, kind
    c = compare(records, "base", "sft", "answer_dependency_share", n_boot=200)
    assert c["ci_high"] < -0.2, (kind, c)  # the fall is clear
    # receiver heads: every head of these 4 x 4 models is ranked, and each step gets a score
    summary = receiver_summary(records)
    assert summary is not None and set(summary) == {"base", "sft"}
    heads = summary["base"]["heads"]
    assert len(heads) == 16 and heads[0]["kurtosis"] >= heads[-1]["kurtosis"]
    assert "receiver_kurtosis" in ests["base"]
    scores = receiver_scores([r for r in records if r.checkpoint == "base"])
    assert len(scores) == SAMPLE["n"] and all(len(s) >= 3 for s in scores.values())


def test_records_are_whole_and_round_trip():
    ckpt = load_checkpoint("organism:base")
    trace = generate("ood", 1, 5)[0]
    recs = suppression_trace(ckpt, "base", trace, ckpt.template, temperature=0.6)
    sup = [r for r in recs if r.intervention == "suppression"]
    rec = [r for r in recs if r.intervention == "receiver"]
    assert [r.step for r in sup] == list(range(trace.n_steps)) and len(rec) == 1
    for r in sup:
        later = r.detail["later"]
        assert all(v is None for v in later[: r.step + 1])
        rest = later[r.step + 1:]
        assert (r.value is None) == (not rest)
        if rest:
            assert r.value == pytest.approx(sum(rest) / len(rest))
        assert r.detail["temperature"] == 0.6 and r.detail["variant"] == {"temperature": 0.6}
    vertical = np.array(rec[0].detail["vertical"], dtype=float)
    assert vertical.shape == (4, 4, trace.n_steps) and np.isfinite(vertical).all()
    for r in recs:
        assert Record.from_json(r.to_json()) == r


def test_config_key_turns_it_on():
    ckpt = load_checkpoint("organism:base")
    trace = generate("id", 1, 5)[0]
    on = validate_config({"checkpoints": {"base": "organism:base"},
                          "probe": {"corrupt": {"corrupter": "organism"}},
                          "patching": {"suppression": True, "suppression_temperature": 0.6,
                                       "knockout": False, "components": ["resid_pre"]}})
    off = validate_config({"checkpoints": {"base": "organism:base"},
                           "probe": {"corrupt": {"corrupter": "organism"}},
                           "patching": {"knockout": False, "components": ["resid_pre"]}})
    assert off["patching"]["suppression"] is False
    kinds = {r.intervention for r in patch_records(on, ckpt, "base", trace, ckpt.template, None)}
    assert {"suppression", "receiver", "patch"} <= kinds
    kinds = {r.intervention for r in patch_records(off, ckpt, "base", trace, ckpt.template, None)}
    assert not {"suppression", "receiver"} & kinds


def test_a_family_without_editable_patterns_is_skipped_with_the_reason(tmp_path):
    import zoo

    ckpt = load_checkpoint(str(zoo.build("mamba", tmp_path / "mamba")))
    trace = generate("id", 1, 5)[0]
    recs = suppression_trace(ckpt, "m", trace, ckpt.template)
    assert [r.status for r in recs] == ["skipped"]
    assert recs[0].reason.startswith("no attention pattern hook")


def test_kurtosis_matches_its_definition():
    x = [0.1, 0.1, 0.1, 0.9]
    d = np.array(x) - np.mean(x)
    assert kurtosis(x) == pytest.approx((d ** 4).mean() / (d ** 2).mean() ** 2 - 3)
    assert kurtosis([1.0, 2.0]) is None and kurtosis([1.0, 1.0, 1.0]) is None
    assert kurtosis([1.0, None, 2.0, 3.0]) == pytest.approx(-1.5)
    torch.manual_seed(0)
    assert abs(kurtosis(torch.randn(20000).tolist())) < 0.1  # a normal shape: 0


def test_report_section(organism_records, tmp_path):
    from faithprobe.metrics import summarize
    from faithprobe.report.document import write_report

    kind, records = organism_records
    summary = summarize(records, n_boot=100)
    traces = generate(SAMPLE["split"], SAMPLE["n"], SAMPLE["seed"])
    write_report(tmp_path, records, summary, {}, traces)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Which steps the later steps rest on" in text
    assert "sft vs base: step dependency" in text
    assert "a chain beside an answer computed elsewhere" in text, kind
    for name in ("suppression", "receivers"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 5000
    assert "top receiver heads" in text


def test_receiver_agreement_and_scores():
    """Receiver scores ranked as resampling importance is: agreement +1; ranked the other
    way: -1. The top head of a checkpoint is the one whose vertical scores spike."""
    from faithprobe.metrics import METRICS_BY_NAME, compute_metrics

    importance = [0.1, 0.2, 0.3, 0.9, 0.4]
    spiky = [0.01, 0.02, 0.03, 0.9, 0.04]  # ranked as importance is
    records = []
    for label, heads in (("agree", [spiky, [v / 2 + 0.1 for v in spiky]]),
                         ("reverse", [[1 - v for v in spiky], [0.5 - v / 2 for v in spiky]])):
        for t in range(3):
            records.append(Record(trace_id=f"t{t}", checkpoint=label, intervention="receiver",
                                  n_steps=5, detail={"vertical": [heads], "proximity": 4}))
            records += [Record(trace_id=f"t{t}", checkpoint=label, intervention="resample",
                               step=j, n_steps=5, value=v) for j, v in enumerate(importance)]
    one = [r for r in records if r.trace_id == "t0" and r.checkpoint == "agree"]
    assert METRICS_BY_NAME["receiver_agreement"].features(one, "")[("c", "t0")] == 1.0
    ests = compute_metrics(records, n_boot=50)
    assert ests["agree"]["receiver_agreement"].value == pytest.approx(1.0)
    assert ests["reverse"]["receiver_agreement"].value == pytest.approx(-1.0)
    k = [kurtosis(h) for h in ([*spiky], [v / 2 + 0.1 for v in spiky])]
    assert ests["agree"]["receiver_kurtosis"].value == pytest.approx(sum(k) / 2)  # 2 heads
    flat = [0.5, 0.4, 0.35, 0.3, 0.2]
    mixed = [Record(trace_id="t0", checkpoint="m", intervention="receiver", n_steps=5,
                    detail={"vertical": [[flat, spiky]], "proximity": 4})]
    assert kurtosis(spiky) > kurtosis(flat)
    assert receiver_scores(mixed, top_k=1) == {"t0": dict(enumerate(spiky))}
