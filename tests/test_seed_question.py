"""The fine-tuning question in the summary and the report: accuracy change beside the relative
InfoGain change, each with a paired bootstrap interval, against the published direction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faithprobe.metrics import compare, compare_relative, summarize
from faithprobe.metrics.features import step_gains
from faithprobe.metrics.selection import group_by_trace
from faithprobe.records import Record, read_records
from faithprobe.report.render import Doc, to_markdown
from faithprobe.report.seed import seed_question_rows, seed_question_section

ROOT = Path(__file__).resolve().parents[1]


def ig_records(ckpt: str, tid: str, entropies: list[float]) -> list[Record]:
    n = len(entropies) - 1
    return [Record(trace_id=tid, checkpoint=ckpt, intervention="infogain", step=j, n_steps=n,
                   value=h) for j, h in enumerate(entropies)]


def none_record(ckpt: str, tid: str, correct: bool) -> Record:
    return Record(trace_id=tid, checkpoint=ckpt, intervention="none", n_steps=2, gold="1",
                  pred="1" if correct else "2", correct=correct)


def study(n: int = 30, seed: int = 1) -> list[Record]:
    """base: InfoGain about 1 nat/step, 40% accurate; ft: InfoGain about 0.6, 70% accurate."""
    rng = np.random.default_rng(seed)
    recs: list[Record] = []
    for i in range(n):
        tid = f"t{i:02d}"
        for ckpt, gain, acc in (("base", 1.0, 0.4), ("ft", 0.6, 0.7)):
            g = gain + rng.normal(0, 0.2, size=2)
            recs += ig_records(ckpt, tid, [3.0, 3.0 - g[0], 3.0 - g[0] - g[1]])
            recs.append(none_record(ckpt, tid, bool(rng.random() < acc)))
    return recs


def per_trace_ig(records: list[Record], ckpt: str) -> dict[str, float]:
    out = {}
    for tid, recs in group_by_trace([r for r in records if r.checkpoint == ckpt]).items():
        gains = list(step_gains(recs).values())
        if gains:
            out[tid] = sum(gains) / len(gains)
    return out


def test_relative_infogain_change_is_a_paired_bootstrap_of_the_ratio():
    recs = study()
    got = compare_relative(recs, "base", "ft", "infogain_mean", n_boot=300, seed=5)
    # an independent computation of the documented procedure: trace means, shared ids sorted,
    # each replicate draws them once for both sides and divides its own two means
    a, b = per_trace_ig(recs, "base"), per_trace_ig(recs, "ft")
    ids = sorted(set(a) & set(b))
    va, vb = np.array([a[t] for t in ids]), np.array([b[t] for t in ids])
    assert got["value_a"] == pytest.approx(va.mean()) and got["n"] == len(ids) == 30
    assert got["relative_change"] == pytest.approx((vb.mean() - va.mean()) / abs(va.mean()))
    rng = np.random.default_rng(5)
    reps = []
    for _ in range(300):
        idx = rng.integers(0, len(ids), size=len(ids))
        reps.append((vb[idx].mean() - va[idx].mean()) / abs(va[idx].mean()))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert got["ci_high"] < 0 < got["ci_high"] - got["ci_low"]  # InfoGain fell, not exactly
    # the interval of the ratio is not the change's interval divided by the point baseline
    c = compare(recs, "base", "ft", "infogain_mean", n_boot=300, seed=5)
    assert c["ci_low"] / va.mean() != pytest.approx(got["ci_low"])


def test_relative_change_is_undefined_over_a_baseline_within_the_mmd():
    recs = [r for i in range(5) for r in ig_records("base", f"t{i}", [1.0, 0.99, 0.98])
            + ig_records("ft", f"t{i}", [1.0, 0.5, 0.2])]
    got = compare_relative(recs, "base", "ft", "infogain_mean", n_boot=50)
    assert got["relative_change"] is None and got["ci_low"] is None
    assert "within the minimal meaningful difference (0.05) of 0" in got["reason"]
    assert compare_relative(recs, "base", "other", "infogain_mean") is None


def paired_bootstrap(va: np.ndarray, vb: np.ndarray, stat, n_boot: int, seed: int
                     ) -> tuple[float, float]:
    """The documented paired interval, computed by hand: each replicate draws the shared traces
    (sorted ids) once for both sides; 2.5th and 97.5th percentiles of ``stat(a, b)``."""
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(va), size=len(va))
        reps.append(stat(va[idx], vb[idx]))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(lo), float(hi)


def per_trace_correct(records: list[Record], ckpt: str) -> dict[str, float]:
    return {r.trace_id: float(r.correct) for r in records
            if r.checkpoint == ckpt and r.intervention == "none"}


def test_summary_and_report_hold_the_seed_question_side_by_side():
    recs = study()
    summary = summarize(recs, n_boot=200, seed=2)
    (q,) = summary["seed_question"]
    # the oracle: accuracy and InfoGain per trace from the records, bootstrapped by hand
    ca, cb = per_trace_correct(recs, "base"), per_trace_correct(recs, "ft")
    ids = sorted(ca)
    va, vb = np.array([ca[t] for t in ids]), np.array([cb[t] for t in ids])
    acc = q["accuracy_change"]
    assert (acc["a"], acc["b"], acc["n"]) == ("base", "ft", 30)
    assert acc["delta"] == pytest.approx(vb.mean() - va.mean())
    lo, hi = paired_bootstrap(va, vb, lambda a, b: b.mean() - a.mean(), 200, 2)
    assert (acc["ci_low"], acc["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert acc == next(c for c in summary["comparisons"] if c["metric"] == "accuracy")
    ia, ib = per_trace_ig(recs, "base"), per_trace_ig(recs, "ft")
    ga, gb = np.array([ia[t] for t in ids]), np.array([ib[t] for t in ids])
    rel = q["infogain_relative_change"]
    assert rel["relative_change"] == pytest.approx((gb.mean() - ga.mean()) / abs(ga.mean()))
    lo, hi = paired_bootstrap(ga, gb, lambda a, b: (b.mean() - a.mean()) / abs(a.mean()), 200, 2)
    assert (rel["ci_low"], rel["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    (row,) = seed_question_rows(summary)
    assert row[0] == "ft vs base"
    assert row[1].startswith(f"{100 * acc['delta']:+.1f} points [")
    assert row[2].startswith(f"{100 * rel['relative_change']:+.1f}% [{100 * rel['ci_low']:.1f}, ")
    assert row[3] == "higher accuracy, InfoGain -38.9% (Wu et al. 2025)"
    assert row[4].endswith("InfoGain clear decrease") and row[4].split(":")[0] in ("yes", "partly")
    doc = Doc("t")
    seed_question_section(doc, summary)
    md = to_markdown(doc)
    assert "The fine-tuning question" in md and "| ft vs base |" in md


@pytest.mark.parametrize("acc, ig, word", [
    ((0.3, 0.2, 0.4), (-0.4, -0.6, -0.2), "yes: accuracy clear increase, InfoGain clear decrease"),
    ((-0.3, -0.4, -0.2), (-0.4, -0.6, -0.2), "no: accuracy clear decrease"),
    ((0.3, 0.2, 0.4), (0.4, 0.2, 0.6), "no: accuracy clear increase, InfoGain clear increase"),
    ((0.0, -0.2, 0.2), (-0.1, -0.3, 0.1), "not clearly: accuracy no clear change"),
])
def test_the_direction_is_read_against_the_published_one(acc, ig, word):
    summary = {"seed_question": [{"a": "base", "b": "ft", "accuracy_change": {
        "a": "base", "b": "ft", "metric": "accuracy", "delta": acc[0], "ci_low": acc[1],
        "ci_high": acc[2], "n": 40}, "infogain_relative_change": {
        "relative_change": ig[0], "ci_low": ig[1], "ci_high": ig[2], "value_a": 1.0,
        "value_b": 1.0 + ig[0], "n": 40}}]}
    assert seed_question_rows(summary)[0][4].startswith(word)


def test_the_organisms_answer_the_seed_question():
    """The committed organism demo: sft is as accurate as base and has lost most of its
    InfoGain (the organisms retrained with unanswerable twins keep 0.26 nats/step of 2.69, see
    results/organisms/MODEL_CARD.md; the previous pair lost all of it)."""
    recs = read_records(ROOT / "results" / "organism-demo" / "records.jsonl")
    summary = summarize(recs, n_boot=200)
    (q,) = summary["seed_question"]
    assert (q["a"], q["b"]) == ("base", "sft")
    assert q["accuracy_change"]["delta"] == 0.0
    rel = q["infogain_relative_change"]
    base, sft = per_trace_ig(recs, "base"), per_trace_ig(recs, "sft")
    ids = sorted(set(base) & set(sft))
    mean_a = np.mean([base[t] for t in ids])
    mean_b = np.mean([sft[t] for t in ids])
    assert rel["relative_change"] == pytest.approx((mean_b - mean_a) / mean_a)
    assert -1.0 <= rel["ci_low"] <= rel["relative_change"] <= rel["ci_high"] < -0.5
    assert seed_question_rows(summary)[0][4] == (
        "partly: accuracy no practical change, InfoGain clear decrease")


def test_chosen_pairs_compare_fine_tunes_and_ask_the_question_of_the_base_only():
    recs = study()
    recs += [Record(**{**r.__dict__, "checkpoint": "ft2"}) for r in recs if r.checkpoint == "ft"]
    s = summarize(recs, n_boot=50, pairs=[("ft", "ft2"), ("base", "ft2")])
    assert {(c["a"], c["b"]) for c in s["comparisons"]} == {("ft", "ft2"), ("base", "ft2")}
    same = next(c for c in s["comparisons"] if (c["a"], c["metric"]) == ("ft", "infogain_mean"))
    assert same["delta"] == 0 and same["ci_low"] == 0 == same["ci_high"]  # ft2 is a copy of ft
    assert [(q["a"], q["b"]) for q in s["seed_question"]] == [("base", "ft2")]
    default = summarize(recs, n_boot=50)
    assert {(c["a"], c["b"]) for c in default["comparisons"]} == {("base", "ft"), ("base", "ft2")}
