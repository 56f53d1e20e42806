"""Summaries that add up: a comparison's "a -> b" values are over the traces its delta is over,
one corrupt continuation serves every metric and comparison, and bootstrap replicates without
a value are counted (``n_boot_undefined``), each against an oracle computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from faithprobe.metrics import bootstrap, compare, summarize
from faithprobe.records import Record
from faithprobe.report.verdict import comparison_rows


def none_record(trace_id: str, ckpt: str, correct: bool) -> Record:
    return Record(trace_id=trace_id, checkpoint=ckpt, intervention="none", n_steps=2,
                  gold="A", correct=correct, pred_prob=0.7)


def corrupt(trace_id: str, ckpt: str, step: int, same: bool, continuation: str) -> Record:
    return Record(trace_id=trace_id, checkpoint=ckpt, intervention="corrupt", step=step,
                  n_steps=2, same_answer=same, detail={"continuation": continuation})


def test_a_comparisons_values_are_over_the_traces_its_delta_is_over():
    # base: 4 traces, 3 correct (75%); sft has only t0, t1: on them base is 1/2, sft 2/2
    records = [none_record("t0", "base", True), none_record("t1", "base", False),
               none_record("t2", "base", True), none_record("t3", "base", True),
               none_record("t0", "sft", True), none_record("t1", "sft", True)]
    summary = summarize(records, n_boot=50)
    assert summary["checkpoints"]["base"]["accuracy"]["value"] == pytest.approx(0.75)
    (acc,) = [c for c in summary["comparisons"] if c["metric"] == "accuracy"]
    assert (acc["value_a"], acc["value_b"], acc["n"]) == (0.5, 1.0, 2)
    assert acc["delta"] == pytest.approx(acc["value_b"] - acc["value_a"])
    (row,) = [r for r in comparison_rows(summary) if r[1] == "accuracy"]
    assert row[2] == "50% -> 100%"  # not 75% -> 100% beside a +50-point change


def test_one_continuation_serves_every_comparison():
    """Only c has regenerate records: the summary reads regenerate for every checkpoint and
    every pair (a pair of keep-only checkpoints is not measured on another kind of edit)."""
    records = []
    for t in ("t0", "t1", "t2"):
        for label in ("a", "b"):
            records += [none_record(t, label, True),
                        corrupt(t, label, 0, label == "a", "keep"),
                        corrupt(t, label, 1, True, "keep")]
        records += [none_record(t, "c", True), corrupt(t, "c", 0, False, "regenerate")]
    summary = summarize(records, n_boot=20, pairs=[("a", "b"), ("a", "c")])
    assert summary["continuation"] == "regenerate"
    flips = {(c["a"], c["b"]) for c in summary["comparisons"] if c["metric"] == "step_flip_rate"}
    assert "step_flip_rate" not in summary["checkpoints"]["a"] and flips == set()
    assert summary["checkpoints"]["c"]["step_flip_rate"]["value"] == 1.0
    # the same pair alone (no regenerate records among them) reads keep: a flips 0 of 6
    # steps, b 3 of 6
    alone = compare([r for r in records if r.checkpoint != "c"], "a", "b", "step_flip_rate",
                    n_boot=20)
    assert alone is not None and (alone["value_a"], alone["value_b"]) == (0.0, 0.5)


def test_replicates_without_a_value_are_counted():
    """A statistic defined only on resamples that draw trace t0: the count of replicates
    without it is the number of draws (numpy's default_rng over the sorted trace ids, as the
    bootstrap module documents) that miss t0's position."""
    records = [none_record(t, "base", True) for t in ("t0", "t1", "t2")]

    def needs_t0(recs):
        return 1.0 if any(r.trace_id.split("#")[0] == "t0" for r in recs) else None

    est = bootstrap(records, needs_t0, n_boot=400, seed=7)
    rng = np.random.default_rng(7)
    missed = sum(0 not in rng.integers(0, 3, size=3) for _ in range(400))
    assert 60 < missed < 180  # (2/3)**3 of 400 is about 119: the oracle itself is sane
    assert est is not None and est.n_boot_undefined == missed
    assert est.to_json()["n_boot_undefined"] == missed
    # a statistic with a value on every replicate counts none
    full = summarize(records, n_boot=50)["checkpoints"]["base"]["accuracy"]
    assert full["n_boot_undefined"] == 0
